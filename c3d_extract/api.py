"""The Python API: what the command line does, callable from a script or a notebook.

    from c3d_extract import api
    api.extract(["videos/"], "out.h5", model="res3d", weights="random")   # a feature file
    arrays = api.extract(["a.mp4", "b.mp4"], weights="random")           # or arrays in memory
    features = api.FeatureFile("out.h5")
    x, labels = features.matrix("res5b"), features.labels()
"""

from __future__ import annotations

import copy
import os
import random
import shlex
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from c3d_extract import __version__
from c3d_extract.errors import UsageError
from c3d_extract.extraction.inputs import VideoJob, find_videos, parse_extensions, shard_of
from c3d_extract.extraction.remote import FETCH_STAGE, redact_argv
from c3d_extract.extraction.pipeline import BatchRunner, Failed, Summary, extract as run_local
from c3d_extract.extraction.runtime import (Runtime, default_batch_size, default_device, default_workers,
                                            resolve_device, resolve_precision)
from c3d_extract.extraction.video import DECODERS
from c3d_extract.featurefile.reader import ClipSequence, FeatureFile
from c3d_extract.featurefile.writer import ClipRows, FeatureStore, StoreError
from c3d_extract.settings import RESIZE_PLACES, RunSettings, parse_shard
from c3d_extract.storage import StorageError
from c3d_extract.weights.load import RANDOM, WeightsError, load_weights, spec_mean

Warn = Callable[[str], None]


ENGINES = ("local", "ray")


@dataclass
class Extractor:
    """A network ready to run with the exact settings a feature file records."""

    network: BatchRunner          # the first replica
    settings: RunSettings
    provenance: dict
    shapes: dict
    replicas: list = field(default_factory=list)  # one BatchRunner per device, the first is `network`

    def workers(self, count: Optional[int] = None) -> int:
        """`count` decoder processes, or the default for the network's device (runtime.default_workers)."""
        return count or default_workers(self.network.runtime.device)


def check_engine(engine: str) -> None:
    """Refuse an unknown engine, or Ray where Ray Data is not installed, before anything is built or
    written."""
    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r}; use {' or '.join(ENGINES)}")
    if engine == "ray":
        from c3d_extract.extraction.engine_ray import require_ray

        require_ray()


