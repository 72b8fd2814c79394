"""PCA of clip rows: fitted in one streaming pass, written as a file of its own, read back, and the
official ActivityNet projection file (`PCA_activitynet_v1-3.hdf5`) read the same way.

The fit accumulates, over chunks of rows, the count, the sum and the D x D Gram matrix of the rows
minus a shift (the first chunk's mean: it keeps the float64 sums from cancelling), all in float64,
then takes the leading eigenvectors of the covariance. Memory is the Gram matrix (8 D^2 bytes: 128
MiB for fc7's 4096) and one chunk, whatever the number of rows; the result is the exact PCA of
every row (no sampling, no approximation such as IncrementalPCA's per-batch SVD updates), up to
rounding. The cost is one D x D rank-k update per chunk (BLAS) and one eigendecomposition.

Projection: (x - mean) @ components.T, centred, not whitened; the sign of each component is fixed so
that its largest-magnitude loading is positive (scikit-learn's convention for PCA.components_).

The official file (README "ActivityNet format"): datasets data/x_mean (1, D), data/U (D, D) whose
columns are the components in decreasing order, data/S; its projection is (x - x_mean) @ U[:, :K].
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Optional

import h5py
import numpy as np
import scipy.linalg

from c3d_extract.errors import UsageError
from c3d_extract.featurefile.schema import attr_value
from c3d_extract.storage import sha256_of

FORMAT = "c3d_extract.pca"
OFFICIAL_DATASETS = ("data/U", "data/x_mean")


@dataclass
class PCA:
    """A fitted or loaded projection: `mean` (D,), `components` (K, D) with orthonormal rows,
    `explained_variance` (K,) (None when the file does not give it), and its provenance."""

    mean: np.ndarray
    components: np.ndarray
    explained_variance: Optional[np.ndarray] = None
    provenance: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.components.shape[0])

    @property
    def input_dim(self) -> int:
        return int(self.components.shape[1])

    def project(self, rows: np.ndarray) -> np.ndarray:
        """(n, D) rows -> (n, K) float32: (rows - mean) @ components.T, computed in float64."""
        centred = np.asarray(rows, dtype=np.float64) - self.mean
        return (centred @ self.components.T).astype(np.float32)

    def leading(self, dim: int, source: str) -> "PCA":
        """The first `dim` components (a UsageError naming `source` when it has fewer)."""
        if dim > self.dim:
            raise UsageError(f"{source}: holds {self.dim} component(s), {dim} asked")
        variance = None if self.explained_variance is None else self.explained_variance[:dim]
        return PCA(self.mean, self.components[:dim], variance, {**self.provenance, "components_used": dim})


class StreamingCovariance:
    """Count, mean and covariance of rows given chunk by chunk, in float64, in O(D^2) memory."""

    def __init__(self) -> None:
        self.count = 0
        self._shift: Optional[np.ndarray] = None
        self._sum: Optional[np.ndarray] = None
        self._gram: Optional[np.ndarray] = None

    def add(self, rows: np.ndarray) -> None:
        """Add (n, D) rows."""
        if not len(rows):
            return
        rows = np.asarray(rows, dtype=np.float64)
        if self._shift is None:
            self._shift = rows.mean(0)
            self._sum = np.zeros_like(self._shift)
            self._gram = np.zeros((rows.shape[1], rows.shape[1]))
        centred = rows - self._shift
        self.count += len(rows)
        self._sum += centred.sum(0)
        self._gram += centred.T @ centred  # BLAS syrk: numpy sees the transpose of one array

    @property
    def mean(self) -> np.ndarray:
        return self._shift + self._sum / self.count

    def covariance(self) -> np.ndarray:
        """The unbiased covariance (divided by count - 1), as scikit-learn's PCA uses."""
        if self.count < 2:
            raise ValueError("a covariance needs at least 2 rows")
        offset = self._sum / self.count
        scatter = self._gram - self.count * np.outer(offset, offset)
        return scatter / (self.count - 1)


