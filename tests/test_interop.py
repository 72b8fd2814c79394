"""Import of the original tool's blobs and of .npy files, export, `info`, and the README's API example."""

import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from c3d_extract.featurefile.interop import read_blob_file, write_blob_file
from tests.helpers import run
from bench.support.videos import moving_frames, write_video

README = Path(__file__).resolve().parents[1] / "README.md"



@pytest.fixture
def blob_output(tmp_path):
    """The original tool's output for two videos: output/c3d/<video>/<start>.fc6-1 and .fc7-1."""
    rng = np.random.default_rng(0)
    values = {}
    lines = []
    for video, starts in (("v_A_g01_c01", (0, 16, 32)), ("v_B_g02_c01", (0, 16))):
        folder = tmp_path / "output" / "c3d" / video
        folder.mkdir(parents=True)
        for start in starts:
            prefix = folder / f"{start:06d}"
            lines.append(f"output/c3d/{video}/{start:06d}")
            for blob, dim in (("fc6-1", 8), ("fc7-1", 5)):
                values[video, start, blob] = rng.random(dim).astype(np.float32)
                write_blob_file(f"{prefix}.{blob}", values[video, start, blob])
    (tmp_path / "output_list_video_prefix.txt").write_text("\n".join(lines) + "\n")
    return tmp_path / "output_list_video_prefix.txt", values


def test_blob_layout_is_the_original_tools(tmp_path):
    write_blob_file(str(tmp_path / "x.fc6-1"), np.arange(4096, dtype=np.float32))
    data = (tmp_path / "x.fc6-1").read_bytes()
    assert len(data) == 16404 and np.frombuffer(data[:20], "<i4").tolist() == [1, 4096, 1, 1, 1]
    (tmp_path / "cut.fc6-1").write_bytes(data[:1000])
    with pytest.raises(Exception, match="cut.fc6-1: header says 1x4096x1x1x1"):
        read_blob_file(str(tmp_path / "cut.fc6-1"))


def test_blobs_import_exactly(blob_output, tmp_path):
    prefixes, values = blob_output
    out = tmp_path / "imported.h5"
    result = run("import-blobs", prefixes, out, "--blob", "fc6-1", "--blob", "fc7-1")
    assert result.exit_code == 0, result.output
    with h5py.File(out) as f:
        assert f["videos"].asstr()[()].tolist() == ["v_A_g01_c01", "v_B_g02_c01"]
        assert list(f["features"]) == ["fc6", "fc7"]
        a = slice(0, 3)
        np.testing.assert_array_equal(f["clips/fc6"][a], np.stack([values["v_A_g01_c01", s, "fc6-1"] for s in (0, 16, 32)]))
        assert f["clips/first_frame"][()].tolist() == [0, 16, 32, 0, 16]
        mean = np.stack([values["v_B_g02_c01", s, "fc7-1"] for s in (0, 16)]).astype(np.float64).mean(0)
        np.testing.assert_allclose(f["features/fc7"][1], mean / np.linalg.norm(mean), rtol=1e-6)


def test_export_then_import_is_lossless(blob_output, tmp_path):
    prefixes, _ = blob_output
    run("import-blobs", prefixes, tmp_path / "a.h5")
    assert run("export", tmp_path / "a.h5", tmp_path / "npy").exit_code == 0
    assert sorted(p.name for p in (tmp_path / "npy").glob("*.npy")) == ["v_A_g01_c01.npy", "v_B_g02_c01.npy"]
    assert np.load(tmp_path / "npy" / "v_A_g01_c01.npy").shape == (3, 8)
    assert run("import-npy", tmp_path / "npy", tmp_path / "b.h5", "--layer", "fc6").exit_code == 0
    with h5py.File(tmp_path / "a.h5") as a, h5py.File(tmp_path / "b.h5") as b:
        assert a["videos"][()].tolist() == b["videos"][()].tolist()
        np.testing.assert_array_equal(a["clips/fc6"][()], b["clips/fc6"][()])
        np.testing.assert_allclose(a["features/fc6"][()], b["features/fc6"][()], rtol=1e-6)
    # a file without per-clip rows exports (D,) descriptors and comes back bit for bit
    (tmp_path / "vids" / "cls").mkdir(parents=True)
    write_video(tmp_path / "vids" / "cls" / "x.mp4", moving_frames(20, 48, 64))
    run(tmp_path / "vids", tmp_path / "c.h5", "--model", "res3d", "--layers", "pool5", "--weights", "random", "-q")
    run("export", tmp_path / "c.h5", tmp_path / "npy2")
    run("import-npy", tmp_path / "npy2", tmp_path / "d.h5", "--layer", "pool5")
    with h5py.File(tmp_path / "c.h5") as c, h5py.File(tmp_path / "d.h5") as d:
        np.testing.assert_array_equal(c["features/pool5"][()], d["features/pool5"][()])
        assert d["videos"].asstr()[()].tolist() == ["cls/x"]


