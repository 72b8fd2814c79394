"""The feature file: one HDF5 file per run, readable with h5py, MATLAB or pandas alone.

Layout (README "The feature file"):
    videos                 (N,) UTF-8    key of each video: its path relative to the input root
    features/<layer>       (N, D) f32    mean over clips, L2-normalised; attr clip_shape
    num_frames, num_clips  (N,) int64    frames the container reports, clips that were averaged
    fps                    (N,) f64
    height, width          (N,) int32    decoded frame size before the resize
    status                 (N,) UTF-8    "ok", or how the video was padded ("short:loop", ...)
    failures/{video,stage,error} (F,)    every video that could not be processed
    root attributes        provenance (version, model, weights sha256, clip settings, precision,
                           device, decoder, command line) and `settings`, the JSON that must match
                           for a later run to add to the file.
Row i of every per-video dataset belongs to videos[i]. Rows are added as videos finish.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from typing import Mapping

import h5py
import numpy as np

FORMAT = "c3d_extract.features"
FORMAT_VERSION = 1
_STR = h5py.string_dtype("utf-8")
_PER_VIDEO = {"num_frames": np.int64, "num_clips": np.int64, "fps": np.float64,
              "height": np.int32, "width": np.int32, "status": _STR}
_FAILURE_FIELDS = ("video", "stage", "error")


class StoreError(Exception):
    """The output file cannot be used for this run (other settings, not ours, locked, corrupt)."""


def _strings(dataset: h5py.Dataset) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in dataset[()]]


def _attr(value):
    """An attribute value h5py and MATLAB read back as is: str, int, float; JSON for the rest."""
    if isinstance(value, str):
        return str(value)  # plain str: h5py rejects str subclasses such as torch's TorchVersion
    return value if isinstance(value, (int, float)) else json.dumps(value)


def _append(dataset: h5py.Dataset, value) -> None:
    n = dataset.shape[0]
    dataset.resize(n + 1, axis=0)
    dataset[n] = value


class FeatureStore:
    """Appends finished videos and failures to the feature file and knows which keys it holds."""

    def __init__(self, path: str, h5: h5py.File):
        self.path = path
        self._h5 = h5
        self.done: set[str] = set(_strings(h5["videos"]))
        self.failed: dict[str, tuple[str, str]] = {
            video: (stage, error) for video, stage, error in zip(
                *(_strings(h5["failures"][name]) for name in _FAILURE_FIELDS))}

    @classmethod
    def open(cls, path: str, settings: Mapping, layer_shapes: Mapping[str, tuple[int, ...]],
             provenance: Mapping, overwrite: bool = False) -> "FeatureStore":
        """Create `path`, or reopen it to add videos when it was written with the same settings.

        An existing file is replaced only with `overwrite`; one with other settings, or that is not a
        feature file, is refused with a StoreError that says what differs.
        """
        if os.path.exists(path) and not overwrite:
            h5 = cls._open_existing(path)
            try:
                cls._check_settings(path, h5, settings)
            except StoreError:
                h5.close()
                raise
            h5.attrs["last_run"] = json.dumps(dict(provenance), default=str)
            h5.flush()
            return cls(path, h5)
        try:
            h5 = h5py.File(path, "w")
        except OSError as exc:
            raise StoreError(f"{path}: cannot create the feature file: {exc}") from None
        cls._create_layout(h5, settings, layer_shapes, provenance)
        return cls(path, h5)

    @staticmethod
    def _open_existing(path: str) -> h5py.File:
        try:
            return h5py.File(path, "r+")
        except (OSError, RuntimeError) as exc:
            text = str(exc)
            if "lock" in text.lower():
                raise StoreError(f"{path}: the file is open for writing in another process "
                                 f"(two runs cannot write one file; use another output or --shard)") from None
            raise StoreError(f"{path}: exists but is not a readable HDF5 file ({text}); "
                             f"use --overwrite to replace it") from None

    @staticmethod
    def _check_settings(path: str, h5: h5py.File, settings: Mapping) -> None:
        if h5.attrs.get("format") != FORMAT:
            raise StoreError(f"{path}: exists and is not a c3d_extract feature file; "
                             f"use --overwrite to replace it or choose another output")
        stored = json.loads(h5.attrs["settings"])
        wanted = json.loads(json.dumps(dict(settings)))
        diffs = [f"{key} {stored.get(key)!r} in the file, {wanted.get(key)!r} now"
                 for key in sorted(set(stored) | set(wanted)) if stored.get(key) != wanted.get(key)]
        if diffs:
            raise StoreError(f"{path}: exists with other settings ({'; '.join(diffs)}); "
                             f"use --overwrite to replace it or choose another output")

    @staticmethod
    def _create_layout(h5: h5py.File, settings: Mapping, layer_shapes: Mapping[str, tuple[int, ...]],
                       provenance: Mapping) -> None:
        h5.attrs["format"] = FORMAT
        h5.attrs["format_version"] = FORMAT_VERSION
        h5.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        h5.attrs["settings"] = json.dumps(dict(settings), sort_keys=True)
        for key, value in {**settings, **provenance}.items():
            h5.attrs[key] = _attr(value)
        h5.create_dataset("videos", (0,), maxshape=(None,), dtype=_STR, chunks=(1024,))
        for name, dtype in _PER_VIDEO.items():
            h5.create_dataset(name, (0,), maxshape=(None,), dtype=dtype, chunks=(1024,))
        features = h5.create_group("features")
        for layer, shape in layer_shapes.items():
            dim = int(np.prod(shape))
            rows = max(1, 2**20 // (4 * dim))  # ~1 MiB chunks: one chunk fits h5py's default cache
            ds = features.create_dataset(layer, (0, dim), maxshape=(None, dim), dtype=np.float32,
                                         chunks=(rows, dim))
            ds.attrs["clip_shape"] = np.asarray(shape, dtype=np.int64)
        failures = h5.create_group("failures")
        for name in _FAILURE_FIELDS:
            failures.create_dataset(name, (0,), maxshape=(None,), dtype=_STR, chunks=(256,))
        h5.flush()

    @property
    def layers(self) -> list[str]:
        return list(self._h5["features"])

    def add_video(self, key: str, features: Mapping[str, np.ndarray], facts: Mapping) -> None:
        """Write one finished video (all layers and facts) and flush it to disk."""
        if key in self.done:
            raise ValueError(f"{key} is already in {self.path}")
        for layer in self.layers:
            _append(self._h5["features"][layer], np.asarray(features[layer], dtype=np.float32))
        for name in _PER_VIDEO:
            _append(self._h5[name], facts[name])
        _append(self._h5["videos"], key)
        self._h5.flush()
        self.done.add(key)
        if key in self.failed:
            self._drop_failures({key})

    def add_failure(self, key: str, stage: str, error: str) -> None:
        """Record a video that could not be processed (replacing an older record of it)."""
        if key in self.failed:
            self._drop_failures({key})
        for name, value in zip(_FAILURE_FIELDS, (key, stage, error)):
            _append(self._h5["failures"][name], value)
        self._h5.flush()
        self.failed[key] = (stage, error)

    def _drop_failures(self, keys: set[str]) -> None:
        group = self._h5["failures"]
        rows = list(zip(*(_strings(group[name]) for name in _FAILURE_FIELDS)))
        kept = [row for row in rows if row[0] not in keys]
        for i, name in enumerate(_FAILURE_FIELDS):
            group[name].resize(len(kept), axis=0)
            if kept:
                group[name][:] = [row[i] for row in kept]
        for key in keys:
            self.failed.pop(key, None)
        self._h5.flush()

    def close(self) -> None:
        if self._h5.id.valid:
            self._h5.close()

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
