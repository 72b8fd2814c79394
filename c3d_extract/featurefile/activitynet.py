"""A per-clip feature file -> the ActivityNet C3D layout (README "The ActivityNet format").

The release (challenge 2016) is one HDF5 file with a group per video, `v_<youtube id>`, holding
`c3d_features` (clips, 500): C3D fc7 of 16-frame clips every 8 frames, reduced by PCA. Localisation
and captioning code reads `f[video]["c3d_features"][:]`, and some iterates `f.keys()` as the
videos, so the root holds video groups only; provenance goes to attributes, and each clip's first
frame and time go beside `c3d_features` in its group.

The export streams: clip rows are read in blocks of about 64 MiB, never the whole file; the output
is written to OUT.tmp-PID and renamed over OUT, so an interrupted export leaves no half file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Callable, Iterator, Optional

import h5py
import numpy as np

from c3d_extract import __version__
from c3d_extract.errors import UsageError
from c3d_extract.featurefile import pca as pca_file
from c3d_extract.featurefile.reader import FeatureFile
from c3d_extract.featurefile.schema import attr_value
from c3d_extract.storage import (StorageError, is_storage_error, new_hdf5, remove_stale_temps, replace_durably,
                                 temp_name)

# the release's protocol (README "The ActivityNet format", with its sources)
LAYER = "fc7"
SPEC = "c3d-sports1m"
CLIPS = {"clip_len": 16, "stride": 8, "frame_step": 1}
DIM = 500
MAKE = "c3d-extract videos/ clips.h5 --per-clip --layers fc7"
DATASET = "c3d_features"
ID_RULES = ("stem", "key")
BLOCK_BYTES = 64 << 20


@dataclass(frozen=True)
class ExportOptions:
    """How a per-clip file is exported in the ActivityNet layout (`export --format activitynet`'s
    flags), validated once: the layer, the group names (`ids` rule after `id_prefix`), the PCA
    (`pca` components fitted and written to `pca_file`, or `pca_from` an existing projection),
    whether another clip protocol is exported anyway, and whether OUT (and the PCA file) may be
    replaced."""

    layer: str = LAYER
    ids: str = "stem"                 # ID_RULES
    id_prefix: str = ""
    pca: Optional[int] = None         # components: fitted here, or the leading ones of `pca_from`
    pca_from: Optional[str] = None
    pca_file: Optional[str] = None    # where `pca` writes its fit (default: default_pca_path(OUT))
    any_protocol: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.ids not in ID_RULES:
            raise UsageError(f"--ids must be one of {', '.join(ID_RULES)}, not {self.ids!r}")
        if self.pca is not None and self.pca < 1:
            raise UsageError(f"--pca {self.pca}: must be at least 1")
        if self.pca_file and (self.pca is None or self.pca_from):
            raise UsageError("--pca-file names where --pca writes its fit; it needs --pca N without "
                             "--pca-from")

    def pca_written(self, output: str) -> Optional[str]:
        """Where this export writes a fitted PCA (None when it fits none)."""
        return None if self.pca is None or self.pca_from else self.pca_file or default_pca_path(output)


@dataclass
class ExportReport:
    """What an export wrote."""

    output: str
    videos: int
    clips: int
    dim: int
    pca_written: Optional[str] = None
    warnings: list[str] = field(default_factory=list)


def video_ids(keys: list[str], rule: str = "stem", prefix: str = "", source: str = "") -> list[str]:
    """Group names for `keys`: `stem` (the file name without folders and extension: `v_X.mp4` ->
    `v_X`) or `key` (the whole key without extension), after `prefix`. Two keys with one id, or an id
    with a '/' (HDF5 would nest it), are a UsageError."""
    if rule not in ID_RULES:
        raise UsageError(f"--ids must be one of {', '.join(ID_RULES)}, not {rule!r}")
    path = (lambda k: PurePosixPath(k).stem) if rule == "stem" else (lambda k: str(PurePosixPath(k).with_suffix("")))
    ids = [prefix + path(key) for key in keys]
    seen: dict[str, str] = {}
    for key, name in zip(keys, ids):
        if "/" in name or name in (".", ""):
            raise UsageError(f"{source}: video {key!r} would be group {name!r}; HDF5 would nest it "
                             f"(use --ids stem)")
        if name in seen:
            raise UsageError(f"{source}: videos {seen[name]!r} and {key!r} would both be group {name!r} "
                             f"(use --ids key, or rename one)")
        seen[name] = key
    return ids


def check_protocol(path: str, settings: dict, layer: str, any_protocol: bool) -> list[str]:
    """The release's protocol against the file's settings: a clip length, stride or frame step that
    differs is a UsageError naming the command that makes a right file (unless `any_protocol`); what
    cannot be checked, another layer or another model are returned as warnings."""
    notes = []
    differ = [f"{k} {settings[k]}" for k, v in CLIPS.items() if settings.get(k) is not None and settings[k] != v]
    unknown = [k for k in CLIPS if settings.get(k) is None]
    if differ:
        message = (f"{path}: made with {', '.join(differ)}; the ActivityNet release has 16-frame clips every "
                   f"8 frames (clip_len 16, stride 8, frame_step 1): make one with `{MAKE}`")
        if not any_protocol:
            raise UsageError(message + ", or pass --any-protocol to export it anyway")
        notes.append(message + " (exported anyway: --any-protocol)")
    if unknown:
        notes.append(f"{path}: records no {', '.join(unknown)} (an imported file?): its clips cannot be checked "
                     f"against the release's 16 frames every 8")
    if layer != LAYER:
        notes.append(f"{path}: layer {layer}: the release is {LAYER} (the official PCA applies to fc7 only)")
    spec = settings.get("spec")
    if spec != SPEC:
        notes.append(f"{path}: model {spec or 'unknown'}: the release is C3D Sports-1M ({SPEC})")
    return notes


def _blocks(offsets: np.ndarray, counts: np.ndarray, block_rows: int) -> Iterator[tuple[int, int]]:
    """(first video, end video): runs of videos whose clip rows are contiguous, about `block_rows`
    rows each (a longer video is a run of its own)."""
    i = 0
    while i < len(counts):
        j, rows = i + 1, int(counts[i])
        while (j < len(counts) and rows + counts[j] <= block_rows
               and offsets[j] == offsets[j - 1] + counts[j - 1]):
            rows += int(counts[j])
            j += 1
        yield i, j
        i = j


def _rows(dataset: h5py.Dataset, block_rows: int) -> Iterator[np.ndarray]:
    for start in range(0, dataset.shape[0], block_rows):
        yield dataset[start: start + block_rows]


def write_hdf5(path: str, fill: Callable[[h5py.File, Callable[[], None]], None], reserve: int = 0) -> None:
    """Write a new HDF5 file at `path` through PATH.tmp-PID, renamed over `path` once whole and synced;
    fill(h5, check) writes it (check() raises the first write error). A full or failing disk is a
    StorageError (one line); on any error nothing is left but what `path` was."""
    remove_stale_temps(path)
    tmp = temp_name(path)
    try:
        with new_hdf5(tmp, reserve) as (h5, check):
            fill(h5, check)
        replace_durably(tmp, path)
    except OSError as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if is_storage_error(exc):
            was = "is as it was" if os.path.exists(path) else "was not written"
            raise StorageError(tmp, exc, f"{path} {was}") from None
        raise


def default_pca_path(output: str) -> str:
    """Where `--pca` writes its projection: OUT's name with `.pca.hdf5` (`anet.hdf5` -> `anet.pca.hdf5`)."""
    root, ext = os.path.splitext(output)
    return root + ".pca" + (ext or ".hdf5")


