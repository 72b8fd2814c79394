"""Features from elsewhere into a feature file, and out again.

- The original tool's blob files (`<prefix>.fc6-1`: 5 int32 n, c, l, h, w, then n*c*l*h*w float32,
  reference/peers.md 1.3), one per clip, listed by its output prefix file. Clips are grouped into
  videos by the prefix's folder (`output/c3d/<video>/000016`), the number in the name is the
  clip's first frame; each video gets the mean of its clips, L2-normalised, and its per-clip rows.
- One `.npy` per video (the layout most tools write): (T, D) clip rows or a (D,) descriptor.
Imports write through FeatureStore, so they are crash-safe and comparable with c3d-svm.
"""

from __future__ import annotations

import os
from collections import defaultdict

from pathlib import Path, PurePosixPath
from typing import Optional, Sequence

import h5py
import numpy as np

from c3d_extract.errors import UsageError
from c3d_extract.featurefile.reader import FeatureFile
from c3d_extract.featurefile.writer import ClipRows, FeatureStore
from c3d_extract.storage import StorageError, is_storage_error, write_atomically
from c3d_extract.vectors import l2_normalize

HEADER_BYTES = 20


def read_blob_file(path: str) -> np.ndarray:
    """One blob file -> its values (n, c*l*h*w)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the blob ({exc.strerror or exc})") from None
    if len(data) < HEADER_BYTES:
        raise UsageError(f"{path}: {len(data)} bytes, shorter than the 20-byte blob header")
    n, c, length, h, w = np.frombuffer(data[:HEADER_BYTES], "<i4")
    count = int(n) * int(c) * int(length) * int(h) * int(w)
    if min(n, c, length, h, w) < 1 or len(data) != HEADER_BYTES + 4 * count:
        raise UsageError(f"{path}: header says {n}x{c}x{length}x{h}x{w} = {count} floats, the file holds "
                         f"{(len(data) - HEADER_BYTES) / 4:g}")
    return np.frombuffer(data, "<f4", offset=HEADER_BYTES).reshape(int(n), -1)


def write_blob_file(path: str, values: np.ndarray) -> None:
    """The original tool's layout for one clip: header (1, D, 1, 1, 1) then D floats."""
    values = np.asarray(values, "<f4").reshape(-1)
    Path(path).write_bytes(np.array([1, values.size, 1, 1, 1], "<i4").tobytes() + values.tobytes())


def _facts(num_frames: int, clips: int, status: str) -> dict:
    return {"num_frames": num_frames, "num_clips": clips, "fps": 0.0, "height": 0, "width": 0, "status": status}


