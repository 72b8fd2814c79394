"""The feature file's schema: its format tag, datasets, dtypes and attributes, and its settings
written, read and compared (README "The feature file"). The writer, the fold, merge and the reader
take their names from here.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Mapping, Optional

import h5py
import numpy as np

from c3d_extract.settings import RunSettings, parse_shard

FORMAT = "c3d_extract.features"
FORMAT_VERSION = 1
STR = h5py.string_dtype("utf-8")
PER_VIDEO = {"num_frames": np.int64, "num_clips": np.int64, "fps": np.float64,
             "height": np.int32, "width": np.int32, "status": STR, "decoder": STR}
# facts that files and journals written before them do not have, and what they read as
LATER_FACTS = {"decoder": ""}
FAILURE_FIELDS = ("video", "stage", "error")


def chunk_rows(dim: int) -> int:
    """Rows per chunk of a (rows, dim) float32 dataset: ~1 MiB chunks, so one chunk fits h5py's
    default cache (fold.file_bytes reserves disk space by the same chunks)."""
    return max(1, 2**20 // (4 * dim))


def strings(dataset: h5py.Dataset) -> list[str]:
    """A string dataset as Python str."""
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in dataset[()]]


def attr_value(value):
    """An attribute value h5py and MATLAB read back as is: str, int, float; JSON for the rest."""
    if isinstance(value, str):
        return str(value)  # plain str: h5py rejects str subclasses such as torch's TorchVersion
    return value if isinstance(value, (int, float)) else json.dumps(value)


def create_layout(h5: h5py.File, settings: "RunSettings | Mapping", layer_shapes: Mapping[str, tuple[int, ...]],
                  provenance: Mapping, rows: int = 0, failures: int = 0) -> None:
    """Every dataset and attribute of an empty feature file, or of one sized for `rows` videos and
    `failures` failures that a fold then fills."""
    settings = settings_dict(settings)
    h5.attrs["format"] = FORMAT
    h5.attrs["format_version"] = FORMAT_VERSION
    h5.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    h5.attrs["settings"] = json.dumps(settings, sort_keys=True)
    for key, value in {**settings, **provenance}.items():
        h5.attrs[key] = attr_value(value)
    h5.create_dataset("videos", (rows,), maxshape=(None,), dtype=STR, chunks=(1024,))
    for name, dtype in PER_VIDEO.items():
        h5.create_dataset(name, (rows,), maxshape=(None,), dtype=dtype, chunks=(1024,))
    features = h5.create_group("features")
    for layer, shape in layer_shapes.items():
        dim = int(np.prod(shape))
        ds = features.create_dataset(layer, (rows, dim), maxshape=(None, dim), dtype=np.float32,
                                     chunks=(chunk_rows(dim), dim))
        ds.attrs["clip_shape"] = np.asarray(shape, dtype=np.int64)
    group = h5.create_group("failures")
    for name in FAILURE_FIELDS:
        group.create_dataset(name, (failures,), maxshape=(None,), dtype=STR, chunks=(256,))
    segments = int(settings.get("segments", 0) or 0)
    if segments:
        pooled = h5.create_group("segments")
        for layer, shape in layer_shapes.items():
            dim = int(np.prod(shape))
            pooled.create_dataset(layer, (rows, segments, dim), maxshape=(None, segments, dim),
                                  dtype=np.float32, chunks=(1, segments, dim))
        pooled.attrs["rule"] = "UCF-Crime: round(linspace(1, N, K+1)) boundaries, mean, L2 (c3d_extract/featurefile/pooling.py)"
    if settings.get("per_clip"):
        h5.create_dataset("clip_offset", (rows,), maxshape=(None,), dtype=np.int64, chunks=(1024,))
        clips = h5.create_group("clips")
        clips.attrs["index"] = "clips of video i: rows clip_offset[i] : clip_offset[i] + num_clips[i]"
        for layer, shape in layer_shapes.items():
            dim = int(np.prod(shape))
            clips.create_dataset(layer, (0, dim), maxshape=(None, dim), dtype=np.float32,
                                 chunks=(chunk_rows(dim), dim))
        for name, dtype in (("first_frame", np.int64), ("last_frame", np.int64), ("time", np.float64)):
            clips.create_dataset(name, (0,), maxshape=(None,), dtype=dtype, chunks=(4096,))


def settings_dict(settings: "RunSettings | Mapping") -> dict:
    """Run settings as the plain JSON values a file records (a mapping is taken as it is)."""
    values = settings.to_dict() if isinstance(settings, RunSettings) else dict(settings)
    return json.loads(json.dumps(values))  # tuples become lists, as when read back


def read_settings(h5: h5py.File) -> dict:
    """The settings a feature file was written with."""
    return json.loads(h5.attrs["settings"])


def file_shard(settings: Mapping) -> Optional[tuple[int, int]]:
    """The (I, N) shard recorded in a file's settings, or None."""
    return parse_shard(settings["shard"]) if settings.get("shard") else None


def differences(first: Mapping, second: Mapping, first_name: str, second_name: str) -> list[str]:
    """Every setting that differs, in words ("precision 'fp32' in the file, 'bf16' now"): the one
    comparison behind adding to a file and merging files."""
    return [f"{key} {first.get(key)!r} {first_name}, {second.get(key)!r} {second_name}"
            for key in sorted(set(first) | set(second)) if first.get(key) != second.get(key)]
