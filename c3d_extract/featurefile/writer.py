"""The feature file: one HDF5 file per run, readable with h5py, MATLAB or pandas alone.

Layout (README "The feature file"):
    videos                 (N,) UTF-8    key of each video: its path relative to the input root
    features/<layer>       (N, D) f32    mean over clips, L2-normalised; attr clip_shape
    num_frames, num_clips  (N,) int64    frames decoded, clips that were averaged
    fps                    (N,) f64
    height, width          (N,) int32    decoded frame size before the resize
    status                 (N,) UTF-8    "ok", or what happened: "short:loop", "repaired:3", "partial:28"
    decoder                (N,) UTF-8    the decoder that read it ("decord 0.6.0", "pyav 18.1.0")
    failures/{video,stage,error} (F,)    every video that could not be processed
    root attributes        provenance (version, model, weights sha256, clip settings, precision,
                           device, decoder, command line) and `settings`, the JSON that must match
                           for a later run to add to the file.
Rows are sorted by key, so the file does not depend on the order videos finished in.

Crash safety: the HDF5 file is never modified in place. A run appends finished videos to the
journal beside it (journal.py) and, when it ends or is stopped, writes a new HDF5 file with the old
rows and the journal's merged in key order, fsyncs it and renames it over the old one. A kill at
any moment leaves the old file whole and the journal's complete records; the next run folds them.
"""

import json
import os
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Mapping, Optional

import h5py
import numpy as np

from c3d_extract.featurefile.journal import FAILURE, VIDEO, Journal, JournalBusy, journal_path
from c3d_extract.featurefile.pooling import segment_pool
from c3d_extract.storage import (StorageError, is_storage_error, new_hdf5, remove_stale_temps,
                                 replace_durably, temp_name)

FORMAT = "c3d_extract.featurefile.reader"
FORMAT_VERSION = 1
_STR = h5py.string_dtype("utf-8")
_PER_VIDEO = {"num_frames": np.int64, "num_clips": np.int64, "fps": np.float64,
              "height": np.int32, "width": np.int32, "status": _STR, "decoder": _STR}
# facts that files and journals written before them do not have, and what they read as
_LATER_FACTS = {"decoder": ""}
_FAILURE_FIELDS = ("video", "stage", "error")


class StoreError(Exception):
    """The output file cannot be used for this run (other settings, not ours, locked, corrupt)."""


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def _strings(dataset: h5py.Dataset) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in dataset[()]]


def _attr(value):
    """An attribute value h5py and MATLAB read back as is: str, int, float; JSON for the rest."""
    if isinstance(value, str):
        return str(value)  # plain str: h5py rejects str subclasses such as torch's TorchVersion
    return value if isinstance(value, (int, float)) else json.dumps(value)


