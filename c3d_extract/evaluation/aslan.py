"""ASLAN same/not-same action pairs (Kliper-Gross et al., TPAMI 2012) as C3D section 5 evaluates them.

For each feature layer, the 12 (dis)similarities of TPAMI Table 3 between the two videos of a pair;
the 12 x K values are standardised with the training folds' statistics, a linear SVM is trained on 9
of the 10 splits and tested on the 10th. Facts and guards: reference/protocols.md section 1.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Callable, Sequence

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from c3d_extract.errors import UsageError

EPS = 1e-10
MEASURES = ("inner product", "sqrt inner product", "sqrt Bhattacharyya", "sqrt harmonic", "cosine",
            "sqrt chi2", "L1", "Hellinger", "L2", "symmetric KL", "sqrt max / sqrt sum", "intersection / sums")
NEEDS_NON_NEGATIVE = (2, 3, 4, 6, 8, 10, 11, 12)  # 1-based measure numbers


class AslanError(UsageError):
    """Pairs that cannot be read or matched to videos."""


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, with 0 where den is 0 (the guard for x1 + x2 = 0)."""
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den != 0)
    return out


def measures(x1: np.ndarray, x2: np.ndarray, l1_last_four: bool = False) -> np.ndarray:
    """The 12 measures of TPAMI Table 3 for each pair: (P, D) x (P, D) -> (P, 12), in table order.

    Guards: terms whose x1 + x2 is 0 count 0 (measures 4, 6, 11); measure 10 clips values to 1e-10;
    square roots of negative values are taken as 0 (only negative inputs make them negative).
    `l1_last_four` L1-normalises the vectors before measures 9-12, one reading of the caption
    "in the last four rows, original vectors were normalized".
    """
    x1, x2 = np.asarray(x1, np.float64), np.asarray(x2, np.float64)
    root = lambda v: np.sqrt(np.maximum(v, 0))  # noqa: E731
    total = x1 + x2
    inner = (x1 * x2).sum(1)
    norms = np.linalg.norm(x1, axis=1) * np.linalg.norm(x2, axis=1)
    out = np.empty((len(x1), 12))
    out[:, 0] = inner
    out[:, 1] = root(inner)
    out[:, 2] = root((root(x1) * root(x2)).sum(1))
    out[:, 3] = root(_safe_divide(x1 * x2, total).sum(1))
    out[:, 4] = _safe_divide(inner, norms)
    out[:, 5] = root(_safe_divide((x1 - x2) ** 2, total).sum(1))
    out[:, 6] = np.abs(x1 - x2).sum(1)
    out[:, 7] = root(((root(x1) - root(x2)) ** 2).sum(1))
    if l1_last_four:
        x1 = _safe_divide(x1, np.abs(x1).sum(1, keepdims=True))
        x2 = _safe_divide(x2, np.abs(x2).sum(1, keepdims=True))
        total = x1 + x2
    out[:, 8] = np.sqrt(((x1 - x2) ** 2).sum(1))
    c1, c2 = np.maximum(x1, EPS), np.maximum(x2, EPS)
    out[:, 9] = ((c1 * np.log(c1 / c2)).sum(1) + (c2 * np.log(c2 / c1)).sum(1)) / 2
    out[:, 10] = _safe_divide(root(np.maximum(x1, x2)), root(total)).sum(1)
    out[:, 11] = _safe_divide(np.minimum(x1, x2).sum(1), x1.sum(1) * x2.sum(1))
    return out


@dataclass
class Pairs:
    split: np.ndarray  # (P,) split number 1..10
    id1: np.ndarray
    id2: np.ndarray
    same: np.ndarray   # (P,) 1 same action, 0 not


def read_pairs(path: str) -> Pairs:
    """View2.mat (`action_splits_pairs`, 600 x 5 x 10: id1, id2, same, action1, action2) or a CSV
    with columns split,id1,id2,same (a header line is allowed)."""
    if path.lower().endswith(".mat"):
        from scipy.io import loadmat

        try:
            data = loadmat(path)["action_splits_pairs"]
        except (OSError, KeyError, ValueError) as exc:
            raise AslanError(f"{path}: not an ASLAN View2.mat with action_splits_pairs ({exc})") from None
        if data.ndim != 3 or data.shape[1] < 3:
            raise AslanError(f"{path}: action_splits_pairs has shape {data.shape}, expected (600, 5, 10)")
        rows, _, n_splits = data.shape
        flat = np.concatenate([data[:, :, s] for s in range(n_splits)])
        split = np.repeat(np.arange(1, n_splits + 1), rows)
        return Pairs(split, flat[:, 0].astype(int), flat[:, 1].astype(int), (flat[:, 2] > 0).astype(int))
    try:
        with open(path, newline="") as handle:
            rows = [r for r in csv.reader(handle) if r and r[0].strip()]
    except OSError as exc:
        raise AslanError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if rows and not rows[0][0].strip().isdigit():
        rows = rows[1:]
    try:
        values = np.array([[int(float(v)) for v in r[:4]] for r in rows])
    except ValueError as exc:
        raise AslanError(f"{path}: expected rows split,id1,id2,same ({exc})") from None
    if values.ndim != 2 or values.shape[1] != 4:
        raise AslanError(f"{path}: expected 4 columns split,id1,id2,same")
    return Pairs(values[:, 0], values[:, 1], values[:, 2], (values[:, 3] > 0).astype(int))


