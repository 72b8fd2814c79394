"""The fold: a new feature file written from sorted sources (the old file's rows, the journal's, or
the parts of a merge), a column or a block at a time, its whole size reserved first, then renamed
over the old one. The old file is never modified in place."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Mapping

import h5py
import numpy as np

from c3d_extract.featurefile.journal import Journal
from c3d_extract.featurefile.schema import (FAILURE_FIELDS, LATER_FACTS, PER_VIDEO, STR, chunk_rows, create_layout,
                                            strings)
from c3d_extract.storage import new_hdf5


class H5Rows:
    """Rows of an existing feature file, as a source for write_sorted."""

    def __init__(self, h5: h5py.File):
        self.h5 = h5
        self.keys = strings(h5["videos"])
        self.shapes = {n: tuple(int(v) for v in h5["features"][n].attrs["clip_shape"]) for n in h5["features"]}
        self._facts = {name: h5[name][()] if name in h5 else np.full(len(self.keys), LATER_FACTS[name], object)
                       for name in PER_VIDEO}
        self._offsets = h5["clip_offset"][()] if "clip_offset" in h5 else None

    def fact(self, row: int, name: str):
        return self._facts[name][row]

    def read(self, path: str, rows: list) -> np.ndarray:
        """Rows of a per-video dataset such as features/fc6 or segments/fc6."""
        order = np.argsort(rows)
        data = self.h5[path][np.asarray(rows)[order]]  # h5py reads increasing indices
        out = np.empty_like(data)
        out[order] = data
        return out

    def clips(self, row: int, layers: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(first frames, layer -> (clips, D)) of one video's per-clip rows."""
        start, count = int(self._offsets[row]), int(self._facts["num_clips"][row])
        return (self.h5["clips/first_frame"][start: start + count],
                {layer: self.h5[f"clips/{layer}"][start: start + count] for layer in layers})