def build_extractor(model: Optional[str] = None, layers: Optional[Sequence[str]] = None,
                    weights: Optional[str] = None, seed: int = 0, mean: Optional[str] = None,
                    clip_len: Optional[int] = None, stride: Optional[int] = None, frame_step: Optional[int] = None,
                    short: str = "loop", device: Optional[str] = None, precision: str = "auto",
                    batch_size: Optional[int] = None, per_clip: bool = False, segments: Optional[int] = None,
                    shard: Optional[str] = None, resize_on: str = "auto", keep_partial: bool = False,
                    engine: str = "local", quiet: bool = True,
                    warn: Warn = lambda message: None) -> Extractor:
    """Resolve weights, spec, layers, devices and precision into a network and the run's settings.

    `device` may list several devices ("cuda:0,cuda:1"): one replica each; None means
    $C3D_EXTRACT_DEVICE, else auto. `resize_on`: "workers" (decoder processes, OpenCV's resize:
    bit-exact), "device" (where the network runs: full frames travel, a float resize that is not
    bit-exact, README Limits), or "auto" (= workers: the default is faithful everywhere); under the
    Ray engine frames are always resized where they are decoded. `shard` is "I/N". `keep_partial`:
    a video that breaks while decoding keeps its frames before the damage. Raises UsageError for bad
    arguments and WeightsError for weights that cannot be had or do not fit."""
    check_engine(engine)
    if resize_on not in ("auto", *RESIZE_PLACES):
        raise UsageError(f"resize_on must be auto, {' or '.join(RESIZE_PLACES)}, not {resize_on!r}")
    place = "device" if resize_on == "device" and engine == "local" else "workers"
    device = device or default_device()
    targets = [resolve_device(name.strip()) for name in device.split(",")]
    if len({t.type for t in targets}) > 1:
        raise UsageError(f"--device {device}: mix of CPU and CUDA devices")
    runtime = Runtime(targets[0], resolve_precision(precision, targets[0]))
    shard_index = parse_shard(shard) if shard else None
    loaded = load_weights(weights, model, seed, quiet=quiet, warn=warn)
    spec = spec_mean(loaded.spec, mean)
    changes = {k: v for k, v in (("clip_len", clip_len), ("stride", stride), ("frame_step", frame_step))
               if v is not None}
    spec = spec.with_input(**changes) if changes else spec
    shapes = spec.layer_shapes(list(layers or spec.default_layers), net=loaded.net)
    if weights == RANDOM:
        warn(f"warning: random weights (seed {seed}): the features are meaningless outside smoke tests")
    # the device's float resize differs from OpenCV's by a grey level in some pixels, so a file
    # records where it resized and never mixes the two
    settings = RunSettings(model=spec.model, spec=spec.name, weights_sha256=loaded.identity, layers=tuple(shapes),
                           clips=spec.input.settings(), short_videos=short, precision=runtime.precision,
                           resize_on=place, shard=shard_index, per_clip=per_clip, segments=segments or 0,
                           keep_partial=keep_partial)
    provenance = {"c3d_extract_version": __version__, "weights": loaded.path,
                  "device": ",".join(str(t) for t in targets), "decoder": ", then ".join(DECODERS),
                  "torch_version": torch.__version__, "command_line": shlex.join(redact_argv(sys.argv))}
    batch = batch_size or default_batch_size(runtime.device)
    copies = [copy.deepcopy(loaded.net) for _ in targets[1:]]  # before the first is cast in place
    replicas = [BatchRunner(net, list(shapes), spec.input, Runtime(target, runtime.precision), batch, place == "device")
                for net, target in zip([loaded.net, *copies], targets)]
    return Extractor(replicas[0], settings, provenance, shapes, replicas)


def find_jobs(inputs: Sequence[str], root: Optional[str] = None, ext: Optional[str] = None,
              shard: Optional[tuple[int, int]] = None, warn: Warn = lambda message: None,
              storage_options: Optional[dict] = None) -> list[VideoJob]:
    """The videos of directories, files, URLs, prefixes, tar shards and @lists, keyed relative to
    `root`, optionally one shard (I, N) (RunSettings.shard). `storage_options` go to fsspec for URLs
    (e.g. {"endpoint_url": ...}); RemoteError when the store cannot be listed or reached."""
    extensions = parse_extensions(ext)
    jobs, problems = find_videos(inputs, root, extensions, storage_options)
    for path, problem in problems:
        warn(f"warning: {path}: {problem}")
    if not jobs:
        raise UsageError(f"no video found in {', '.join(inputs)} (extensions: {','.join(extensions)})")
    if shard:
        index, count = shard
        jobs = [job for job in jobs if shard_of(job.key, count) == index]
    return jobs


class Arrays:
    """An in-memory destination for extraction (what `extract(..., output=None)` returns)."""

    def __init__(self, layers: Sequence[str], keep_clips: bool = False):
        self.layers, self.wants_clips = list(layers), keep_clips
        self.rows: dict[str, dict[str, np.ndarray]] = {}
        self.clip_rows: dict[str, ClipRows] = {}
        self.failed: dict[str, tuple[str, str]] = {}

    def add_video(self, key: str, features: dict, facts: dict, clips: Optional[ClipRows] = None) -> None:
        self.rows[key] = features
        if clips is not None:
            self.clip_rows[key] = clips

    def add_failure(self, key: str, stage: str, error: str) -> None:
        self.failed[key] = (stage, error)

    def clear_failure(self, key: str) -> None:
        self.failed.pop(key, None)

    @property
    def keys(self) -> list[str]:
        return sorted(self.rows)

    def matrix(self, layer: Optional[str] = None) -> np.ndarray:
        """(N, D) rows in `keys` order."""
        layer = layer or self.layers[0]
        return np.stack([self.rows[k][layer] for k in self.keys]) if self.rows else np.zeros((0, 0), np.float32)