def _replace_atomically(tmp: str, path: str) -> None:
    """Rename `tmp` durably over `path`; on an error `tmp` is removed and `path` left as it was."""
    try:
        replace_durably(tmp, path)
    except OSError:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class FeatureStore:
    """Adds finished videos and failures to a feature file, crash-safely, and knows what it holds."""

    def __init__(self, path: str, journal: Journal, provenance: Mapping):
        self.path = path
        self._journal = journal
        self._provenance = dict(provenance)
        with h5py.File(path, "r") as h5:
            settings = json.loads(h5.attrs["settings"])
            self.per_clip = bool(settings.get("per_clip"))
            self.segments = int(settings.get("segments", 0) or 0)
            self.clip_len = int(settings.get("clip_len", 16))
            self.layers: list[str] = list(h5["features"])
            self.shapes = {n: tuple(int(v) for v in h5["features"][n].attrs["clip_shape"]) for n in self.layers}
            self.done: set[str] = set(_strings(h5["videos"]))
            self.failed: dict[str, tuple[str, str]] = {
                video: (stage, error) for video, stage, error in zip(
                    *(_strings(h5["failures"][name]) for name in _FAILURE_FIELDS))}
        for record in journal:  # replay what the last run did not fold in
            key = record.meta["key"]
            if record.kind == VIDEO:
                self.done.add(key)
                self.failed.pop(key, None)
            elif record.kind == FAILURE and key not in self.done:
                self.failed[key] = (record.meta["stage"], record.meta["error"])

    @classmethod
    def open(cls, path: str, settings: Mapping, layer_shapes: Mapping[str, tuple[int, ...]],
             provenance: Mapping, overwrite: bool = False,
             warn: Optional[Callable[[str], None]] = None) -> "FeatureStore":
        """Create `path`, or reopen it to add videos when it was written with the same settings.

        An existing file is replaced only with `overwrite`; one with other settings, or that is not a
        feature file, is refused with a StoreError that says what differs. A full or failing disk
        raises StorageError. `warn` (default: warnings.warn) hears of damaged journal records.
        """
        exists = os.path.exists(path)
        if exists and not overwrite:
            cls.check_existing(path, settings)
        try:
            journal = Journal(journal_path(path))
        except JournalBusy:
            raise StoreError(f"{path}: another c3d-extract run is writing this file (two runs cannot "
                             f"write one file; use another output, or --shard and merge)") from None
        except OSError as exc:
            if is_storage_error(exc):
                raise StorageError(journal_path(path), exc, f"{path} is unchanged") from None
            raise StoreError(f"{path}: cannot create the feature file: {exc}") from None
        remove_stale_temps(path)  # a fold killed before its rename; the journal's lock says no run is writing
        if journal.damage:
            (warn or _warn)(f"{journal.path}: {journal.damage_report()}")
        if overwrite or not exists:
            if overwrite and journal.records:
                journal.remove()
                journal = Journal(journal_path(path))
            tmp = temp_name(path)
            try:
                with new_hdf5(tmp, reserve=file_bytes(layer_shapes, 0)) as (h5, _):
                    cls._create_layout(h5, settings, layer_shapes, provenance)
                _replace_atomically(tmp, path)
            except OSError as exc:
                journal.close()
                if is_storage_error(exc):
                    raise StorageError(tmp, exc, f"nothing was written ({path} is as it was)") from None
                raise StoreError(f"{path}: cannot create the feature file: {exc}") from None
        return cls(path, journal, provenance)

    @staticmethod
    def check_existing(path: str, settings: Mapping) -> None:
        """Raise StoreError unless `path` is a feature file written with these settings."""
        try:
            h5 = h5py.File(path, "r")
        except (OSError, RuntimeError) as exc:
            raise StoreError(f"{path}: exists but is not a readable HDF5 file ({exc}); "
                             f"use --overwrite to replace it") from None
        with h5:
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
                       provenance: Mapping, rows: int = 0, failures: int = 0) -> None:
        h5.attrs["format"] = FORMAT
        h5.attrs["format_version"] = FORMAT_VERSION
        h5.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        h5.attrs["settings"] = json.dumps(dict(settings), sort_keys=True)
        for key, value in {**settings, **provenance}.items():
            h5.attrs[key] = _attr(value)
        h5.create_dataset("videos", (rows,), maxshape=(None,), dtype=_STR, chunks=(1024,))
        for name, dtype in _PER_VIDEO.items():
            h5.create_dataset(name, (rows,), maxshape=(None,), dtype=dtype, chunks=(1024,))
        features = h5.create_group("features")
        for layer, shape in layer_shapes.items():
            dim = int(np.prod(shape))
            chunk_rows = max(1, 2**20 // (4 * dim))  # ~1 MiB chunks: one chunk fits h5py's default cache
            ds = features.create_dataset(layer, (rows, dim), maxshape=(None, dim), dtype=np.float32,
                                         chunks=(chunk_rows, dim))
            ds.attrs["clip_shape"] = np.asarray(shape, dtype=np.int64)
        group = h5.create_group("failures")
        for name in _FAILURE_FIELDS:
            group.create_dataset(name, (failures,), maxshape=(None,), dtype=_STR, chunks=(256,))
        segments = int(settings.get("segments", 0) or 0)
        if segments:
            pooled = h5.create_group("segments")
            for layer, shape in layer_shapes.items():
                dim = int(np.prod(shape))
                pooled.create_dataset(layer, (rows, segments, dim), maxshape=(None, segments, dim),
                                      dtype=np.float32, chunks=(1, segments, dim))
            pooled.attrs["rule"] = "UCF-Crime: round(linspace(1, N, K+1)) boundaries, mean, L2 (c3d_extract/pooling.py)"
        if settings.get("per_clip"):
            h5.create_dataset("clip_offset", (rows,), maxshape=(None,), dtype=np.int64, chunks=(1024,))
            clips = h5.create_group("clips")
            clips.attrs["index"] = "clips of video i: rows clip_offset[i] : clip_offset[i] + num_clips[i]"
            for layer, shape in layer_shapes.items():
                dim = int(np.prod(shape))
                clips.create_dataset(layer, (0, dim), maxshape=(None, dim), dtype=np.float32,
                                     chunks=(max(1, 2**20 // (4 * dim)), dim))
            for name, dtype in (("first_frame", np.int64), ("last_frame", np.int64), ("time", np.float64)):
                clips.create_dataset(name, (0,), maxshape=(None,), dtype=dtype, chunks=(4096,))

    @property
    def wants_clips(self) -> bool:
        """True when the file keeps per-clip rows or segments: add_video then needs `clips`."""
        return self.per_clip or self.segments > 0

    def space_needed(self, videos: int) -> int:
        """Bytes a run adding `videos` videos needs on the output's disk: their journal records, then
        the new file written beside the old one (per-clip rows, unknown before decoding, not counted)."""
        values = sum(int(np.prod(shape)) for shape in self.shapes.values()) * (1 + self.segments)
        journal = videos * (4 * values + 512)  # the float32 values, the header and the JSON facts
        rows = len(self.done) + videos
        return journal + file_bytes(self.shapes, rows, len(self.failed), segments=self.segments, text=64 * rows)

    def add_video(self, key: str, features: Mapping[str, np.ndarray], facts: Mapping, clips=None) -> None:
        """Record one finished video durably (journal + fsync); it is in the file after the fold.

        `clips` (a pipeline.ClipRows, in time order) is needed when the file keeps per-clip rows or
        segments."""
        if key in self.done:
            raise ValueError(f"{key} is already in {self.path}")
        missing = [layer for layer in self.layers if layer not in features]
        if missing:
            raise ValueError(f"{key}: no values for layer(s) {', '.join(missing)}")
        arrays = {layer: features[layer] for layer in self.layers}
        extra = {}
        if self.wants_clips:
            if clips is None:
                raise ValueError(f"{key}: {self.path} keeps per-clip rows or segments; pass the clips")
            if self.per_clip:
                arrays.update({f"clips/{layer}": clips.layers[layer] for layer in self.layers})
                extra["clip_starts"] = [int(v) for v in clips.starts]
            if self.segments:
                arrays.update({f"segments/{layer}": segment_pool(clips.layers[layer], self.segments)
                               for layer in self.layers})
        facts = {**_LATER_FACTS, **facts}
        try:
            self._journal.append_video(key, {n: facts[n] for n in _PER_VIDEO}, arrays, extra)
        except OSError as exc:
            raise self._storage_error(self._journal.path, exc) from None
        self.done.add(key)
        self.failed.pop(key, None)

    def add_failure(self, key: str, stage: str, error: str) -> None:
        """Record a video that could not be processed (replacing an older record of it)."""
        try:
            self._journal.append_failure(key, stage, error)
        except OSError as exc:
            raise self._storage_error(self._journal.path, exc) from None
        self.failed[key] = (stage, error)

    def fold(self) -> None:
        """Write the old rows and the journal's into a new file, sorted by key, and swap it in."""
        videos = {r.meta["key"]: r for r in self._journal if r.kind == VIDEO}
        tmp = temp_name(self.path)
        try:
            with h5py.File(self.path, "r") as old:
                old_source = H5Rows(old)
                journal_source = JournalRows(self._journal, videos)
                old_keys = set(old_source.keys)
                order = [(k, old_source, i) for i, k in enumerate(old_source.keys)]
                order += [(k, journal_source, k) for k in videos if k not in old_keys]
                failures = [(k, *v) for k, v in self.failed.items() if k not in self.done]
                attrs = {**dict(old.attrs), "last_run": json.dumps(self._provenance, default=str)}
                write_sorted(tmp, attrs, old_source.shapes, order, failures)
            _replace_atomically(tmp, self.path)
        except OSError as exc:
            raise self._storage_error(tmp, exc) from None

    def _storage_error(self, path: str, exc: OSError) -> OSError | StorageError:
        """A storage fault as one line that says what is saved; other OSErrors as they are."""
        if not is_storage_error(exc):
            return exc
        videos = sum(1 for record in self._journal if record.kind == VIDEO)
        saved = f"{self.path} is unchanged"
        if videos:
            saved = f"{videos} finished video(s) are saved in {self._journal.path} ({saved})"
        return StorageError(path, exc, saved)

    def close(self) -> None:
        """Fold the journal into the file (if it holds anything) and remove it."""
        if self._journal is None:
            return
        if self._journal.records:
            self.fold()
        self._journal.remove()
        self._journal = None

    def __enter__(self) -> "FeatureStore":
        return self

    def release(self) -> None:
        """Let go of the journal without folding it: its records wait for the next run (an empty
        journal is removed: nothing to keep)."""
        if self._journal is not None:
            try:
                if not (self._journal.records or self._journal.damage):
                    os.unlink(self._journal.path)
            except OSError:
                pass  # an empty journal left behind is harmless: the next run uses it
            self._journal.close()
            self._journal = None

    def __exit__(self, kind, value, traceback) -> None:
        try:
            if not isinstance(value, StorageError):  # after one, a fold would fail too: the journal keeps all
                self.close()
        finally:
            self.release()



class H5Rows:
    """Rows of an existing feature file, as a source for write_sorted."""

    def __init__(self, h5: h5py.File):
        self.h5 = h5
        self.keys = _strings(h5["videos"])
        self.shapes = {n: tuple(int(v) for v in h5["features"][n].attrs["clip_shape"]) for n in h5["features"]}
        self._facts = {name: h5[name][()] if name in h5 else np.full(len(self.keys), _LATER_FACTS[name], object)
                       for name in _PER_VIDEO}
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
        return facts[name] if name in facts else _LATER_FACTS[name]

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
        chunk_rows = max(1, 2**20 // (4 * dim))
        total += _chunked(rows, chunk_rows, 4 * dim) + rows * segments * dim * 4
        total += _chunked(clips, chunk_rows, 4 * dim) if clips else 0
        chunks += -(-rows // chunk_rows) + rows * bool(segments) + -(-clips // chunk_rows)
    if clips:
        total += 3 * _chunked(clips, 4096, 8) + _chunked(rows, 1024, 8)
        chunks += 3 * -(-clips // 4096) + -(-rows // 1024)
    total += (len(_PER_VIDEO) + 1) * _chunked(rows, 1024, 16) + len(_FAILURE_FIELDS) * _chunked(failures, 256, 16)
    chunks += (len(_PER_VIDEO) + 1) * -(-rows // 1024) + len(_FAILURE_FIELDS) * -(-failures // 256)
    strings = rows * (1 + sum(dtype is _STR for dtype in _PER_VIDEO.values())) + len(_FAILURE_FIELDS) * failures
    total += text + 24 * strings + 4096 * (1 + strings // 256)  # heap objects and their collections
    return int(1.01 * (total + 128 * chunks)) + 2**16  # chunk index entries; superblock, headers, nodes


def _reserve_for(order: list, failures: list, shapes: Mapping[str, tuple[int, ...]], settings: Mapping) -> int:
    """file_bytes() for rows about to be written by write_sorted."""
    strings = [name for name, dtype in _PER_VIDEO.items() if dtype is _STR]
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
        FeatureStore._create_layout(new, settings, shapes, {}, rows=len(order), failures=len(failures))
        for key, value in attrs.items():
            if key not in ("created", "format", "format_version"):
                new.attrs[key] = value
        new.attrs["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if order:
            new["videos"][:] = [k for k, _, _ in order]
            for name in _PER_VIDEO:  # a column at a time: no per-video dicts, memory O(N) scalars
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
        for i, name in enumerate(_FAILURE_FIELDS):
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


@dataclass
class MergeReport:
    videos: int
    duplicates: list[str]          # keys found in several parts with identical features (kept once)
    conflicts: list[str]           # keys found in several parts with different features (first kept)
    missing_shards: list[int]      # shard indices of I/N that no part covers
    failures: int


def merge(out: str, parts: list[str], overwrite: bool = False) -> MergeReport:
    """Combine feature files of one setting (shards of a job) into `out`, sorted by key.

    Parts with other settings (model, weights, layers, clip settings, precision) are refused; the
    `shard` setting alone may differ and is dropped. Duplicates and missing shards are reported.
    """
    if os.path.exists(out) and not overwrite:
        raise StoreError(f"{out}: exists; use --overwrite to replace it")
    if not parts:
        raise StoreError("no part to merge")
    remove_stale_temps(out)  # a merge killed before its rename
    files = []
    try:
        for part in parts:
            if os.path.exists(journal_path(part)):
                raise StoreError(f"{part}: has a journal from a run that did not finish; run that command "
                                 f"again to complete it before merging")
            try:
                h5 = h5py.File(part, "r")
            except OSError as exc:
                raise StoreError(f"{part}: not a readable HDF5 file ({exc})") from None
            files.append(h5)
            if h5.attrs.get("format") != FORMAT:
                raise StoreError(f"{part}: not a c3d_extract feature file")
        settings = [json.loads(h5.attrs["settings"]) for h5 in files]
        shards = [s.pop("shard", None) for s in settings]
        for part, setting in zip(parts[1:], settings[1:]):
            diffs = [f"{k} {settings[0].get(k)!r} vs {setting.get(k)!r}"
                     for k in sorted(set(settings[0]) | set(setting)) if settings[0].get(k) != setting.get(k)]
            if diffs:
                raise StoreError(f"{part}: other settings than {parts[0]} ({'; '.join(diffs)}); not merged")
        sources = [H5Rows(h5) for h5 in files]
        order, seen, duplicates, conflicts = [], {}, [], []
        for source in sources:
            for row, key in enumerate(source.keys):
                if key in seen:
                    first, first_row = seen[key]
                    same = all(np.array_equal(first.read(f"features/{n}", [first_row]),
                                              source.read(f"features/{n}", [row])) for n in source.shapes)
                    (duplicates if same else conflicts).append(key)
                    continue
                seen[key] = (source, row)
                order.append((key, source, row))
        failures = {}
        for h5 in files:
            for key, stage, error in zip(*(_strings(h5["failures"][n]) for n in _FAILURE_FIELDS)):
                if key not in seen:
                    failures.setdefault(key, (key, stage, error))
        counts = {int(s.split("/")[1]) for s in shards if s}
        missing: list[int] = []
        if len(counts) > 1:
            raise StoreError(f"the parts come from different shard counts: {sorted(counts)}")
        if counts:
            count = counts.pop()
            have = {int(s.split("/")[0]) for s in shards if s}
            missing = [i for i in range(count) if i not in have]
        attrs = {k: v for k, v in files[0].attrs.items() if k not in ("shard", "last_run")}
        attrs["settings"] = json.dumps(settings[0], sort_keys=True)
        attrs["merged_from"] = json.dumps([os.path.abspath(p) for p in parts])
        tmp = temp_name(out)
        try:
            write_sorted(tmp, attrs, sources[0].shapes, order, list(failures.values()))
            _replace_atomically(tmp, out)
        except OSError as exc:
            if is_storage_error(exc):
                raise StorageError(tmp, exc, f"nothing was written ({out} is as it was; the parts are "
                                             f"unchanged)") from None
            raise
    finally:
        for h5 in files:
            h5.close()
    return MergeReport(len(order), duplicates, conflicts, missing, len(failures))