def test_info_report_and_json(tmp_path):
    (tmp_path / "v").mkdir()
    write_video(tmp_path / "v" / "a.mp4", moving_frames(30, 48, 64))
    (tmp_path / "v" / "bad.mp4").write_bytes(b"")
    run(tmp_path / "v", tmp_path / "o.h5", "--model", "res3d", "--layers", "res5b,pool5", "--weights", "random", "-q")
    text = run("info", tmp_path / "o.h5").output
    assert "res3d (res3d-sports1m)" in text and "res5b: 25088 values" in text and "failures 1" in text
    assert "bad.mp4: open: empty file (0 bytes)" in text and "random:0" in text
    report = json.loads(run("info", tmp_path / "o.h5", "--json").output)
    assert report["videos"] == 1 and report["clips"] == 2 and report["layers"]["pool5"]["dim"] == 512
    assert report["failures"]["by_stage"] == {"open": 1}


def test_the_readme_api_example_runs(tmp_path, monkeypatch):
    code = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", README.read_text(), re.S)
    assert code, "README.md lost its API example"
    for cls, seed in (("walk", 1), ("jump", 2)):
        (tmp_path / "videos" / cls).mkdir(parents=True)
        write_video(tmp_path / "videos" / cls / f"{cls}.mp4", moving_frames(30, 48, 64, seed=seed))
    monkeypatch.chdir(tmp_path)
    exec(compile(code.group(1), "README.md", "exec"), {})
    assert (tmp_path / "out.h5").exists()


def test_readers_default_to_the_models_feature_not_the_alphabetically_first(tmp_path):
    # HDF5 lists pool5 before res5b; Res3D's feature is res5b, and c3d-svm already took it
    from c3d_extract.featurefile.reader import FeatureFile, load

    (tmp_path / "v").mkdir()
    write_video(tmp_path / "v" / "a.mp4", moving_frames(20, 48, 64))
    run(tmp_path / "v", tmp_path / "o.h5", "--model", "res3d", "--layers", "pool5,res5b", "--weights", "random", "-q")
    with h5py.File(tmp_path / "o.h5") as f:
        assert list(f["features"]) == ["pool5", "res5b"]
        res5b = f["features/res5b"][()]
    features = FeatureFile(str(tmp_path / "o.h5"))
    assert features.layers == ["res5b", "pool5"]  # the order the network computes them
    np.testing.assert_array_equal(features.matrix(), res5b)
    assert load(str(tmp_path / "o.h5")).layer == "res5b"
    run("export", tmp_path / "o.h5", tmp_path / "npy")
    np.testing.assert_array_equal(np.load(tmp_path / "npy" / "a.npy"), res5b[0])


def test_rows_reads_only_the_keys_asked_in_their_order(tmp_path):
    # what --verify reads: the sampled rows, not the whole layer
    from c3d_extract.featurefile.reader import FeatureFile

    matrix = np.arange(20, dtype=np.float32).reshape(5, 4)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.create_dataset("videos", data=["a", "b", "c", "d", "e"], dtype=h5py.string_dtype())
        f.create_group("features")["fc6"] = matrix
    features = FeatureFile(str(tmp_path / "f.h5"))
    np.testing.assert_array_equal(features.rows(["d", "a", "c"], "fc6"), matrix[[3, 0, 2]])
    assert features.rows([], "fc6").shape == (0, 4)
