"""Linear SVM evaluation of video descriptors, as in C3D section 4 and Res3D section 5.1.

One-vs-rest linear SVMs (liblinear through scikit-learn, squared hinge, C = 1 unless told), trained
on a split's training videos and scored by video-level accuracy on its test videos. Everything that
is fitted (PCA, the choice of C) sees the training part only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
from sklearn.decomposition import PCA
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.svm import LinearSVC

from c3d_extract.errors import UsageError
from c3d_extract.vectors import l2_normalize


def classifier(C: float = 1.0, jobs: int = 1) -> OneVsRestClassifier:
    """One binary LinearSVC per class, trained in parallel over `jobs` processes (the same models
    as LinearSVC's own one-vs-rest, faster where there are cores to share the classes)."""
    return OneVsRestClassifier(LinearSVC(C=C, dual=True, max_iter=5000, random_state=0), n_jobs=jobs)


@dataclass
class SplitResult:
    split: str
    accuracy: float
    n_train: int
    n_test: int
    C: float
    predictions: np.ndarray = field(repr=False)
    truth: np.ndarray = field(repr=False)

    def per_class(self, n_classes: int) -> list[Optional[float]]:
        """Accuracy of each class over its test videos (None for a class with no test video)."""
        out: list[Optional[float]] = []
        for c in range(n_classes):
            mask = self.truth == c
            out.append(float((self.predictions[mask] == c).mean()) if mask.any() else None)
        return out

    def confusion(self, n_classes: int) -> list[list[int]]:
        matrix = np.zeros((n_classes, n_classes), dtype=int)
        np.add.at(matrix, (self.truth, self.predictions), 1)
        return matrix.tolist()


def pipeline(C: float = 1.0, pca_dim: Optional[int] = None, renormalize: bool = True, jobs: int = 1,
             seed: int = 0) -> Pipeline:
    """PCA to `pca_dim` (no whitening) -> L2 rows again (`renormalize`) -> one-vs-rest linear SVMs:
    one estimator, so that a cross-validation refits the PCA on each fold's training rows."""
    steps: list = []
    if pca_dim is not None:
        steps.append(("pca", PCA(n_components=pca_dim, random_state=seed)))
        if renormalize:
            steps.append(("l2", FunctionTransformer(l2_normalize)))
    return Pipeline(steps + [("svm", classifier(C, jobs))])


def choose_C(x_train: np.ndarray, y_train: np.ndarray, C_grid: Sequence[float], pca_dim: Optional[int] = None,
             renormalize: bool = True, jobs: int = 1, seed: int = 0) -> tuple[float, np.ndarray]:
    """The C of `C_grid` with the best mean accuracy over stratified folds of the training videos
    (at most 3; the first C among ties), and each C's mean accuracy. The whole pipeline, PCA
    included, is fitted inside each fold: a PCA fitted on all training videos would have seen each
    fold's validation videos."""
    folds = min(3, int(np.bincount(y_train).min()))
    if folds < 2:
        raise UsageError("choosing C by cross-validation needs at least 2 training videos per class")
    search = GridSearchCV(pipeline(pca_dim=pca_dim, renormalize=renormalize, seed=seed),
                          {"svm__estimator__C": list(C_grid)},
                          cv=StratifiedKFold(folds, shuffle=True, random_state=seed), n_jobs=jobs, refit=False)
    search.fit(x_train, y_train)
    return float(search.best_params_["svm__estimator__C"]), search.cv_results_["mean_test_score"]


def fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, C: float = 1.0,
                C_grid: Optional[Sequence[float]] = None, pca_dim: Optional[int] = None, renormalize: bool = True,
                jobs: int = 1, seed: int = 0) -> tuple[np.ndarray, float]:
    """Predict test classes; PCA (if `pca_dim`) and C (if `C_grid`) are fitted on the training part
    only. Returns the predictions and the C that was used."""
    if pca_dim is not None and pca_dim > min(x_train.shape):
        raise UsageError(f"PCA to {pca_dim} dimensions needs at least {pca_dim} training videos and "
                         f"feature dimensions (have {x_train.shape[0]} x {x_train.shape[1]})")
    if C_grid:
        C, _ = choose_C(x_train, y_train, C_grid, pca_dim, renormalize, jobs, seed)
    model = pipeline(C, pca_dim, renormalize, jobs, seed).fit(x_train, y_train)
    return model.predict(x_test), C


def evaluate(x: np.ndarray, splits: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
             C: float = 1.0, C_grid: Optional[Sequence[float]] = None, pca_dim: Optional[int] = None,
             renormalize: bool = True, jobs: int = 1, seed: int = 0) -> list[SplitResult]:
    """Each split is (name, train rows, train labels, test rows, test labels) into `x`."""
    results = []
    for name, train_rows, y_train, test_rows, y_test in splits:
        if len(test_rows) == 0:
            raise UsageError(f"split {name} has no test video in the feature file")
        if len(np.unique(y_train)) < 2:
            raise UsageError(f"split {name}: the training videos cover {len(np.unique(y_train))} class; "
                             f"a classifier needs at least 2")
        predictions, used_C = fit_predict(x[train_rows], y_train, x[test_rows], C, C_grid, pca_dim,
                                          renormalize, jobs, seed)
        results.append(SplitResult(name, float((predictions == y_test).mean()), len(train_rows),
                                   len(test_rows), used_C, predictions, y_test))
    return results