def fit(chunks: Iterable[np.ndarray], dim: int, provenance: Optional[dict] = None) -> PCA:
    """The PCA of every row of `chunks` (an iterable of (n, D) arrays), keeping `dim` components."""
    stats = StreamingCovariance()
    for chunk in chunks:
        stats.add(chunk)
    if stats.count < 2:
        raise UsageError(f"a PCA needs at least 2 clip rows; there are {stats.count}")
    size = stats.mean.shape[0]
    if not 1 <= dim <= size:
        raise UsageError(f"--pca {dim}: must be between 1 and the layer's {size} values")
    covariance = stats.covariance()
    values, vectors = scipy.linalg.eigh(covariance, subset_by_index=[size - dim, size - 1])
    order = np.argsort(values)[::-1]
    values, components = np.clip(values[order], 0, None), vectors[:, order].T
    pivots = np.argmax(np.abs(components), axis=1)
    components *= np.sign(components[np.arange(dim), pivots])[:, None]
    total = float(np.trace(covariance))
    info = {"method": "streaming float64 covariance, scipy.linalg.eigh (exact PCA of every row)",
            "n_samples": stats.count, "whiten": False, "centred": True, "total_variance": total,
            "sign_rule": "largest-magnitude loading of each component positive",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **(provenance or {})}
    return PCA(stats.mean, components, values, info)


def save(pca: PCA, path: str, write) -> None:
    """Write `pca` in this tool's layout through `write(path, fill)` (an atomic writer that calls
    fill(h5file, check)): mean (D,), components (K, D), explained_variance (K,), explained_variance_ratio
    (K,) float64, and the settings it came from as attributes."""
    def fill(h5: h5py.File, check) -> None:
        h5.attrs["format"] = FORMAT
        h5.attrs["projection"] = "(x - mean) @ components.T; centred, not whitened"
        for key, value in pca.provenance.items():
            h5.attrs[key] = attr_value(value)
        h5.create_dataset("mean", data=pca.mean)
        h5.create_dataset("components", data=pca.components)
        if pca.explained_variance is not None:
            h5.create_dataset("explained_variance", data=pca.explained_variance)
            total = pca.provenance.get("total_variance")
            if total:
                h5.create_dataset("explained_variance_ratio", data=pca.explained_variance / total)
    write(path, fill)


def load(path: str, dim: Optional[int] = None) -> PCA:
    """A projection file: one written by `save`, or the official ActivityNet one (data/U, data/S,
    data/x_mean). `dim` keeps the leading components (default: all of ours; 500 of the official
    file's, the release's dimension)."""
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise UsageError(f"{path}: cannot open as HDF5 ({exc})") from None
    with h5:
        if h5.attrs.get("format") == FORMAT:
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in h5.attrs.items()}
            variance = h5["explained_variance"][()] if "explained_variance" in h5 else None
            pca = PCA(h5["mean"][()].astype(np.float64), h5["components"][()].astype(np.float64), variance,
                      {"pca_file": os.path.abspath(path), "pca_layout": "c3d_extract",
                       "pca_fitted": json.dumps({k: v for k, v in attrs.items() if k != "format"},
                                                default=str)})
        elif all(name in h5 for name in OFFICIAL_DATASETS):
            dim = 500 if dim is None else dim
            pca = _official(h5, path, dim)
        else:
            raise UsageError(f"{path}: not a PCA file (neither this tool's nor the official layout with "
                             f"{' and '.join(OFFICIAL_DATASETS)})")
    pca.provenance["pca_file_sha256"] = sha256_of(path)
    return pca if dim is None else pca.leading(dim, path)


def _official(h5: h5py.File, path: str, dim: int) -> PCA:
    """The official file's leading `dim` components (only those columns of U are read)."""
    mean = np.asarray(h5["data/x_mean"][()], dtype=np.float64).reshape(-1)
    shape = h5["data/U"].shape
    if len(shape) != 2 or shape[0] != mean.size:
        raise UsageError(f"{path}: data/U has shape {shape}; (D, K) with D = {mean.size} (data/x_mean) expected")
    if dim > shape[1]:
        raise UsageError(f"{path}: holds {shape[1]} component(s), {dim} asked")
    basis = np.asarray(h5["data/U"][:, :dim], dtype=np.float64)
    return PCA(mean, basis.T, None,
               {"pca_file": os.path.abspath(path), "pca_layout": "ActivityNet (data/U, data/S, data/x_mean)",
                "pca_convention": "(x - x_mean) @ U[:, :K]: centred, U's columns the components, not whitened"})