def extract(videos: Sequence[str], output: Optional[str] = None, *, root: Optional[str] = None,
            ext: Optional[str] = None, overwrite: bool = False, retry_failed: bool = False,
            workers: Optional[int] = None,
            timeout: float = 300.0, engine: str = "local", ray_address: Optional[str] = None,
            on_video: Optional[Callable[[str, Optional[Failed], Summary], None]] = None,
            warn: Warn = lambda message: None, storage_options: Optional[dict] = None,
            **options) -> "Summary | Arrays":
    """Extract descriptors of `videos` (paths, directories, URLs, tar shards, @lists). With `output`,
    into that feature file (resuming it; crash-safe) and return a Summary; without, return an `Arrays`
    in memory. `options` are those of build_extractor (model, layers, weights, ...)."""
    check_engine(engine)
    if output is None and engine != "local":
        raise UsageError("extracting to arrays runs the local engine; give `output` for --engine ray")
    extractor = build_extractor(warn=warn, engine=engine, **options)
    jobs = find_jobs(videos, root, ext, extractor.settings.shard, warn, storage_options)
    if output is None:
        sink = Arrays(extractor.network.layers, keep_clips=extractor.settings.wants_clips)
        run_local(jobs, extractor.replicas, sink, short=extractor.settings.short_videos,  # type: ignore[arg-type]
                  workers=extractor.workers(workers), timeout=timeout, keep_partial=extractor.settings.keep_partial,
                  storage=storage_options)
        return sink
    store, todo = open_output(output, extractor, jobs, overwrite, retry_failed)
    with store:
        return run_jobs(todo, extractor, store, workers, timeout, engine, ray_address, on_video, storage_options)


def open_output(output: str, extractor: Extractor, jobs: Sequence[VideoJob], overwrite: bool = False,
                retry_failed: bool = False, warn: Optional[Warn] = None) -> tuple[FeatureStore, list[VideoJob]]:
    """Open (or create) the run's feature file, and what the run still has to do there: the failed
    videos with `retry_failed`, else those not in the file and those whose download failed (the
    store's fault, not the video's). A tar shard is read again passing over the members written (and,
    without `retry_failed`, those that failed). Raises StoreError for a file with other settings (or
    not a feature file), StorageError for a full or failing disk."""
    store = FeatureStore.open(output, extractor.settings, extractor.shapes, extractor.provenance,
                              overwrite=overwrite, warn=warn)
    members = _members_by_shard(jobs, store)
    todo = []
    for job in jobs:
        if job.is_shard:
            done = {key for key in members.get(job.prefix, ()) if key in store.done or
                    (not retry_failed and store.failed.get(key, ("",))[0] != FETCH_STAGE)}
            failed = any(key in store.failed for key in members.get(job.prefix, ())) or job.key in store.failed
            if not retry_failed or failed:
                todo.append(VideoJob(job.key, job.path, job.members, frozenset(done)))
        elif retry_failed:
            if job.key in store.failed:
                todo.append(job)
        elif job.key not in store.done and store.failed.get(job.key, (FETCH_STAGE,))[0] == FETCH_STAGE:
            todo.append(job)
    return store, todo


def keys_of(jobs: Sequence[VideoJob], store: FeatureStore) -> set[str]:
    """The video keys of `jobs` as far as known: a tar shard counts its members the file holds (and
    itself while a failure of its own is recorded)."""
    keys = {job.key for job in jobs if not job.is_shard or job.key in store.failed}
    for members in _members_by_shard(jobs, store).values():
        keys |= members
    return keys


def _members_by_shard(jobs: Sequence[VideoJob], store: FeatureStore) -> dict[str, set[str]]:
    """The keys the file holds (written or failed) of each tar shard's members, by shard prefix."""
    prefixes = {job.prefix for job in jobs if job.is_shard}
    found: dict[str, set[str]] = {}
    if not prefixes:
        return found
    for key in (*store.done, *store.failed):
        at = key.find("/")
        while at != -1:
            if key[:at + 1] in prefixes:
                found.setdefault(key[:at + 1], set()).add(key)
                break
            at = key.find("/", at + 1)
    return found