def sample_ids(keys: Sequence[str]) -> dict[int, int]:
    """ASLAN sample id (the last 4-digit number in the file name) -> row of the feature file."""
    rows: dict[int, int] = {}
    for row, key in enumerate(keys):
        found = re.findall(r"(?<!\d)(\d{4})(?!\d)", PurePosixPath(key).stem)
        if found:
            sample = int(found[-1])
            if sample in rows:
                raise AslanError(f"sample id {sample:04d} names two videos: {keys[rows[sample]]} and {key}")
            rows[sample] = row
    return rows


@dataclass
class AslanResult:
    fold_accuracy: np.ndarray  # percent
    fold_auc: np.ndarray
    pooled_auc: float
    roc: tuple[np.ndarray, np.ndarray]
    missing_pairs: int

    @property
    def accuracy(self) -> float:
        return float(self.fold_accuracy.mean())

    @property
    def standard_error(self) -> float:
        return float(self.fold_accuracy.std(ddof=1) / np.sqrt(len(self.fold_accuracy)))

    @property
    def auc(self) -> float:
        return float(self.fold_auc.mean())


def pair_features(layers: Sequence[np.ndarray], rows1: np.ndarray, rows2: np.ndarray,
                  l1_last_four: bool = False) -> np.ndarray:
    """The 12 measures for every layer, side by side: (P, 12 x K)."""
    return np.hstack([measures(x[rows1], x[rows2], l1_last_four) for x in layers])


def fold_scores(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, C: float = 1.0) -> np.ndarray:
    """SVM decision values for the test pairs; each dimension is standardised with the training
    pairs' mean and deviation only (the 48 values are not comparable otherwise, C3D section 5)."""
    scaler = StandardScaler().fit(x_train)
    model = LinearSVC(C=C, dual=True, max_iter=10000, random_state=0).fit(scaler.transform(x_train), y_train)
    return model.decision_function(scaler.transform(x_test))


def evaluate(layers: Sequence[np.ndarray], keys: Sequence[str], pairs: Pairs, C: float = 1.0,
             l1_last_four: bool = False, warn: Callable[[str], None] = lambda m: None) -> AslanResult:
    """10-fold ASLAN: train on 9 splits, test on the 10th; z-scores use the training folds only."""
    ids = sample_ids(keys)
    known = np.array([a in ids and b in ids for a, b in zip(pairs.id1, pairs.id2)], dtype=bool)
    if not known.any():
        raise AslanError("no pair has both videos in the feature file (ids are the 4-digit sample "
                         "numbers in the video names)")
    if not known.all():
        warn(f"{int((~known).sum())} of {len(known)} pairs have a video missing from the feature file; "
             f"they are left out")
    rows1 = np.array([ids[a] for a in pairs.id1[known]])
    rows2 = np.array([ids[b] for b in pairs.id2[known]])
    x = pair_features(layers, rows1, rows2, l1_last_four)
    y, split = pairs.same[known], pairs.split[known]
    folds = np.unique(split)
    if len(folds) < 2:
        raise AslanError(f"the pairs form {len(folds)} split; ASLAN needs 10 (at least 2)")
    accuracy, aucs, scores, truth = [], [], [], []
    for fold in folds:
        test = split == fold
        if len(np.unique(y[~test])) < 2:
            raise AslanError(f"split {fold}: the training pairs are all of one kind (same or not-same)")
        score = fold_scores(x[~test], y[~test], x[test], C)
        accuracy.append(100.0 * float(((score > 0).astype(int) == y[test]).mean()))
        aucs.append(float(roc_auc_score(y[test], score)) if len(np.unique(y[test])) == 2 else np.nan)
        scores.append(score)
        truth.append(y[test])
    scores_all, truth_all = np.concatenate(scores), np.concatenate(truth)
    fpr, tpr, _ = roc_curve(truth_all, scores_all)
    return AslanResult(np.array(accuracy), np.array(aucs), float(roc_auc_score(truth_all, scores_all)),
                       (fpr, tpr), int((~known).sum()))


def negative_layers(layers: dict[str, np.ndarray]) -> list[str]:
    """Layers with negative values: measures 2-4, 6, 8, 10-12 assume non-negative input."""
    return [name for name, x in layers.items() if (x < 0).any()]


__all__ = ["MEASURES", "NEEDS_NON_NEGATIVE", "AslanError", "AslanResult", "Pairs", "evaluate", "measures",
           "negative_layers", "pair_features", "read_pairs", "sample_ids"]