def import_blobs(prefix_list: str, output: str, blobs: Sequence[str], clip_len: int = 16, model: str = "c3d",
                 root: Optional[str] = None, overwrite: bool = False) -> int:
    """Blob files of the prefixes in `prefix_list` (one per line) -> a feature file; returns videos."""
    try:
        prefixes = [line.strip() for line in Path(prefix_list).read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise UsageError(f"{prefix_list}: cannot read the prefix list ({reason})") from None
    if not prefixes:
        raise UsageError(f"{prefix_list}: no prefix")
    base = Path(prefix_list).parent
    paths = [p if os.path.isabs(p) else str(base / p) for p in prefixes]
    root = root or os.path.commonpath([os.path.dirname(os.path.dirname(p)) for p in paths])
    layers = {blob: blob.split("-")[0] for blob in blobs}  # fc6-1 -> fc6
    videos: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for path in paths:
        name = os.path.basename(path)
        if not name.isdigit():
            raise UsageError(f"{path}: the prefix name should be the clip's first frame (e.g. 000016)")
        videos[os.path.relpath(os.path.dirname(path), root).replace(os.sep, "/")].append((int(name), path))
    first = {layers[b]: read_blob_file(f"{paths[0]}.{b}").shape[1] for b in blobs}
    settings = {"model": model, "spec": f"imported:{model}", "weights_sha256": "imported", "layers": list(first),
                "clip_len": clip_len, "per_clip": True, "source": "C3D blob files"}
    with FeatureStore.open(output, settings, {n: (d,) for n, d in first.items()},
                           {"imported_from": os.path.abspath(prefix_list)}, overwrite=overwrite) as store:
        for key, clips in sorted(videos.items()):
            if key in store.done:
                continue
            clips.sort()
            rows = {layers[b]: np.concatenate([read_blob_file(f"{p}.{b}") for _, p in clips]) for b in blobs}
            features = {n: l2_normalize(r.astype(np.float64).mean(0)).astype(np.float32) for n, r in rows.items()}
            store.add_video(key, features, _facts(clips[-1][0] + clip_len, len(clips), "imported"),
                            clips=ClipRows([s for s, _ in clips], rows))
    return len(videos)


def export_npy(path: str, folder: str, layer: Optional[str] = None) -> int:
    """One `<key without extension>.npy` per video: its (T, D) clip rows when the file has them,
    else its (D,) descriptor, of `layer` (default: the file's default layer). Returns the number of
    files written."""
    features = FeatureFile(path)
    layer = features.layer(layer)  # the spec's default (res5b for Res3D) when none is named
    names = [str(PurePosixPath(k).with_suffix("")) + ".npy" for k in features.keys]
    if len(set(names)) != len(names):
        raise UsageError(f"{path}: two videos differ only by extension; their .npy names would collide")
    with h5py.File(path, "r") as f:  # once, not once per video
        clips = f["clips"][layer] if "clips" in f else None
        rows = f["features"][layer]
        offsets, counts = (f["clip_offset"][()], f["num_clips"][()]) if clips is not None else (None, None)
        for i, name in enumerate(names):
            target = Path(folder) / name
            values = clips[offsets[i]: offsets[i] + counts[i]] if clips is not None else rows[i]
            try:  # through a temporary file: a full disk never leaves a half .npy under its name
                target.parent.mkdir(parents=True, exist_ok=True)
                write_atomically(str(target), lambda handle: np.save(handle, values))
            except OSError as exc:
                if is_storage_error(exc):
                    raise StorageError(str(target), exc, f"the {i} .npy file(s) written before it in {folder} "
                                                         f"are whole; nothing else was written") from None
                raise
    return len(names)


def import_npy(folder: str, output: str, layer: str, model: str = "unknown", overwrite: bool = False) -> int:
    """Every `.npy` under `folder` -> a feature file (key = its path without `.npy`); (T, D) arrays
    become per-clip rows (mean + L2 per video), (D,) arrays the descriptor itself."""
    files = sorted(Path(folder).rglob("*.npy"))
    if not files:
        raise UsageError(f"{folder}: no .npy file")
    arrays = {str(f.relative_to(folder).with_suffix("")).replace(os.sep, "/"): f for f in files}
    sample = np.load(files[0])
    per_clip = sample.ndim == 2
    settings = {"model": model, "spec": f"imported:{model}", "weights_sha256": "imported", "layers": [layer],
                "source": "npy", **({"per_clip": True} if per_clip else {})}
    with FeatureStore.open(output, settings, {layer: (sample.shape[-1],)}, {"imported_from": os.path.abspath(folder)},
                           overwrite=overwrite) as store:
        for key, path in arrays.items():
            if key in store.done:  # saved by an earlier run that stopped (a full disk)
                continue
            values = np.load(path).astype(np.float32)
            if (values.ndim == 2) != per_clip or values.shape[-1] != sample.shape[-1]:
                raise UsageError(f"{path}: shape {values.shape} differs from {files[0]}'s {sample.shape}")
            if per_clip:
                row = l2_normalize(values.astype(np.float64).mean(0)).astype(np.float32)
                store.add_video(key, {layer: row}, _facts(0, len(values), "imported"),
                                clips=ClipRows(list(range(len(values))), {layer: values}))
            else:
                store.add_video(key, {layer: values}, _facts(0, 1, "imported"))
    return len(arrays)