def export_activitynet(path: str, output: str, options: ExportOptions = ExportOptions(),
                       warn: Callable[[str], None] = lambda message: None) -> ExportReport:
    """Every video of the per-clip file `path` -> a group `<id>/c3d_features` (clips, D) float32 in
    `output`, with `clip_first_frame` and `clip_time` beside it. `options.pca` fits a PCA with that
    many components on every clip row and writes it to `options.pca_file` (default:
    default_pca_path); `options.pca_from` applies an existing one (this tool's or the official
    file; `pca` then keeps its leading components). Refusals are UsageErrors; a full disk is a
    StorageError."""
    layer, pca, pca_from = options.layer, options.pca, options.pca_from
    features = FeatureFile(path)
    if not features.has_clips:
        raise UsageError(f"{path}: has no per-clip rows; the ActivityNet format needs every clip's {layer}: make "
                         f"one with `{MAKE}`")
    with h5py.File(path, "r") as f:
        clip_layers = [name for name in f["clips"] if isinstance(f["clips"][name], h5py.Dataset)
                       and f["clips"][name].ndim == 2]
    if layer not in clip_layers:
        raise UsageError(f"{path}: has no per-clip {layer} (its per-clip layers: {', '.join(clip_layers) or 'none'}); "
                         f"make one with `{MAKE}`")
    if os.path.exists(output) and not options.overwrite:
        raise UsageError(f"{output}: exists; use --overwrite to replace it")
    written = options.pca_written(output)
    if written and os.path.exists(written) and not options.overwrite:
        raise UsageError(f"{written}: exists; use --overwrite to replace it (or --pca-file to name another)")
    settings = json.loads(features.attrs.get("settings", "{}"))
    notes = check_protocol(path, settings, layer, options.any_protocol)
    for note in notes:
        warn(note)
    names = video_ids(features.keys, options.ids, options.id_prefix, path)

    with h5py.File(path, "r") as f:
        source = f["clips"][layer]
        block_rows = max(1, BLOCK_BYTES // (4 * source.shape[1]))
        if pca_from:
            projection = pca_file.load(pca_from, pca)
        elif written:
            projection = pca_file.fit(_rows(source, block_rows), pca, {
                "fitted_on": f"every clip row of {os.path.abspath(path)}", "layer": layer,
                "normalisation": "none: the raw per-clip activations (after ReLU), as stored",
                "source_settings": json.dumps(settings, sort_keys=True), "c3d_extract_version": __version__})
            pca_file.save(projection, written, write_hdf5)
        else:
            projection = None
        if projection is not None and projection.input_dim != source.shape[1]:
            raise UsageError(f"{pca_from}: projects {projection.input_dim} values; {path}'s {layer} has "
                             f"{source.shape[1]}")
        dim = projection.dim if projection is not None else int(source.shape[1])
        attrs = _provenance(path, settings, features.attrs, options, notes, projection, written)
        offsets, counts = f["clip_offset"][()], f["num_clips"][()]
        frames_of, fps, status = f["num_frames"][()], f["fps"][()], f["status"].asstr()[()]

        def fill(out: h5py.File, check: Callable[[], None]) -> None:
            for key, value in attrs.items():
                out.attrs[key] = attr_value(value)
            for first, end in _blocks(offsets, counts, block_rows):
                row, stop = int(offsets[first]), int(offsets[end - 1] + counts[end - 1])
                block = source[row:stop]
                frames, times = f["clips/first_frame"][row:stop], f["clips/time"][row:stop]
                values = projection.project(block) if projection is not None else block.astype(np.float32)
                for i in range(first, end):
                    part = slice(int(offsets[i]) - row, int(offsets[i] + counts[i]) - row)
                    group = out.create_group(names[i])
                    group.create_dataset(DATASET, data=values[part])
                    group.create_dataset("clip_first_frame", data=frames[part])
                    group.create_dataset("clip_time", data=times[part])
                    group.attrs["key"] = features.keys[i]
                    group.attrs["num_frames"] = int(frames_of[i])
                    group.attrs["fps"] = float(fps[i])
                    group.attrs["status"] = str(status[i])
                check()

        total = int(counts.sum())
        write_hdf5(output, fill, reserve=total * (4 * dim + 16))
    return ExportReport(output, len(names), total, dim, written, notes)


def _provenance(path: str, settings: dict, attrs: dict, options: ExportOptions, notes: list[str],
                projection: Optional[pca_file.PCA], written: Optional[str]) -> dict:
    ids, prefix = options.ids, options.id_prefix
    values = {"format": "ActivityNet C3D (group per video, c3d_features (clips, D) float32)",
              "layer": options.layer,
              "normalisation": "none: raw per-clip activations (after ReLU) before the PCA",
              "source": os.path.abspath(path), "source_settings": json.dumps(settings, sort_keys=True),
              "ids": f"{ids}{f', prefix {prefix!r}' if prefix else ''}",
              "clip_times": "clip_first_frame (0-based frame) and clip_time (seconds) beside c3d_features",
              "protocol_notes": json.dumps(notes), "c3d_extract_version": __version__,
              "weights": str(attrs.get("weights", "")), "mean": str(settings.get("mean", ""))}
    if projection is None:
        values["pca"] = "none"
    else:
        values["pca"] = f"{projection.dim} components, centred, not whitened"
        values["pca_file"] = written and os.path.abspath(written) or projection.provenance.get("pca_file", "")
        values["pca_provenance"] = json.dumps(projection.provenance, default=str, sort_keys=True)
    return values
