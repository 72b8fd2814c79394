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
from typing import Callable, Mapping, Optional

import h5py
import numpy as np

from c3d_extract.errors import Refused
from c3d_extract.featurefile.fold import H5Rows, JournalRows, file_bytes, write_sorted
from c3d_extract.featurefile.journal import Journal, JournalBusy
from c3d_extract.featurefile.journal_format import FAILURE, VIDEO, encode_video, journal_path
from c3d_extract.featurefile.pooling import segment_pool
from c3d_extract.featurefile.schema import (FAILURE_FIELDS, FORMAT, LATER_FACTS, PER_VIDEO, create_layout,
                                            differences, read_settings, settings_dict, strings)
from c3d_extract.settings import RunSettings
from c3d_extract.storage import (StorageError, is_storage_error, new_hdf5, remove_stale_temps, replace_atomically,
                                 temp_name)

CLEARED = "cleared"  # the stage of a journal record that takes an earlier failure back (clear_failure)


@dataclass
class ClipRows:
    """One video's clips in time order: their first frames and each layer's (clips, D) activations."""

    starts: list[int]
    layers: dict[str, np.ndarray]


def stored_facts(facts: Mapping) -> dict:
    """The per-video facts a row of the file holds, those decided later filled in with their default."""
    return {name: facts[name] if name in facts else LATER_FACTS[name] for name in PER_VIDEO}


def video_record(key: str, features: Mapping[str, np.ndarray], facts: Mapping, layers: list[str]) -> bytes:
    """The journal record FeatureStore.add_video would append for a video (of a file that keeps
    neither clips nor segments), made anywhere, for FeatureStore.add_record."""
    return encode_video(key, stored_facts(facts), {layer: features[layer] for layer in layers})


class StoreError(Refused):
    """The output file cannot be used for this run (other settings, not ours, locked, corrupt)."""


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


class FeatureStore:
    """Adds finished videos and failures to a feature file, crash-safely, and knows what it holds."""

    def __init__(self, path: str, journal: Journal, provenance: Mapping):
        self.path = path
        self._journal = journal
        self._provenance = dict(provenance)
        with h5py.File(path, "r") as h5:
            settings = read_settings(h5)
            self.per_clip = bool(settings.get("per_clip"))
            self.segments = int(settings.get("segments", 0) or 0)
            self.clip_len = int(settings.get("clip_len", 16))
            self.layers: list[str] = list(h5["features"])
            self.shapes = {n: tuple(int(v) for v in h5["features"][n].attrs["clip_shape"]) for n in self.layers}
            self.done: set[str] = set(strings(h5["videos"]))
            self.failed: dict[str, tuple[str, str]] = {
                video: (stage, error) for video, stage, error in zip(
                    *(strings(h5["failures"][name]) for name in FAILURE_FIELDS))}
        for record in journal:  # replay what the last run did not fold in
            key = record.meta["key"]
            if record.kind == VIDEO:
                self.done.add(key)
                self.failed.pop(key, None)
            elif record.kind == FAILURE and key not in self.done:
                if record.meta["stage"] == CLEARED:
                    self.failed.pop(key, None)
                else:
                    self.failed[key] = (record.meta["stage"], record.meta["error"])

    @classmethod
    def open(cls, path: str, settings: "RunSettings | Mapping", layer_shapes: Mapping[str, tuple[int, ...]],
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
                    create_layout(h5, settings, layer_shapes, provenance)
                replace_atomically(tmp, path)
            except OSError as exc:
                journal.close()
                if is_storage_error(exc):
                    raise StorageError(tmp, exc, f"nothing was written ({path} is as it was)") from None
                raise StoreError(f"{path}: cannot create the feature file: {exc}") from None
        return cls(path, journal, provenance)

    @staticmethod
    def check_existing(path: str, settings: "RunSettings | Mapping") -> None:
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
            stored = read_settings(h5)
        diffs = differences(stored, settings_dict(settings), "in the file", "now")
        if diffs:
            raise StoreError(f"{path}: exists with other settings ({'; '.join(diffs)}); "
                             f"use --overwrite to replace it or choose another output")

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

    def add_video(self, key: str, features: Mapping[str, np.ndarray], facts: Mapping, clips=None,
                  sync: bool = True) -> None:
        """Record one finished video durably (journal + fsync); it is in the file after the fold.

        `clips` (ClipRows, in time order) is needed when the file keeps per-clip rows or
        segments. Without `sync` the record waits for commit() (group commit)."""
        if key in self.done:
            raise ValueError(f"{key} is already in {self.path}")
        try:
            arrays = {layer: features[layer] for layer in self.layers}
        except KeyError:
            missing = [layer for layer in self.layers if layer not in features]
            raise ValueError(f"{key}: no values for layer(s) {', '.join(missing)}") from None
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
        try:
            self._journal.append_video(key, stored_facts(facts), arrays, extra, sync=sync)
        except OSError as exc:
            raise self._storage_error(self._journal.path, exc) from None
        self.done.add(key)
        self.failed.pop(key, None)

    def add_record(self, key: str, record: bytes, sync: bool = True) -> None:
        """Record one finished video given as its whole journal record (video_record, made where its
        descriptors were computed); as add_video, for files that keep neither clips nor segments."""
        if key in self.done:
            raise ValueError(f"{key} is already in {self.path}")
        if self.wants_clips:
            raise ValueError(f"{key}: {self.path} keeps per-clip rows or segments; use add_video")
        try:
            self._journal.append_record(record, sync=sync)
        except OSError as exc:
            raise self._storage_error(self._journal.path, exc) from None
        self.done.add(key)
        self.failed.pop(key, None)

    def add_failure(self, key: str, stage: str, error: str, sync: bool = True) -> None:
        """Record a video that could not be processed (replacing an older record of it)."""
        try:
            self._journal.append_failure(key, stage, error, sync=sync)
        except OSError as exc:
            raise self._storage_error(self._journal.path, exc) from None
        self.failed[key] = (stage, error)

    def commit(self, wait: bool = True) -> None:
        """Make the records added since the last commit durable with one fsync (group commit: those
        added without `sync`); without `wait` the fsync runs in the background and the
        group before it is durable on return. A failure takes the group's videos back (they were not
        written) and raises StorageError."""
        try:
            self._journal.sync(wait)
        except OSError as exc:
            for record in getattr(exc, "records", []):
                self.done.discard(record.meta["key"])
            raise self._storage_error(self._journal.path, exc) from None

    def clear_failure(self, key: str, sync: bool = True) -> None:
        """Forget the failure recorded for `key` (a tar shard that was read to its end this time)."""
        try:
            self._journal.append_failure(key, CLEARED, "", sync=sync)
        except OSError as exc:
            raise self._storage_error(self._journal.path, exc) from None
        self.failed.pop(key, None)

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
            replace_atomically(tmp, self.path)
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
        self.commit()  # a group not committed yet goes into the file too
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
                self._journal.sync()  # a group not committed yet is kept too
            except OSError:
                pass  # its records fail their checks, or were cut: their videos are redone
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
