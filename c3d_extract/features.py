"""Reading feature files: the matrix of one layer, with the video keys of its rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import h5py
import numpy as np

from c3d_extract.models import SPECS


class FeatureFileError(Exception):
    """A feature file that cannot serve the request (missing, not ours, no such layer)."""


@dataclass
class Features:
    """One layer of a feature file: row i of `matrix` is the descriptor of `keys[i]`."""

    path: str
    layer: str
    keys: list[str]
    matrix: np.ndarray  # (N, D) float32
    attrs: dict


def layers_of(path: str) -> list[str]:
    """The feature layers a file holds, in the order the network computes them."""
    with _open(path) as f:
        return list(f["features"])


def _open(path: str) -> h5py.File:
    try:
        f = h5py.File(path, "r")
    except (OSError, FileNotFoundError) as exc:
        raise FeatureFileError(f"{path}: cannot open as HDF5 ({exc})") from None
    if "features" not in f or "videos" not in f:
        f.close()
        raise FeatureFileError(f"{path}: not a c3d_extract feature file (no videos/ and features/)")
    return f


def file_attrs(path: str) -> dict:
    """The root attributes of a feature file (model, spec, weights, settings, ...)."""
    with _open(path) as f:
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}


def default_layer(path: str) -> str:
    """The spec's default feature (fc6 for C3D, res5b for Res3D) when the file has it, else its first."""
    with _open(path) as f:
        names = list(f["features"])
        spec = SPECS.get(str(f.attrs.get("spec", "")))
    if not names:
        raise FeatureFileError(f"{path}: holds no feature layer")
    for layer in (spec.default_layers if spec else ()):
        if layer in names:
            return layer
    return names[0]


def load(path: str, layer: Optional[str] = None) -> Features:
    """Load one layer (default: `default_layer`) and the keys of its rows."""
    layer = layer or default_layer(path)
    with _open(path) as f:
        if layer not in f["features"]:
            raise FeatureFileError(f"{path}: has no layer {layer!r}; it holds {', '.join(f['features']) or 'none'}")
        keys = [k.decode("utf-8") if isinstance(k, bytes) else str(k) for k in f["videos"][()]]
        matrix = f["features"][layer][()].astype(np.float32, copy=False)
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    return Features(path, layer, keys, matrix, attrs)