def run_jobs(todo: Sequence[VideoJob], extractor: Extractor, store: FeatureStore, workers: Optional[int] = None,
             timeout: float = 300.0, engine: str = "local", ray_address: Optional[str] = None,
             on_video=None, storage_options: Optional[dict] = None,
             ray_connect_timeout: Optional[float] = None, vp8_check: bool = True) -> Summary:
    """Run the chosen engine over `todo` into an open store (`storage_options`: fsspec's, for URLs;
    `ray_connect_timeout`: seconds to join a Ray cluster, default engine_ray.CONNECT_TIMEOUT;
    `vp8_check`: a second, slice-threaded decode of VP8 streams, the one signal of their damage)."""
    check_engine(engine)
    settings = extractor.settings
    if engine == "ray":
        from c3d_extract.extraction.engine_ray import extract_ray

        return extract_ray(todo, extractor.network, store, short=settings.short_videos, address=ray_address,
                           on_video=on_video, timeout=timeout, keep_partial=settings.keep_partial,
                           storage=storage_options, vp8_check=vp8_check,
                           **({"connect_timeout": ray_connect_timeout} if ray_connect_timeout else {}))
    return run_local(todo, extractor.replicas or extractor.network, store, short=settings.short_videos,
                     workers=extractor.workers(workers), on_video=on_video, timeout=timeout,
                     keep_partial=settings.keep_partial, storage=storage_options, vp8_check=vp8_check)


@dataclass
class Verification:
    """What `verify` found: the largest difference and lowest cosine over the re-extracted rows."""

    sampled: int
    recomputed: int
    failed: int
    largest_difference: float
    lowest_cosine: float
    exact: bool  # fp32: rows must agree to 1e-5; a lower precision: cosine >= 0.999

    @property
    def reproduced(self) -> bool:
        if self.failed:
            return False
        return self.largest_difference <= 1e-5 if self.exact else self.lowest_cosine >= 0.999


def verify(output: str, jobs: Sequence[VideoJob], extractor: Extractor, count: int, seed: int = 0,
           workers: Optional[int] = None, timeout: float = 300.0,
           storage_options: Optional[dict] = None) -> Verification:
    """Re-extract a seeded sample of `count` of `jobs` that `output` holds and compare them with the
    stored rows; `output` is not changed. Raises StoreError when `output` is missing, has other
    settings, or holds none of the jobs."""
    if not os.path.exists(output):
        raise StoreError(f"{output}: no such feature file to verify")
    FeatureStore.check_existing(output, extractor.settings)
    network = extractor.network
    stored = FeatureFile(output)
    in_file = set(stored.keys)
    candidates = sorted((job for job in jobs if job.key in in_file), key=lambda job: job.key)
    if not candidates:
        raise StoreError(f"{output}: none of the input videos is in the file: nothing to verify")
    sample = random.Random(seed).sample(candidates, min(count, len(candidates)))
    sink = Arrays(network.layers)
    run_local(sample, network, sink, short=extractor.settings.short_videos,  # type: ignore[arg-type]
              workers=extractor.workers(workers),
              timeout=timeout, keep_partial=extractor.settings.keep_partial, storage=storage_options)
    worst_diff, worst_cos = 0.0, 1.0
    keys = list(sink.rows)
    for layer in network.layers:  # only the re-extracted rows are read, whatever the file's size
        for old, key in zip(stored.rows(keys, layer), keys):
            value = sink.rows[key][layer]
            worst_diff = max(worst_diff, float(np.abs(old - value).max()))
            worst_cos = min(worst_cos, float(np.dot(old, value)))  # unit rows
    return Verification(len(sample), len(sink.rows), len(sink.failed), worst_diff, worst_cos,
                        network.runtime.precision == "fp32")


__all__ = ["Arrays", "ClipSequence", "Extractor", "FeatureFile", "StorageError", "StoreError", "Verification",
           "WeightsError", "build_extractor", "check_engine", "extract", "find_jobs", "open_output", "run_jobs",
           "verify"]
