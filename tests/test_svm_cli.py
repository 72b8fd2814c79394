"""`c3d-svm` end to end on feature files written by the tests."""

import json
import subprocess
import sys

import numpy as np
import pytest
from scipy.io import savemat
from sklearn.metrics import confusion_matrix, roc_auc_score
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from c3d_extract.errors import UsageError
from c3d_extract.evaluation import aslan, reports
from c3d_extract.evaluation import svm
from c3d_extract.evaluation.options import SvmOptions
from c3d_extract.featurefile import reader
from c3d_extract.featurefile.writer import FeatureStore
from c3d_extract.cli.svm import main

from tests.helpers import FACTS, REPO, default_layer, layers_of, run


def _l2(x):
    """Rows divided by their norm, written here independently of the package."""
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_features(path, keys, layers, model="c3d", spec="c3d-sports1m"):
    shapes = {name: (m.shape[1],) for name, m in layers.items()}
    with FeatureStore.open(str(path), {"model": model, "spec": spec}, shapes, {}) as store:
        for i, key in enumerate(keys):
            store.add_video(key, {name: m[i] for name, m in layers.items()}, FACTS)
    return path


def unit_rows(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def ucf_like(n_classes=5, groups=25, clips=2, dim=64, separable=True, seed=0):
    rng = np.random.default_rng(seed)
    classes = [f"Class{c}" for c in range(n_classes)]
    keys, labels = [], []
    for c, name in enumerate(classes):
        for g in range(1, groups + 1):
            for k in range(1, clips + 1):
                keys.append(f"{name}/v_{name}_g{g:02d}_c{k:02d}.avi")
                labels.append(c)
    labels = np.array(labels)
    centers = rng.random((n_classes, dim)) * 4
    x = (centers[labels] if separable else 0) + rng.random((len(keys), dim))
    return keys, labels, unit_rows(x)


def cli(*args):
    return run(*args, command=main)


def test_separable_classes_reach_accuracy_1_on_all_three_splits(tmp_path):
    keys, labels, x = ucf_like()
    path = write_features(tmp_path / "f.h5", keys, {"fc6": x})
    result = cli(path, "--split", "all", "--json", tmp_path / "r.json", "--csv", tmp_path / "r.csv")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())["results"][0]
    assert report["dataset"] == "ucf101" and report["layer"] == "fc6" and report["mean_accuracy"] == 1.0
    assert [s["split"] for s in report["splits"]] == ["1", "2", "3"]
    assert report["splits"][0]["n_test"] == 5 * 7 * 2 and report["splits"][0]["n_train"] == 5 * 18 * 2
    assert report["splits"][0]["per_class"]["Class3"] == 1.0
    assert np.trace(np.array(report["splits"][0]["confusion"])) == 70
    assert "100.00%" in result.output and "mean" in result.output
    assert (tmp_path / "r.csv").read_text().count("\n") == 4