class JournalRows:
    """Video records of a journal, as a source for write_sorted (rows are keys)."""

    def __init__(self, journal: Journal, videos: dict):
        self.journal, self.videos = journal, videos
        self._cache: dict[str, dict[str, np.ndarray]] = {}

    def fact(self, key: str, name: str):
        facts = self.videos[key].meta["facts"]
        return facts[name] if name in facts else LATER_FACTS[name]

    def _arrays(self, key: str) -> dict[str, np.ndarray]:
        """A record's arrays, read from the journal once per block, not once per dataset."""
        if key not in self._cache:
            if len(self._cache) >= 512:
                self._cache.clear()
            self._cache[key] = self.journal.features(self.videos[key])
        return self._cache[key]

    def read(self, path: str, keys: list) -> np.ndarray:
        """features/<layer> is stored under the layer name; segments/<layer> under its path."""
        name = path.split("/", 1)[1] if path.startswith("features/") else path
        return np.stack([self._arrays(k)[name] for k in keys])

    def clips(self, key: str, layers: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        record = self.videos[key]
        arrays = self._arrays(key)
        starts = np.asarray(record.meta["clip_starts"], np.int64)
        return starts, {layer: arrays[f"clips/{layer}"].reshape(len(starts), -1) for layer in layers}


def _chunked(rows: int, chunk_rows: int, row_bytes: int) -> int:
    """Bytes of a chunked dataset of `rows` rows: HDF5 allocates whole chunks."""
    return -(-rows // chunk_rows) * chunk_rows * row_bytes


def file_bytes(shapes: Mapping[str, tuple[int, ...]], rows: int, failures: int = 0, clips: int = 0,
               segments: int = 0, text: int = 0) -> int:
    """An upper bound of the size of a feature file (write_sorted's layout) with `rows` videos,
    `failures` failures, `clips` per-clip rows, `segments` and `text` bytes of strings: whole chunks
    of every dataset, the strings in HDF5's global heap and its own structures (B-trees, headers)."""
    total, chunks = 0, 0
    for shape in shapes.values():
        dim = int(np.prod(shape))
        per_chunk = chunk_rows(dim)
        total += _chunked(rows, per_chunk, 4 * dim) + rows * segments * dim * 4
        total += _chunked(clips, per_chunk, 4 * dim) if clips else 0
        chunks += -(-rows // per_chunk) + rows * bool(segments) + -(-clips // per_chunk)
    if clips:
        total += 3 * _chunked(clips, 4096, 8) + _chunked(rows, 1024, 8)
        chunks += 3 * -(-clips // 4096) + -(-rows // 1024)
    total += (len(PER_VIDEO) + 1) * _chunked(rows, 1024, 16) + len(FAILURE_FIELDS) * _chunked(failures, 256, 16)
    chunks += (len(PER_VIDEO) + 1) * -(-rows // 1024) + len(FAILURE_FIELDS) * -(-failures // 256)
    strings = rows * (1 + sum(dtype is STR for dtype in PER_VIDEO.values())) + len(FAILURE_FIELDS) * failures
    total += text + 24 * strings + 4096 * (1 + strings // 256)  # heap objects and their collections
    return int(1.01 * (total + 128 * chunks)) + 2**16  # chunk index entries; superblock, headers, nodes


def _reserve_for(order: list, failures: list, shapes: Mapping[str, tuple[int, ...]], settings: Mapping) -> int:
    """file_bytes() for rows about to be written by write_sorted."""
    strings = [name for name, dtype in PER_VIDEO.items() if dtype is STR]
    text = sum(len(k.encode()) + sum(len(str(source.fact(row, n)).encode()) for n in strings) for k, source, row in order)
    text += sum(len(str(v).encode()) for row in failures for v in row)
    clips = sum(int(source.fact(row, "num_clips")) for _, source, row in order) if settings.get("per_clip") else 0
    return file_bytes(shapes, len(order), len(failures), clips, int(settings.get("segments", 0) or 0), text)


def write_sorted(path: str, attrs: Mapping, shapes: Mapping[str, tuple[int, ...]], order: list,
                 failures: list[tuple[str, str, str]], block: int = 256, reserve: bool = True) -> None:
    """Write a feature file at `path` from rows (key, source, row) in key order, with `attrs` (which
    hold `settings`) and the given failures. Feature rows go a block at a time (memory O(block)); only
    keys and per-video scalars are O(N). The file's size is reserved first (`reserve`), so a full
    disk raises OSError before anything is written; on any error `path` is removed."""
    order = sorted(order, key=lambda item: item[0])
    failures = sorted(failures)
    settings = json.loads(attrs["settings"])
    size = _reserve_for(order, failures, shapes, settings) if reserve else 0
    with new_hdf5(path, reserve=size) as (new, check):
        create_layout(new, settings, shapes, {}, rows=len(order), failures=len(failures))
        for key, value in attrs.items():
            if key not in ("created", "format", "format_version"):
                new.attrs[key] = value
        new.attrs["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if order:
            new["videos"][:] = [k for k, _, _ in order]
            for name in PER_VIDEO:  # a column at a time: no per-video dicts, memory O(N) scalars
                new[name][:] = [source.fact(row, name) for _, source, row in order]
        paths = [f"features/{layer}" for layer in shapes]
        if "segments" in new:
            paths += [f"segments/{layer}" for layer in shapes]
        for start in range(0, len(order), block):  # block-major: each journal record is read once
            part = order[start: start + block]
            by_source: dict[int, tuple] = {}
            for i, (_, source, row) in enumerate(part):
                by_source.setdefault(id(source), (source, [], []))
                by_source[id(source)][1].append(i)
                by_source[id(source)][2].append(row)
            for dataset in paths:
                target = new[dataset]
                rows = np.empty((len(part), *target.shape[1:]), np.float32)
                for source, positions, source_rows in by_source.values():
                    rows[positions] = source.read(dataset, source_rows).reshape(len(source_rows), *target.shape[1:])
                target[start: start + len(part)] = rows
            check()  # a failing disk stops the fold here, not hours later
        if "clips" in new:
            _write_clips(new, order, list(shapes), int(settings.get("clip_len", 16)))
        for i, name in enumerate(FAILURE_FIELDS):
            if failures:
                new["failures"][name][:] = [row[i] for row in failures]


def _write_clips(new: h5py.File, order: list, layers: list[str], clip_len: int) -> None:
    """Per-clip rows in video order: clip_offset per video, frames and time per clip (the per-video
    facts come from the datasets just written)."""
    counts = new["num_clips"][()].astype(np.int64)
    frames, rates = new["num_frames"][()], new["fps"][()]
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]) if len(counts) else np.zeros(0, np.int64)
    total = int(counts.sum())
    if len(counts):
        new["clip_offset"][:] = offsets
    group = new["clips"]
    for name in [*layers, "first_frame", "last_frame", "time"]:
        group[name].resize(total, axis=0)
    for (key, source, row), num_frames, fps, offset in zip(order, frames, rates, offsets):
        starts, arrays = source.clips(row, layers)
        end = offset + len(starts)
        for layer in layers:
            group[layer][offset:end] = arrays[layer]
        last = np.asarray(starts) + clip_len - 1
        if int(num_frames) > 0:  # imported clips may not know the video's length
            last = np.minimum(last, int(num_frames) - 1)
        group["first_frame"][offset:end] = starts
        group["last_frame"][offset:end] = last
        group["time"][offset:end] = np.asarray(starts) / float(fps) if fps > 0 else np.nan
