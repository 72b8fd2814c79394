"""Linear SVM evaluation of video descriptors, as in C3D section 4 and Res3D section 5.1.

One-vs-rest linear SVMs (liblinear through scikit-learn, squared hinge, C = 1 unless told), trained
on a split's training videos and scored by video-level accuracy on its test videos. Everything that
is fitted (PCA, the choice of C) sees the training part only: one scikit-learn Pipeline (PCA, L2,
the SVMs), inside a GridSearchCV when C is chosen, built from the run's SvmOptions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.decomposition import PCA
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.svm import LinearSVC

from c3d_extract.errors import UsageError
from c3d_extract.evaluation.options import SvmOptions
from c3d_extract.vectors import l2_normalize

C_PARAMETER = "svm__estimator__C"  # the pipeline's C, as GridSearchCV and get_params name it


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


def pipeline(options: SvmOptions, pca_dim: Optional[int] = None) -> Pipeline:
    """PCA to `pca_dim` (no whitening) -> L2 rows again (`options.renormalize`) -> one-vs-rest linear
    SVMs with `options.C`: one estimator, so that a cross-validation refits the PCA on each fold's
    training rows."""
    steps: list = []
    if pca_dim is not None:
        steps.append(("pca", PCA(n_components=pca_dim, random_state=options.seed)))
        if options.renormalize:
            steps.append(("l2", FunctionTransformer(l2_normalize)))
    return Pipeline(steps + [("svm", classifier(options.C, options.jobs))])


def model(options: SvmOptions, y_train: np.ndarray, pca_dim: Optional[int] = None) -> BaseEstimator:
    """What a split fits on its training videos: the pipeline with `options.C`, or with `options.cv_C`
    that pipeline inside a GridSearchCV choosing C by the best mean accuracy over stratified folds
    of the training videos (at most 3, seeded; the first C among ties), then refitted with it on all
    of them. The whole pipeline, PCA included, is fitted inside each fold: a PCA fitted on all
    training videos would have seen each fold's validation videos."""
    if not options.cv_C:
        return pipeline(options, pca_dim)
    folds = min(3, int(np.bincount(y_train).min()))
    if folds < 2:
        raise UsageError("choosing C by cross-validation needs at least 2 training videos per class")
    folds_of_training = StratifiedKFold(folds, shuffle=True, random_state=options.seed)
    return GridSearchCV(pipeline(options, pca_dim), {C_PARAMETER: list(options.cv_C)}, cv=folds_of_training,
                        n_jobs=options.jobs)


def used_C(fitted: BaseEstimator) -> float:
    """The C a fitted `model` predicts with."""
    if isinstance(fitted, GridSearchCV):
        return float(fitted.best_params_[C_PARAMETER])
    return fitted.get_params()[C_PARAMETER]


def fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, options: SvmOptions,
                pca_dim: Optional[int] = None) -> tuple[np.ndarray, float]:
    """Predict test classes; PCA (if `pca_dim`) and C (if `options.cv_C`) are fitted on the training
    part only. Returns the predictions and the C that was used."""
    if pca_dim is not None and pca_dim > min(x_train.shape):
        raise UsageError(f"PCA to {pca_dim} dimensions needs at least {pca_dim} training videos and "
                         f"feature dimensions (have {x_train.shape[0]} x {x_train.shape[1]})")
    fitted = model(options, y_train, pca_dim).fit(x_train, y_train)
    return fitted.predict(x_test), used_C(fitted)


def evaluate(x: np.ndarray, splits: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
             options: SvmOptions, pca_dim: Optional[int] = None) -> list[SplitResult]:
    """Each split is (name, train rows, train labels, test rows, test labels) into `x`."""
    results = []
    for name, train_rows, y_train, test_rows, y_test in splits:
        if len(test_rows) == 0:
            raise UsageError(f"split {name} has no test video in the feature file")
        if len(np.unique(y_train)) < 2:
            raise UsageError(f"split {name}: the training videos cover {len(np.unique(y_train))} class; "
                             f"a classifier needs at least 2")
        predictions, C = fit_predict(x[train_rows], y_train, x[test_rows], options, pca_dim)
        results.append(SplitResult(name, float((predictions == y_test).mean()), len(train_rows),
                                   len(test_rows), C, predictions, y_test))
    return results