def test_shuffled_labels_stay_near_chance_and_match_sklearn(tmp_path):
    keys, labels, x = ucf_like(separable=False, seed=1)
    path = write_features(tmp_path / "f.h5", keys, {"fc6": x})
    result = cli(path, "--split", "1", "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    accuracy = json.loads((tmp_path / "r.json").read_text())["results"][0]["splits"][0]["accuracy"]
    assert accuracy < 0.45  # chance is 0.2 with 5 classes
    groups = np.array([int(k.split("_g")[1][:2]) for k in keys])
    test = groups <= 7
    direct = LinearSVC(C=1.0, dual=True, max_iter=5000, random_state=0).fit(x[~test], labels[~test])
    assert accuracy == pytest.approx(float((direct.predict(x[test]) == labels[test]).mean()))


def test_pca_curve_plot_and_two_files(tmp_path):
    keys, labels, x = ucf_like(dim=40)
    a = write_features(tmp_path / "a.h5", keys, {"fc6": x})
    b = write_features(tmp_path / "b.h5", keys, {"res5b": x[:, ::-1].copy()}, model="res3d", spec="res3d-sports1m")
    result = cli(a, b, "--pca", "2,5,20", "--plot", tmp_path / "pca.png", "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    reports = json.loads((tmp_path / "r.json").read_text())["results"]
    assert [r["layer"] for r in reports] == ["fc6", "res5b"]
    assert [p["dims"] for p in reports[0]["pca"]] == [2, 5, 20]
    assert (tmp_path / "pca.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the 5-d point equals PCA fitted on the training videos only, then an SVM, done directly
    from sklearn.decomposition import PCA
    test = np.array([int(k.split("_g")[1][:2]) <= 7 for k in keys])
    pca = PCA(5, random_state=0).fit(x[~test])
    tr, te = _l2(pca.transform(x[~test])), _l2(pca.transform(x[test]))
    direct = LinearSVC(C=1.0, dual=True, max_iter=5000, random_state=0).fit(tr, labels[~test])
    assert reports[0]["pca"][1]["mean_accuracy"] == pytest.approx(float((direct.predict(te) == labels[test]).mean()))


def test_the_pca_plot_labels_its_log_axis_with_the_dimensions_measured(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    saved = []
    real_savefig = Figure.savefig

    def savefig(figure, *args, **kwargs):  # the real save, and the figure kept to read its ticks
        real_savefig(figure, *args, **kwargs)
        saved.append(figure)

    monkeypatch.setattr(Figure, "savefig", savefig)
    keys, labels, x = ucf_like(n_classes=3, clips=1, dim=40)
    path = write_features(tmp_path / "a.h5", keys, {"fc6": x})
    result = cli(path, "--pca", "20,2,5,30", "--plot", tmp_path / "pca.png", "--jobs", "1")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pca.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    [figure] = saved
    [axes] = figure.axes
    assert axes.get_xscale() == "log"
    ticks = axes.get_xticklabels() + axes.get_xticklabels(minor=True)
    shown = [(tick.get_position()[0], tick.get_text()) for tick in ticks
             if tick.get_text() and axes.get_xlim()[0] <= tick.get_position()[0] <= axes.get_xlim()[1]]
    assert sorted(shown) == [(2, "2"), (5, "5"), (20, "20"), (30, "30")]
    assert list(axes.lines[0].get_xdata()) == [20, 2, 5, 30]  # the points, in the order measured


def test_pca_and_svm_never_see_test_videos():
    rng = np.random.default_rng(3)
    x_train, y_train = rng.random((60, 30)), np.repeat([0, 1, 2], 20)
    x_train[y_train == 1, :5] += 1
    x_test = rng.random((10, 30))
    outliers = rng.random((5, 30)) * 1000  # would swing a PCA or a scaler fitted on test data
    for options, pca_dim in ((SvmOptions(jobs=1), None), (SvmOptions(jobs=1), 3),
                             (SvmOptions(cv_C=[0.1, 1, 10], jobs=1), 3)):
        alone, _ = svm.fit_predict(x_train, y_train, x_test, options, pca_dim)
        with_outliers, _ = svm.fit_predict(x_train, y_train, np.vstack([x_test, outliers]), options, pca_dim)
        np.testing.assert_array_equal(alone, with_outliers[:10])


def test_choosing_C_refits_the_pca_inside_each_fold():
    # few videos, many dimensions: a PCA fitted on all training videos has seen each fold's
    # validation videos, which changes the fold scores; the scores must be those of a PCA per fold
    from sklearn.decomposition import PCA
    from sklearn.model_selection import StratifiedKFold
    from sklearn.multiclass import OneVsRestClassifier

    rng = np.random.default_rng(5)
    y = np.repeat([0, 1, 2], 12)
    x = rng.normal(size=(36, 80)) + np.eye(3, 80)[y] * 1.5
    grid = [0.01, 0.1, 1.0, 10.0]

    def scores(pca_inside: bool) -> np.ndarray:
        folds = list(StratifiedKFold(3, shuffle=True, random_state=0).split(x, y))
        leaky = PCA(6, random_state=0).fit(x)
        out = []
        for C in grid:
            accuracies = []
            for train, val in folds:
                pca = PCA(6, random_state=0).fit(x[train]) if pca_inside else leaky
                svc = OneVsRestClassifier(LinearSVC(C=C, dual=True, max_iter=5000, random_state=0))
                svc.fit(_l2(pca.transform(x[train])), y[train])
                accuracies.append((svc.predict(_l2(pca.transform(x[val]))) == y[val]).mean())
            out.append(np.mean(accuracies))
        return np.array(out)

    honest, leaky = scores(True), scores(False)
    assert not np.allclose(honest, leaky)  # the data tells the two apart
    search = svm.model(SvmOptions(cv_C=grid, jobs=1), y, pca_dim=6).fit(x, y)
    np.testing.assert_allclose(search.cv_results_["mean_test_score"], honest, atol=1e-12)
    C = grid[int(np.argmax(honest))]
    assert svm.used_C(search) == C
    # then refitted on every training video with that C: the pipeline fitted directly with it
    pca = PCA(6, random_state=0).fit(x)
    direct = OneVsRestClassifier(LinearSVC(C=C, dual=True, max_iter=5000, random_state=0))
    direct.fit(_l2(pca.transform(x)), y)
    np.testing.assert_array_equal(search.predict(x[::2]), direct.predict(_l2(pca.transform(x[::2]))))


def aslan_data(tmp_path, shuffle=False, seed=0):
    """200 videos of 20 actions (two clusters of features per action pair), 10 splits of 60 pairs."""
    rng = np.random.default_rng(seed)
    n_actions, per_action = 20, 10
    action = np.repeat(np.arange(n_actions), per_action)
    keys = [f"aslan/{i + 1:04d}.avi" for i in range(len(action))]
    centers = {name: rng.random((n_actions, d)) * 3
               for name, d in (("prob", 20), ("fc7", 32), ("fc6", 32), ("pool5", 48))}
    layers = {name: unit_rows(c[action] + rng.random((len(action), c.shape[1]))) for name, c in centers.items()}
    rows = []
    for split in range(1, 11):
        acts = [2 * (split - 1), 2 * (split - 1) + 1]  # splits hold disjoint actions
        members = [np.flatnonzero(action == a) for a in acts]
        for p in range(30):
            a = members[p % 2]
            i, j = rng.choice(a, 2, replace=False)
            rows.append((split, i + 1, j + 1, 1))
            rows.append((split, rng.choice(members[0]) + 1, rng.choice(members[1]) + 1, 0))
    rows = np.array(rows)
    if shuffle:
        rows[:, 3] = rng.permutation(rows[:, 3])
    path = write_features(tmp_path / "aslan.h5", keys, layers)
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("split,id1,id2,same\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    return path, csv_path, rows, layers, keys


def direct_aslan(rows, layers, keys, names=("prob", "fc7", "fc6", "pool5")):
    """The protocol computed directly with scikit-learn (measures from c3d_extract, checked by hand):
    accuracy and AUC of each fold, and the AUC of all folds' scores pooled."""
    ids = {int(k.split("/")[1][:4]): i for i, k in enumerate(keys)}
    r1, r2 = np.array([ids[i] for i in rows[:, 1]]), np.array([ids[i] for i in rows[:, 2]])
    x = np.hstack([aslan.measures(layers[n][r1], layers[n][r2]) for n in names])
    acc, aucs, scores, truth = [], [], [], []
    for split in range(1, 11):
        test = rows[:, 0] == split
        scaler = StandardScaler().fit(x[~test])
        model = LinearSVC(C=1.0, dual=True, max_iter=10000, random_state=0)
        score = model.fit(scaler.transform(x[~test]), rows[~test, 3]).decision_function(scaler.transform(x[test]))
        acc.append(100 * ((score > 0) == rows[test, 3]).mean())
        aucs.append(roc_auc_score(rows[test, 3], score))
        scores.append(score)
        truth.append(rows[test, 3])
    return np.array(acc), np.array(aucs), roc_auc_score(np.concatenate(truth), np.concatenate(scores))


def test_aslan_separates_two_clusters_and_equals_a_direct_computation(tmp_path):
    path, pairs, rows, layers, keys = aslan_data(tmp_path)
    result = cli(path, "--aslan", pairs, "--plot", tmp_path / "roc.png", "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())["results"][0]
    assert report["layers"] == ["prob", "fc7", "fc6", "pool5"] and report["dims"] == 48
    assert report["auc_pooled"] > 0.95 and report["accuracy"] > 90
    acc, aucs, _ = direct_aslan(rows, layers, keys)
    np.testing.assert_allclose(report["fold_accuracy"], acc)
    np.testing.assert_allclose(report["fold_auc"], aucs)
    assert report["standard_error"] == pytest.approx(acc.std(ddof=1) / np.sqrt(10))
    assert (tmp_path / "roc.png").stat().st_size > 1000 and "±" in result.output


def test_aslan_standardisation_never_sees_test_pairs():
    rng = np.random.default_rng(7)
    x_train, y_train = rng.random((80, 12)), np.repeat([0, 1], 40)
    x_train[y_train == 1, :3] += 0.5
    x_test, outliers = rng.random((10, 12)), rng.random((4, 12)) * 1e4  # would swing a scaler fitted on them
    alone = aslan.fold_scores(x_train, y_train, x_test)
    np.testing.assert_array_equal(alone, aslan.fold_scores(x_train, y_train, np.vstack([x_test, outliers]))[:10])


def test_aslan_shuffled_pairs_are_near_chance_and_view2_mat_reads_the_same(tmp_path):
    path, pairs, rows, _, _ = aslan_data(tmp_path, shuffle=True, seed=4)
    result = cli(path, "--aslan", pairs, "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert 0.3 < json.loads((tmp_path / "r.json").read_text())["results"][0]["auc_pooled"] < 0.7
    view2 = np.zeros((60, 5, 10))
    for split in range(10):
        part = rows[rows[:, 0] == split + 1]
        view2[:, 0, split], view2[:, 1, split], view2[:, 2, split] = part[:, 1], part[:, 2], part[:, 3]
    savemat(tmp_path / "View2.mat", {"action_splits_pairs": view2})
    from_mat, from_csv = aslan.read_pairs(str(tmp_path / "View2.mat")), aslan.read_pairs(str(pairs))
    for field in ("split", "id1", "id2", "same"):
        np.testing.assert_array_equal(getattr(from_mat, field), getattr(from_csv, field))


def test_aslan_warns_on_negative_features(tmp_path):
    rng = np.random.default_rng(5)
    keys = [f"{i + 1:04d}.avi" for i in range(40)]
    path = write_features(tmp_path / "neg.h5", keys, {"fc6": rng.standard_normal((40, 8)).astype(np.float32)})
    pairs = tmp_path / "p.csv"
    pairs.write_text("\n".join(f"{s},{2 * s - 1},{2 * s},{s % 2}" for s in range(1, 21)))
    result = cli(path, "--aslan", pairs, "--layers", "fc6")
    assert result.exit_code == 0 and "negative values" in result.output


def test_hmdb51_and_folders_end_to_end(tmp_path):
    rng = np.random.default_rng(6)
    folder = tmp_path / "splits"
    folder.mkdir()
    keys, labels = [], []
    for c, cls in enumerate(("brush_hair", "kick_ball", "shoot_bow")):
        lines = []
        for i in range(12):
            name = f"{cls}_video_{i}"
            keys.append(f"{cls}/{name}.avi")
            labels.append(c)
            lines.append(f"{name}.avi {1 if i < 8 else 2} ")
        (folder / f"{cls}_test_split1.txt").write_text("\n".join(lines) + "\n")
    x = unit_rows(np.eye(3)[labels] * 5 + rng.random((36, 3)))
    path = write_features(tmp_path / "h.h5", keys, {"fc6": np.hstack([x, rng.random((36, 5))]).astype(np.float32)})
    result = cli(path, "--splits-dir", folder, "--split", "1")
    assert result.exit_code == 0 and "hmdb51" in result.output and "100.00%" in result.output
    result = cli(path, "--folds", "loo", "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert len(json.loads((tmp_path / "r.json").read_text())["results"][0]["splits"]) == 36


def test_clear_errors_exit_1(tmp_path):
    keys, labels, x = ucf_like(n_classes=3, groups=25, clips=1)
    path = write_features(tmp_path / "f.h5", keys, {"fc6": x})
    result = cli(path, "--layer", "fc7")
    assert result.exit_code == 1 and "has no layer 'fc7'; it holds fc6" in result.output
    one_class = write_features(tmp_path / "one.h5", [k for k in keys if k.startswith("Class0")],
                               {"fc6": x[:25]})
    result = cli(one_class)
    assert result.exit_code == 1 and "at least 2" in result.output
    early = [k for k in keys if int(k.split("_g")[1][:2]) > 7]  # no test group of split 1
    result = cli(write_features(tmp_path / "early.h5", early, {"fc6": x[:len(early)]}))
    assert result.exit_code == 1 and "no test video" in result.output
    odd = write_features(tmp_path / "odd.h5", ["a.mp4", "b.mp4"], {"fc6": x[:2]})
    result = cli(odd)
    assert result.exit_code == 1 and "cannot tell the dataset" in result.output


def test_videos_missing_from_the_file_are_reported(tmp_path):
    keys, labels, x = ucf_like()
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "classInd.txt").write_text("".join(f"{i + 1} Class{i}\n" for i in range(5)))
    (lists / "trainlist01.txt").write_text("".join(f"{k} {labels[i] + 1}\n" for i, k in enumerate(keys)
                                                   if int(k.split("_g")[1][:2]) > 7))
    test_keys = [k for k in keys if int(k.split("_g")[1][:2]) <= 7] + ["Class1/v_Class1_g01_c09.avi"]
    (lists / "testlist01.txt").write_text("\n".join(test_keys))
    path = write_features(tmp_path / "f.h5", keys, {"fc6": x})
    result = cli(path, "--splits-dir", lists, "--json", tmp_path / "r.json")
    assert result.exit_code == 0 and "1 video(s) of the split files are not in the feature file" in result.output
    assert "v_Class1_g01_c09" in result.output
    assert json.loads((tmp_path / "r.json").read_text())["results"][0]["missing"]["count"] == 1


def test_svm_command_imports_no_torch():
    # c3d-svm reads feature files and trains SVMs: torch (~2 s to import) has no part in it
    check = "import sys, c3d_extract.cli.svm; assert 'torch' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr


def test_readers_default_layers_are_the_specs():
    # the reader keeps its own copy so as not to import torch: it must say what the specs say
    from c3d_extract.models.registry import SPECS

    assert reader.DEFAULT_LAYERS == {name: spec.default_layers for name, spec in SPECS.items()}


def test_default_layer_follows_the_spec_then_the_network_order(tmp_path):
    rng = np.random.default_rng(0)
    keys = ["a.avi", "b.avi"]
    layers = {name: rng.random((2, 4)).astype(np.float32) for name in ("pool5", "prob", "res5b")}
    for spec, expected in (("res3d-sports1m", "res5b"), ("r3d18-kinetics400", "pool5"), ("imported:res3d", "pool5")):
        path = write_features(tmp_path / f"{spec}.h5", keys, layers, model="res3d", spec=spec)
        assert default_layer(str(path)) == expected, spec
    # a file whose settings list its layers as the network computed them: the first of those
    shapes = {name: (4,) for name in layers}
    settings = {"model": "res3d", "spec": "imported:res3d", "layers": ["res5b", "pool5", "prob"]}
    with FeatureStore.open(str(tmp_path / "ordered.h5"), settings, shapes, {}) as store:
        for i, key in enumerate(keys):
            store.add_video(key, {name: m[i] for name, m in layers.items()}, FACTS)
    assert layers_of(str(tmp_path / "ordered.h5")) == ["res5b", "pool5", "prob"]
    assert default_layer(str(tmp_path / "ordered.h5")) == "res5b"


def test_classify_equals_one_vs_rest_svms_trained_directly(tmp_path):
    keys, labels, x = ucf_like(separable=False, seed=2)
    x[labels == 1, :8] += 0.3  # one class a little apart, so that accuracies differ between splits
    x = unit_rows(x)
    path = str(write_features(tmp_path / "f.h5", keys, {"fc6": x, "pool5": x[:, :16].copy()}))
    warnings = []
    result = reports.classify(path, split="all", jobs=1, warn=warnings.append)
    assert result.layer == "fc6" and result.dataset == "ucf101" and result.missing == [] and warnings == []
    assert result.classes == [f"Class{c}" for c in range(5)]
    groups = np.array([int(k.split("_g")[1][:2]) for k in keys])
    accuracies = []
    for number, split in enumerate(result.splits, 1):
        test = (groups > 7 * (number - 1)) & (groups <= 7 * number)
        direct = OneVsRestClassifier(LinearSVC(C=1.0, dual=True, max_iter=5000, random_state=0))
        predicted = direct.fit(x[~test], labels[~test]).predict(x[test])
        np.testing.assert_array_equal(split.predictions, predicted)
        accuracies.append((predicted == labels[test]).mean())
        assert split.split == str(number) and split.accuracy == pytest.approx(accuracies[-1])
        confusion = confusion_matrix(labels[test], predicted, labels=range(5))
        report = result.to_dict()["splits"][number - 1]
        assert report["confusion"] == confusion.tolist()
        assert list(report["per_class"].values()) == pytest.approx(list(np.diag(confusion) / confusion.sum(1)))
    assert result.mean_accuracy == pytest.approx(np.mean(accuracies))
    assert result.std_accuracy == pytest.approx(np.std(accuracies, ddof=1)) and result.std_accuracy > 0
    # what c3d-svm --json writes is this dict, key for key
    out = cli(path, "--split", "all", "--jobs", "1", "--json", tmp_path / "r.json")
    assert out.exit_code == 0, out.output
    written = json.loads((tmp_path / "r.json").read_text())["results"][0]
    assert written == json.loads(json.dumps(result.to_dict()))
    assert list(written) == ["file", "layer", "dataset", "notes", "classes", "missing", "splits", "mean_accuracy",
                             "std_accuracy"]
    # another layer, and a PCA curve whose points are the same protocol after PCA
    curve = reports.classify(path, SvmOptions(pca="3,8", jobs=1), layer="pool5")
    assert curve.layer == "pool5" and [p.dims for p in curve.pca] == [3, 8]
    assert curve.to_dict()["pca"][1] == {"dims": 8, "splits": {"1": curve.pca[1].mean_accuracy},
                                         "mean_accuracy": curve.pca[1].mean_accuracy}
    from sklearn.decomposition import PCA
    pool5, test = x[:, :16], groups <= 7
    for point in curve.pca:
        pca = PCA(point.dims, random_state=0).fit(pool5[~test])
        direct = OneVsRestClassifier(LinearSVC(C=1.0, dual=True, max_iter=5000, random_state=0))
        direct.fit(_l2(pca.transform(pool5[~test])), labels[~test])
        predicted = direct.predict(_l2(pca.transform(pool5[test])))
        assert point.mean_accuracy == pytest.approx((predicted == labels[test]).mean())


def test_classify_raises_usage_errors_and_warns_of_missing_videos(tmp_path):
    keys, labels, x = ucf_like(n_classes=3, groups=25, clips=1)
    path = str(write_features(tmp_path / "f.h5", keys, {"fc6": x}))
    with pytest.raises(reader.FeatureFileError, match="has no layer 'fc7'") as caught:
        reports.classify(path, layer="fc7")
    assert isinstance(caught.value, UsageError)
    one_class = write_features(tmp_path / "one.h5", keys[:25], {"fc6": x[:25]})
    with pytest.raises(UsageError, match="the labels give 1 class; at least 2 are needed"):
        reports.classify(str(one_class))
    with pytest.raises(UsageError, match="cannot tell the dataset"):
        reports.classify(str(write_features(tmp_path / "odd.h5", ["a.mp4", "b.mp4"], {"fc6": x[:2]})))
    with pytest.raises(UsageError, match="split 4 does not exist"):
        reports.classify(path, split="4")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "classInd.txt").write_text("".join(f"{i + 1} Class{i}\n" for i in range(3)))
    (lists / "trainlist01.txt").write_text("".join(f"{k} {labels[i] + 1}\n" for i, k in enumerate(keys)
                                                   if int(k.split("_g")[1][:2]) > 7))
    (lists / "testlist01.txt").write_text("\n".join([k for k in keys if int(k.split("_g")[1][:2]) <= 7]
                                                    + ["Class2/v_Class2_g01_c07.avi"]))
    warnings = []
    result = reports.classify(path, splits_dir=str(lists), warn=warnings.append, jobs=1)
    assert result.missing == ["v_Class2_g01_c07"] and len(warnings) == 1 and "v_Class2_g01_c07" in warnings[0]
    assert result.splits[0].n_test == 3 * 7


@pytest.mark.slow
def test_aslan_runs_equal_a_direct_computation(tmp_path):
    # labels shuffled: near chance, where every choice of the protocol moves the numbers
    path, pairs, rows, layers, keys = aslan_data(tmp_path, shuffle=True, seed=2)
    [report] = reports.aslan_runs([str(path)], str(pairs))
    assert report.layers == ["prob", "fc7", "fc6", "pool5"] and report.dims == 48
    acc, aucs, pooled = direct_aslan(rows, layers, keys)
    np.testing.assert_allclose(report.result.fold_accuracy, acc)
    np.testing.assert_allclose(report.result.fold_auc, aucs)
    assert report.result.pooled_auc == pytest.approx(pooled) and report.result.accuracy == pytest.approx(acc.mean())
    written = report.to_dict()
    assert list(written) == ["file", "layers", "dims", "accuracy", "standard_error", "auc_mean_of_folds",
                             "auc_pooled", "fold_accuracy", "fold_auc", "missing_pairs", "roc"]
    assert written["auc_pooled"] == pytest.approx(pooled) and written["missing_pairs"] == 0
    # named layers, as a list or as c3d-svm's comma-separated text, for every file given
    acc2, _, pooled2 = direct_aslan(rows, layers, keys, names=("fc6", "pool5"))
    as_list, as_text = reports.aslan_runs([str(path), str(path)], str(pairs), layers=["fc6", "pool5"])[0], \
        reports.aslan_runs([str(path)], str(pairs), SvmOptions(layers="fc6, pool5"))[0]
    for run_ in (as_list, as_text):
        assert run_.layers == ["fc6", "pool5"] and run_.dims == 24
        np.testing.assert_allclose(run_.result.fold_accuracy, acc2)
        assert run_.result.pooled_auc == pytest.approx(pooled2)


def test_aslan_runs_warn_and_raise_usage_errors(tmp_path):
    rng = np.random.default_rng(5)
    keys = [f"{i + 1:04d}.avi" for i in range(40)]
    path = str(write_features(tmp_path / "neg.h5", keys, {"fc6": rng.standard_normal((40, 8)).astype(np.float32),
                                                           "prob": rng.random((40, 3)).astype(np.float32)},
                              model="other", spec="imported:other"))
    assert reports.aslan_layers(path) == ["fc6"]  # no paper's layers: the file's default layer
    pairs = tmp_path / "p.csv"
    pairs.write_text("\n".join([f"{s},{2 * s - 1},{2 * s},{s % 2}" for s in range(1, 21)] + ["3,1,4321,1"]))
    warnings = []
    [report] = reports.aslan_runs([path], str(pairs), warn=warnings.append)
    assert report.layers == ["fc6"] and report.result.missing_pairs == 1
    assert len(warnings) == 2 and "negative values" in warnings[0] and f"{path}: 1 of 21 pairs" in warnings[1]
    with pytest.raises(UsageError, match="has no layer 'fc7'"):
        reports.aslan_runs([path], str(pairs), layers="fc7")
    (tmp_path / "bad.csv").write_text("split,id1,id2,same\n1,a,b,1\n")
    with pytest.raises(aslan.AslanError, match="expected rows split,id1,id2,same"):
        reports.aslan_runs([path], str(tmp_path / "bad.csv"))
    assert issubclass(aslan.AslanError, UsageError)


def test_svm_options_are_validated_once_and_frozen():
    options = SvmOptions(cv_C="0.01, 0.1,1", pca=[10.0, 50], layers="prob,fc7 , fc6", split=2)
    assert options.cv_C == (0.01, 0.1, 1.0) and options.pca == (10, 50) and options.split == "2"
    assert options.layers == ("prob", "fc7", "fc6") and SvmOptions(cv_C="", layers="").cv_C is None
    for bad, message in (({"dataset": "kinetics"}, "unknown dataset 'kinetics'"),
                         ({"C": 0}, "C must be a positive"), ({"cv_C": "1,-1"}, "C must be a positive"),
                         ({"cv_C": "1,x"}, "comma-separated numbers"),
                         ({"pca": [0]}, "at least 1"), ({"jobs": 0}, "jobs must be at least 1")):
        with pytest.raises(UsageError, match=message):
            SvmOptions(**bad)
    with pytest.raises(UsageError, match="unknown option.*: splits"):
        SvmOptions.of(splits="all")
    with pytest.raises(TypeError, match="layer=... by name"):
        reports.classify("f.h5", "fc7")  # the layer was the second argument before the options object
    with pytest.raises(AttributeError):
        options.C = 2.0  # frozen


def test_the_c_search_is_one_pipeline_inside_gridsearchcv():
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import Pipeline

    y = np.repeat([0, 1], 6)
    plain = svm.model(SvmOptions(C=0.5, jobs=1), y, pca_dim=3)
    assert isinstance(plain, Pipeline) and [n for n, _ in plain.steps] == ["pca", "l2", "svm"]
    assert plain.get_params()["svm__estimator__C"] == 0.5 and plain.get_params()["pca__random_state"] == 0
    search = svm.model(SvmOptions(cv_C=[0.1, 1], seed=4, jobs=1, renormalize=False), y, pca_dim=3)
    assert isinstance(search, GridSearchCV) and search.param_grid == {"svm__estimator__C": [0.1, 1.0]}
    assert [n for n, _ in search.estimator.steps] == ["pca", "svm"] and search.cv.random_state == 4
    with pytest.raises(UsageError, match="at least 2 training videos per class"):
        svm.model(SvmOptions(cv_C=[1]), np.array([0, 0, 1]))
