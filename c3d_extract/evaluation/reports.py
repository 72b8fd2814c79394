"""What `c3d-svm` computes, callable from a script: each call returns result objects whose
`to_dict()` is exactly what the command's --json (and from it the table and --csv) shows.

    from c3d_extract.evaluation import reports
    result = reports.classify("out.h5", split="all")         # UCF101 splits 1-3, linear SVM on fc6
    print(result.mean_accuracy, [s.accuracy for s in result.splits])
    [view2] = reports.aslan_runs(["out.h5"], "View2.mat")   # prob, fc7, fc6, pool5 stacked
    options = reports.SvmOptions(split="all", cv_C="0.01,0.1,1,10")  # c3d-svm's flags, validated once
    result = reports.classify("out.h5", options, layer="fc7")

Bad arguments and input files raise c3d_extract.errors.UsageError (SplitError, AslanError and
FeatureFileError are ones); warnings (videos or pairs left out, negative features) go to `warn`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from c3d_extract.errors import UsageError
from c3d_extract.evaluation import aslan, splits, svm
from c3d_extract.evaluation.options import SvmOptions
from c3d_extract.featurefile import reader

Warn = Callable[[str], None]

# the layers each paper stacks for ASLAN (C3D section 5, Res3D section 5.2), by network
ASLAN_LAYERS = {"c3d": ("prob", "fc7", "fc6", "pool5"), "res3d": ("res5b", "pool5", "prob")}


@dataclass
class PcaPoint:
    """One point of the compactness curve: every split with PCA to `dims` fitted on its training videos."""

    dims: int
    splits: dict[str, float]  # split name -> accuracy
    mean_accuracy: float

    def to_dict(self) -> dict:
        return {"dims": self.dims, "splits": dict(self.splits), "mean_accuracy": self.mean_accuracy}


@dataclass
class Classification:
    """Every split of the protocol on one layer of one file: accuracies, per-class tables,
    confusion matrices, the mean, and the PCA curve when one was asked for."""

    file: str
    layer: str
    dataset: str
    notes: list[str]
    classes: list[str]
    missing: list[str]               # videos of the split files that the feature file lacks (left out)
    splits: list[svm.SplitResult]
    mean_accuracy: float
    std_accuracy: float              # over the splits (ddof 1); 0 for one split
    pca: Optional[list[PcaPoint]] = None  # None: no curve asked for (the dict then has no "pca")

    def _split_dict(self, result: svm.SplitResult) -> dict:
        n = len(self.classes)
        return {"split": result.split, "accuracy": result.accuracy, "n_train": result.n_train,
                "n_test": result.n_test, "C": result.C,
                "per_class": dict(zip(self.classes, result.per_class(n))), "confusion": result.confusion(n)}

    def to_dict(self) -> dict:
        out = {"file": self.file, "layer": self.layer, "dataset": self.dataset, "notes": self.notes,
               "classes": self.classes, "missing": {"count": len(self.missing), "videos": self.missing},
               "splits": [self._split_dict(r) for r in self.splits],
               "mean_accuracy": self.mean_accuracy, "std_accuracy": self.std_accuracy}
        if self.pca is not None:
            out["pca"] = [p.to_dict() for p in self.pca]
        return out


@dataclass
class AslanReport:
    """ASLAN View-2 on one file: the 12 measures of each of `layers`, stacked."""

    file: str
    layers: list[str]
    result: aslan.AslanResult = field(repr=False)

    @property
    def dims(self) -> int:
        return 12 * len(self.layers)

    def to_dict(self) -> dict:
        r = self.result
        return {"file": self.file, "layers": self.layers, "dims": self.dims, "accuracy": r.accuracy,
                "standard_error": r.standard_error, "auc_mean_of_folds": r.auc,
                "auc_pooled": r.pooled_auc, "fold_accuracy": r.fold_accuracy.tolist(),
                "fold_auc": r.fold_auc.tolist(), "missing_pairs": r.missing_pairs,
                "roc": {"fpr": r.roc[0].tolist(), "tpr": r.roc[1].tolist()}}


def classify(path: str, options: Optional[SvmOptions] = None, *, warn: Warn = lambda message: None,
             **changes) -> Classification:
    """Linear SVMs on one layer of the feature file `path` over the splits of a dataset, as `options`
    (with `changes`, keywords named like SvmOptions' fields: layer, split, cv_C, pca, ...) say: the
    layer (default: the file's), the dataset (auto, ucf101, hmdb51, folders), the split (a number or
    "all") or the folds (K or "loo"), C or the values to choose it among, and the dimensions of the
    PCA compactness curve. The defaults are c3d-svm's."""
    options = SvmOptions.of(options, **changes)
    feats = reader.load(path, options.layer)
    protocol = splits.protocol(options.dataset, feats.keys, options.splits_dir, options.split, options.folds,
                               options.seed)
    rows, missing = splits.match(protocol, feats.keys)
    if missing:
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        warn(f"{path}: {len(missing)} video(s) of the split files are not in the feature file and are "
             f"left out: {shown}")
    if len(protocol.classes) < 2:
        raise UsageError(f"{path}: the labels give {len(protocol.classes)} class; at least 2 are needed")
    split_rows = []
    for part in protocol.splits:
        train = [(rows[v], c) for v, c in part.train if v in rows]
        test = [(rows[v], c) for v, c in part.test if v in rows]
        split_rows.append((part.name, np.array([r for r, _ in train], int),
                           np.array([c for _, c in train], int), np.array([r for r, _ in test], int),
                           np.array([c for _, c in test], int)))
    results = svm.evaluate(feats.matrix, split_rows, options)
    accuracies = np.array([r.accuracy for r in results])
    curve = None
    if options.pca:
        curve = []
        for dims in options.pca:
            points = svm.evaluate(feats.matrix, split_rows, options, pca_dim=dims)
            curve.append(PcaPoint(dims, {r.split: r.accuracy for r in points},
                                  float(np.mean([r.accuracy for r in points]))))
    return Classification(path, feats.layer, protocol.dataset, protocol.notes, protocol.classes, missing,
                          results, float(accuracies.mean()),
                          float(accuracies.std(ddof=1)) if len(accuracies) > 1 else 0.0, curve)


def aslan_layers(path: str) -> list[str]:
    """The layers the paper of the file's network stacks that the file holds; else its default layer."""
    features = reader.FeatureFile(path)
    model = str(features.attrs.get("model", ""))
    return [n for n in ASLAN_LAYERS.get(model, ()) if n in features.layers] or [features.default_layer]


def aslan_runs(paths: Sequence[str], pairs_path: str, options: Optional[SvmOptions] = None, *,
               warn: Warn = lambda message: None, **changes) -> list[AslanReport]:
    """ASLAN View-2 (10 folds) on each file, with the pairs of `pairs_path` (View2.mat or a CSV
    split,id1,id2,same). Of `options` (with `changes`), `layers` (names, or one comma-separated
    string) apply to every file, None takes `aslan_layers` of each; `C` and `l1_last_four` (see
    aslan.measures) too."""
    options = SvmOptions.of(options, **changes)
    pairs = aslan.read_pairs(pairs_path)
    reports = []
    for path in paths:
        names = list(options.layers) if options.layers else aslan_layers(path)
        loaded = [reader.load(path, n) for n in names]
        negative = aslan.negative_layers({f.layer: f.matrix for f in loaded})
        if negative:
            warn(f"warning: {path}: layer(s) {', '.join(negative)} have negative values; measures "
                 f"{', '.join(map(str, aslan.NEEDS_NON_NEGATIVE))} assume non-negative input (is fc6 read "
                 f"before its ReLU?)")
        result = aslan.evaluate([f.matrix for f in loaded], loaded[0].keys, pairs, options.C,
                                options.l1_last_four, warn=lambda m, p=path: warn(f"{p}: {m}"))
        reports.append(AslanReport(path, names, result))
    return reports


__all__ = ["ASLAN_LAYERS", "AslanReport", "Classification", "PcaPoint", "SvmOptions", "aslan_layers",
           "aslan_runs", "classify"]
