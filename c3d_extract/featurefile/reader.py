"""Reading feature files: the matrix of one layer, with the video keys of its rows."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Optional

import h5py
import numpy as np

from c3d_extract.errors import UsageError
from c3d_extract.featurefile.journal_format import journal_path
from c3d_extract.models.defaults import DEFAULT_LAYERS  # no torch: `c3d-svm` does not pay for the networks


class FeatureFileError(UsageError):
    """A feature file that cannot serve the request (missing, not ours, no such layer)."""


@dataclass
class Features:
    """One layer of a feature file: row i of `matrix` is the descriptor of `keys[i]`."""

    path: str
    layer: str
    keys: list[str]
    matrix: np.ndarray  # (N, D) float32
    attrs: dict


@dataclass
class ClipSequence:
    """One video's clips over time: frames, seconds and activations (clips, D)."""

    first_frame: np.ndarray
    last_frame: np.ndarray
    time: np.ndarray
    features: np.ndarray


@dataclass
class FeatureFile:
    """A feature file, read with h5py only when asked: matrices, labels, clip sequences, facts."""

    path: str
    keys: list[str] = field(init=False)
    layers: list[str] = field(init=False)
    attrs: dict = field(init=False)

    def __post_init__(self) -> None:
        with self._open() as f:
            self.keys = f["videos"].asstr()[()].tolist()
            self.attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
            self.layers = _network_order(list(f["features"]), self.attrs)
        self._rows = {key: i for i, key in enumerate(self.keys)}

    @property
    def default_layer(self) -> str:
        """The spec's default feature (fc6 for C3D, res5b for Res3D) when the file has it, else the
        first layer the network computes: what every reader takes when no layer is named."""
        if not self.layers:
            raise FeatureFileError(f"{self.path}: holds no feature layer")
        wanted = DEFAULT_LAYERS.get(str(self.attrs.get("spec", "")), ())
        return next((layer for layer in wanted if layer in self.layers), self.layers[0])

    def _open(self) -> h5py.File:
        return _open(self.path)

    def layer(self, layer: Optional[str] = None) -> str:
        """`layer` checked against the file's layers; None means `default_layer`."""
        layer = layer or self.default_layer
        if layer not in self.layers:
            raise FeatureFileError(f"{self.path}: has no layer {layer!r}; it holds {', '.join(self.layers) or 'none'}")
        return layer

    def matrix(self, layer: Optional[str] = None) -> np.ndarray:
        """(N, D) video descriptors, row i for keys[i]."""
        with self._open() as f:
            return f["features"][self.layer(layer)][()]

    def rows(self, keys: list[str], layer: Optional[str] = None) -> np.ndarray:
        """The descriptors of `keys` (len(keys), D), reading only their rows (not the whole layer)."""
        index = np.array([self._rows[key] for key in keys], dtype=np.int64)
        order = np.argsort(index)  # HDF5 reads a selection in increasing row order
        with self._open() as f:
            dataset = f["features"][self.layer(layer)]
            picked = dataset[index[order]] if len(index) else np.zeros((0, *dataset.shape[1:]), dataset.dtype)
        out = np.empty_like(picked)
        out[order] = picked
        return out

    def labels(self) -> list[str]:
        """The class of each video taken from its first folder (folder-per-class datasets)."""
        return [PurePosixPath(key).parts[0] if "/" in key else "" for key in self.keys]

    def clips(self, key: str, layer: Optional[str] = None) -> ClipSequence:
        """One video's per-clip activations (files written with --per-clip)."""
        with self._open() as f:
            if "clips" not in f:
                raise FeatureFileError(f"{self.path}: has no per-clip features (extract with --per-clip)")
            row = self._rows[key]
            start, count = int(f["clip_offset"][row]), int(f["num_clips"][row])
            part = slice(start, start + count)
            return ClipSequence(f["clips/first_frame"][part], f["clips/last_frame"][part], f["clips/time"][part],
                                f["clips"][self.layer(layer)][part])

    def segments(self, key: str, layer: Optional[str] = None) -> np.ndarray:
        """One video's (K, D) pooled segments (files written with --segments K)."""
        with self._open() as f:
            if "segments" not in f:
                raise FeatureFileError(f"{self.path}: has no segments (extract with --segments K)")
            return f["segments"][self.layer(layer)][self._rows[key]]

    def failures(self) -> list[tuple[str, str, str]]:
        with self._open() as f:
            return list(zip(*(f["failures"][n].asstr()[()].tolist() for n in ("video", "stage", "error"))))

    def info(self) -> dict:
        """A summary: model, weights, settings, counts, layers and shapes, failures."""
        with self._open() as f:
            shapes = {n: [int(v) for v in f["features"][n].attrs["clip_shape"]] for n in self.layers}
            frames, clips = f["num_frames"][()], f["num_clips"][()]
            status = f["status"].asstr()[()].tolist()
            decoders = f["decoder"].asstr()[()].tolist() if "decoder" in f else []
        failures = self.failures()
        pending = os.path.exists(journal_path(self.path))
        return {"file": self.path, "model": self.attrs.get("model"), "spec": self.attrs.get("spec"),
                "weights": self.attrs.get("weights"), "weights_sha256": self.attrs.get("weights_sha256"),
                "precision": self.attrs.get("precision"), "device": self.attrs.get("device"),
                "decoder": self.attrs.get("decoder"), "version": self.attrs.get("c3d_extract_version"),
                "settings": json.loads(self.attrs["settings"]),
                "videos": len(self.keys), "clips": int(clips.sum()), "frames": int(frames.sum()),
                "padded_short_videos": sum("short:" in s for s in status),
                "status": _count(s.split(":")[0] if "," not in s else s for s in status),
                "decoders": _count(decoders),
                "layers": {n: {"clip_shape": shapes[n], "dim": int(np.prod(shapes[n]))} for n in self.layers},
                "per_clip": self.has_clips, "segments": self.attrs.get("segments"),
                "failures": {"count": len(failures), "by_stage": _count(s for _, s, _ in failures),
                             "first": [{"video": v, "stage": s, "error": e} for v, s, e in failures[:5]]},
                "unfinished_run": pending, "created": self.attrs.get("created"), "updated": self.attrs.get("updated")}

    @property
    def has_clips(self) -> bool:
        """True for files written with --per-clip."""
        with self._open() as f:
            return "clips" in f


def _network_order(names: list[str], attrs: dict) -> list[str]:
    """HDF5 lists groups alphabetically (pool5 before res5b); the settings list them as computed."""
    try:
        order = json.loads(attrs["settings"])["layers"]
    except (KeyError, TypeError, ValueError):
        return names
    return sorted(names, key=lambda n: order.index(n) if n in order else len(order))


def _count(values) -> dict:
    out: dict = {}
    for value in values:
        out[value] = out.get(value, 0) + 1
    return out


def _open(path: str) -> h5py.File:
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise FeatureFileError(f"{path}: cannot open as HDF5 ({exc})") from None
    if "features" not in f or "videos" not in f:
        f.close()
        raise FeatureFileError(f"{path}: not a c3d_extract feature file (no videos/ and features/)")
    return f


def load(path: str, layer: Optional[str] = None) -> Features:
    """Load one layer (default: FeatureFile.default_layer) and the keys of its rows."""
    features = FeatureFile(path)
    layer = features.layer(layer)
    matrix = features.matrix(layer).astype(np.float32, copy=False)
    return Features(path, layer, features.keys, matrix, features.attrs)
