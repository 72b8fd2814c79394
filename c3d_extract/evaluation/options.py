"""The options of one `c3d-svm` evaluation, validated once: what its flags say, and what a script
passes to `reports.classify` and `reports.aslan_runs`. Everything downstream (the splits, the SVM
pipeline, the PCA curve, ASLAN) reads them from here; no option is threaded through by hand.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Optional, Sequence, Union

from c3d_extract.errors import UsageError

DATASETS = ("auto", "ucf101", "hmdb51", "folders")

Numbers = Union[str, Sequence[float], None]


@dataclass(frozen=True)
class SvmOptions:
    """How feature files are evaluated. `cv_C`, `pca` and `layers` may be comma-separated text
    (kept as tuples); None where a default depends on the file (`layer`, `layers`)."""

    # the linear SVM protocol (C3D section 4, Res3D section 5.1)
    layer: Optional[str] = None       # default: the file's (fc6 for C3D, res5b for Res3D)
    dataset: str = "auto"             # DATASETS
    splits_dir: Optional[str] = None  # UCF101's lists or HMDB51's split files
    split: str = "1"                  # a number or "all"
    folds: Optional[str] = None       # folder-per-class data: K or "loo"
    C: float = 1.0
    cv_C: Numbers = None              # choose C among these (cross-validation on each split's training part)
    pca: Numbers = None               # the compactness curve's dimensions
    renormalize: bool = True          # L2 rows again after the PCA
    jobs: int = os.cpu_count() or 1   # processes training the one-vs-rest SVMs (and the C search)
    seed: int = 0                     # of the folds and the PCA solver
    # ASLAN (C3D section 5)
    layers: Union[str, Sequence[str], None] = None  # stacked layers; None: the paper's for the file's network
    l1_last_four: bool = False

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        set_("cv_C", _numbers(self.cv_C, "cv_C"))
        pca = _numbers(self.pca, "pca")
        set_("pca", None if pca is None else tuple(int(dims) for dims in pca))
        if isinstance(self.layers, str):
            set_("layers", tuple(name.strip() for name in self.layers.split(",") if name.strip()) or None)
        elif self.layers is not None:
            set_("layers", tuple(self.layers) or None)
        set_("split", str(self.split))
        if self.dataset not in DATASETS:
            raise UsageError(f"unknown dataset {self.dataset!r}; use {', '.join(DATASETS[:-1])} or "
                             f"{DATASETS[-1]}")
        if self.jobs < 1:
            raise UsageError(f"jobs must be at least 1, not {self.jobs}")
        for value in (self.C, *(self.cv_C or ())):
            if not value > 0:
                raise UsageError(f"C must be a positive number, not {value}")
        for dims in self.pca or ():
            if dims < 1:
                raise UsageError(f"PCA dimensions must be at least 1, not {dims}")

    @classmethod
    def of(cls, options: Optional["SvmOptions"] = None, **changes) -> "SvmOptions":
        """`options` with `changes` (keywords named like the fields; a misspelt one is a UsageError)."""
        if options is not None and not isinstance(options, cls):
            raise TypeError(f"options must be {cls.__name__}, not {type(options).__name__} "
                            f"(pass layer=... by name)")
        unknown = set(changes) - {f.name for f in fields(cls)}
        if unknown:
            raise UsageError(f"unknown option(s): {', '.join(sorted(unknown))}")
        return replace(options or cls(), **changes)


def _numbers(value: Numbers, name: str) -> Optional[tuple[float, ...]]:
    """Comma-separated text or numbers -> a tuple of floats; None or empty -> None."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = [float(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise UsageError(f"{name}: expected comma-separated numbers, got {value!r}") from None
    return tuple(float(v) for v in value) or None


__all__ = ["DATASETS", "SvmOptions"]
