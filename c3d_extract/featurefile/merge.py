"""`merge`: feature files of one setting (the shards of a job) combined into one, sorted by key."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import h5py
import numpy as np

from c3d_extract.featurefile.fold import H5Rows, write_sorted
from c3d_extract.featurefile.journal_format import journal_path
from c3d_extract.featurefile.schema import FAILURE_FIELDS, FORMAT, differences, file_shard, read_settings, strings
from c3d_extract.featurefile.writer import StoreError
from c3d_extract.storage import StorageError, is_storage_error, remove_stale_temps, replace_atomically, temp_name


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
        settings = [read_settings(h5) for h5 in files]
        shards = [file_shard(s) for s in settings]
        for s in settings:
            s.pop("shard", None)
        for part, setting in zip(parts[1:], settings[1:]):
            diffs = differences(settings[0], setting, f"in {parts[0]}", f"in {part}")
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
            for key, stage, error in zip(*(strings(h5["failures"][n]) for n in FAILURE_FIELDS)):
                if key not in seen:
                    failures.setdefault(key, (key, stage, error))
        counts = {count for _, count in filter(None, shards)}
        missing: list[int] = []
        if len(counts) > 1:
            raise StoreError(f"the parts come from different shard counts: {sorted(counts)}")
        if counts:
            count = counts.pop()
            have = {index for index, _ in filter(None, shards)}
            missing = [i for i in range(count) if i not in have]
        attrs = {k: v for k, v in files[0].attrs.items() if k not in ("shard", "last_run")}
        attrs["settings"] = json.dumps(settings[0], sort_keys=True)
        attrs["merged_from"] = json.dumps([os.path.abspath(p) for p in parts])
        tmp = temp_name(out)
        try:
            write_sorted(tmp, attrs, sources[0].shapes, order, list(failures.values()))
            replace_atomically(tmp, out)
        except OSError as exc:
            if is_storage_error(exc):
                raise StorageError(tmp, exc, f"nothing was written ({out} is as it was; the parts are "
                                             f"unchanged)") from None
            raise
    finally:
        for h5 in files:
            h5.close()
    return MergeReport(len(order), duplicates, conflicts, missing, len(failures))
