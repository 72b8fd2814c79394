"""The Python API: what the command line does, callable from a script or a notebook.

    from c3d_extract import api
    api.extract(["videos/"], "out.h5", model="res3d", weights="random")   # a feature file
    arrays = api.extract(["a.mp4", "b.mp4"], weights="random")           # or arrays in memory
    features = api.FeatureFile("out.h5")
    x, labels = features.matrix("res5b"), features.labels()
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
import shlex
import sys
from dataclasses import dataclass, field
from typing import Callable, Collection, Optional, Sequence

import numpy as np
import torch

from c3d_extract import __version__
from c3d_extract.extraction.inputs import VIDEO_EXTENSIONS, VideoJob, find_jobs, shard_prefix
from c3d_extract.extraction.ray_logs import QuietRay
from c3d_extract.extraction.remote import FETCH_STAGE, redact, redact_argv
from c3d_extract.extraction.collector import Failed, OnVideo, Sink, Summary
from c3d_extract.extraction.pipeline import BatchRunner, extract as run_local
from c3d_extract.extraction.devices import DEVICE_ENV, device_defaults
from c3d_extract.extraction.plan import RunPlan
from c3d_extract.extraction.runtime import Runtime
from c3d_extract.extraction.early import (EarlyStart, all_to_do, start as start_early, stop as stop_early,
                                          take as take_early)
from c3d_extract.extraction.workers import DecodePool, prestart as start_decoders
from c3d_extract.extraction.video import DECODERS
from c3d_extract.extraction.nvdec import NVDEC
from c3d_extract.featurefile.reader import ClipSequence, FeatureFile
from c3d_extract.featurefile.journal_format import decode_video
from c3d_extract.featurefile.writer import ClipRows, FeatureStore, StoreError
from c3d_extract.options import ENGINES, ExtractOptions
from c3d_extract.settings import RunSettings
from c3d_extract.storage import StorageError
from c3d_extract.models.registry import MODEL_NAMES, MODELS
from c3d_extract.weights.load import RANDOM, WeightsError, load_weights, spec_mean
from c3d_extract.weights.manifest import cache_dir

Warn = Callable[[str], None]


@dataclass
class Extractor:
    """A network ready to run with the exact settings a feature file records, and the run's plan."""

    network: BatchRunner          # the first replica
    settings: RunSettings
    provenance: dict
    shapes: dict
    plan: RunPlan                 # the options resolved once: devices, precision, decoders, engine
    replicas: list = field(default_factory=list)  # one BatchRunner per device, the first is `network`
    options: ExtractOptions = field(default_factory=ExtractOptions)  # what the run was told
    early: Optional[EarlyStart] = None  # decoders started before the network was built (early.py)

    def take_early_pool(self, todo: Sequence[VideoJob]) -> Optional[DecodePool]:
        """The pool started early where it decodes exactly `todo` as this network needs (early.take)."""
        early, self.early = self.early, None
        return take_early(early, todo, self.plan.decoder, self.plan.workers)


def build_extractor(options: Optional[ExtractOptions] = None, *, warn: Warn = lambda message: None,
                    prestart: bool = False, early: Optional[EarlyStart] = None, **changes) -> Extractor:
    """Resolve weights, spec, layers, devices and precision into a network and the run's settings.

    `options` (with `changes`, keywords named like ExtractOptions' fields: model, layers, weights, ...)
    say what to run. `device` may list several devices ("cuda:0,cuda:1"): one replica each; None
    means $C3D_EXTRACT_DEVICE, else auto. `resize_on`: "workers" (decoder processes, OpenCV's resize:
    bit-exact), "device" (where the network runs: full frames travel, the same arithmetic in integer
    torch code, bit-exact too: models/pixels.py), or "auto" (= workers). `decode_on`: "cpu", "gpu"
    (NVDEC threads too: extraction/nvdec.py) or "auto" (gpu where the network is on CUDA and PyAV
    has NVDEC; UsageError for gpu where it cannot be). Under the Ray engine frames are always decoded
    and resized by the CPU decoders. All of it is resolved once into the extractor's `plan`
    (plan.RunPlan), which the engines read. With `prestart` (a run that follows at once), the local
    engine's decoder processes start first, so that their start-up overlaps the building of the
    network (workers.prestart), unless `early` (early.start: decoders already decoding the run's jobs)
    is given: the extractor keeps it for run_jobs, which takes its pool where it fits (early.take).
    Raises UsageError for bad arguments and WeightsError for weights that cannot be had or do not fit."""
    options = ExtractOptions.of(options, **changes)
    plan = RunPlan.resolve(options)
    if prestart and plan.engine == "local" and early is None:
        start_decoders(plan.workers)
    loaded = load_weights(options.weights, options.model, options.seed, quiet=options.quiet, warn=warn)
    model_spec = spec_mean(loaded.spec, options.mean)
    model_spec = model_spec.with_input(**options.clip_changes())
    plan = plan.with_input(options, model_spec.input)
    shapes = model_spec.layer_shapes(list(options.layers or model_spec.default_layers), net=loaded.net)
    if options.weights == RANDOM:
        warn(f"warning: random weights (seed {options.seed}): the features are meaningless outside smoke tests")
    # a file records where it resized and never mixes the two (both are OpenCV's arithmetic now; the
    # device's was a float resize a grey level off in some pixels before issue #33: files from then)
    settings = RunSettings(model=model_spec.model, spec_name=model_spec.name, weights_sha256=loaded.identity,
                           layers=tuple(shapes), clips=model_spec.input.to_dict(), short_videos=options.short,
                           precision=plan.precision, resize_on=plan.resize_on, shard=options.shard,
                           per_clip=options.per_clip, segments=options.segments or 0,
                           keep_partial=options.keep_partial)
    provenance = {"c3d_extract_version": __version__, "weights": loaded.path,
                  "device": ",".join(str(t) for t in plan.devices), "decoder": ", then ".join(
                      ((f"{NVDEC} where NVDEC takes it",) if plan.decode_on == "gpu" else ()) + DECODERS),
                  "torch_version": torch.__version__, "command_line": shlex.join(redact_argv(sys.argv))}
    copies = [copy.deepcopy(loaded.net) for _ in plan.devices[1:]]  # before the first is cast in place
    replicas = [BatchRunner(net, list(shapes), model_spec.input, Runtime(target, plan.precision),
                            plan.batch_size)
                for net, target in zip([loaded.net, *copies], plan.devices)]
    return Extractor(replicas[0], settings, provenance, shapes, plan, replicas, options, early)


class Arrays:
    """An in-memory Sink (collector.Sink) for extraction, by either engine: what `extract(...,
    output=None)` returns. `wants_clips` (RunSettings.wants_clips): it keeps each video's clip rows
    too. Records are in memory at once: `sync` and commit() have nothing to make durable."""

    def __init__(self, layers: Sequence[str], wants_clips: bool = False):
        self.layers, self.wants_clips = list(layers), wants_clips
        self.rows: dict[str, dict[str, np.ndarray]] = {}
        self.clip_rows: dict[str, ClipRows] = {}
        self.failed: dict[str, tuple[str, str]] = {}

    def add_video(self, key: str, features: dict, facts: dict, clips: Optional[ClipRows] = None,
                  sync: bool = True) -> None:
        self.rows[key] = features
        if clips is not None:
            self.clip_rows[key] = clips

    def add_record(self, key: str, record: bytes, sync: bool = True) -> None:
        """A video as its whole journal record (a Ray forward actor's): its rows read back from it."""
        meta, layers = decode_video(record)
        self.add_video(key, {layer: np.array(layers[layer]) for layer in self.layers}, meta["facts"])

    def add_failure(self, key: str, stage: str, error: str, sync: bool = True) -> None:
        self.failed[key] = (stage, error)

    def clear_failure(self, key: str, sync: bool = True) -> None:
        self.failed.pop(key, None)

    def commit(self, wait: bool = True) -> None:
        pass  # nothing to make durable in memory

    @property
    def done(self) -> Collection[str]:
        return self.rows.keys()

    @property
    def keys(self) -> list[str]:
        return sorted(self.rows)

    def matrix(self, layer: Optional[str] = None) -> np.ndarray:
        """(N, D) rows in `keys` order."""
        layer = layer or self.layers[0]
        return np.stack([self.rows[k][layer] for k in self.keys]) if self.rows else np.zeros((0, 0), np.float32)


def extract(videos: Sequence[str], output: Optional[str] = None, options: Optional[ExtractOptions] = None, *,
            on_video: Optional[OnVideo] = None, warn: Warn = lambda message: None,
            **changes) -> "Summary | Arrays":
    """Extract descriptors of `videos` (paths, directories, URLs, tar shards, @lists). With `output`,
    into that feature file (resuming it; crash-safe) and return a Summary; without, return an `Arrays`
    in memory. `options` (with `changes`, keywords named like its fields: model, layers, weights, ...)
    say how."""
    options = ExtractOptions.of(options, **changes)
    jobs = find_jobs(videos, options, warn)
    early = start_early(options, jobs) if all_to_do(output, options) else None
    try:
        extractor = build_extractor(options, warn=warn, early=early)
        with run(jobs, output, extractor) as opened:
            summary = opened.go(on_video)
        return opened.sink if output is None else summary
    finally:  # a run that failed before it took its early decoders: they stop now, not at exit
        stop_early(early)


class Run:
    """A run opened (`run`): the sink it fills and what it still has to do there (`todo`); `go`
    runs the engine. Used as a context manager: leaving it folds the feature file (FeatureStore's
    exit: also on an error, except a storage error), and under Ray, Ray's own log lines go to a
    file (QuietRay) while it is open."""

    def __init__(self, jobs: Sequence[VideoJob], output: Optional[str], extractor: Extractor,
                 warn: Optional[Warn] = None):
        self.jobs, self.extractor = jobs, extractor
        if output is None:
            self.sink: "FeatureStore | Arrays" = Arrays(extractor.network.layers,
                                                        wants_clips=extractor.settings.wants_clips)
            self.todo = list(jobs)
        else:
            self.sink, self.todo = open_output(output, extractor, jobs, warn=warn)
        self._open = contextlib.ExitStack()

    def __enter__(self) -> "Run":
        if isinstance(self.sink, FeatureStore):
            self._open.enter_context(self.sink)
        if self.extractor.plan.engine == "ray":  # before a caller's progress bar takes stderr
            self._open.enter_context(QuietRay())
        return self

    def __exit__(self, *exc) -> Optional[bool]:
        return self._open.__exit__(*exc)

    def go(self, on_video: Optional[OnVideo] = None) -> Summary:
        """Run the engine the options name over `todo` into the sink."""
        return run_jobs(self.todo, self.extractor, self.sink, on_video=on_video)


def run(jobs: Sequence[VideoJob], output: Optional[str], extractor: Extractor, *,
        warn: Optional[Warn] = None) -> Run:
    """Open a run of `extractor` over `jobs`: into the feature file `output` (created, or resumed:
    open_output says what is left to do, `warn` hears of a damaged journal), or with `output` None
    into an Arrays in memory (every job). `api.extract` and `c3d-extract` both run through it:

        with run(jobs, "out.h5", extractor) as opened:
            summary = opened.go(on_video)
    """
    return Run(jobs, output, extractor, warn)


def open_output(output: str, extractor: Extractor, jobs: Sequence[VideoJob], *,
                warn: Optional[Warn] = None) -> tuple[FeatureStore, list[VideoJob]]:
    """Open (or create, or with `overwrite` replace) the run's feature file, and what the run still has
    to do there (the extractor's options say which): the failed videos with `retry_failed`, else those
    not in the file and those whose download failed (the store's fault, not the video's). A tar shard
    is read again passing over the members written (and, without `retry_failed`, those that failed).
    Raises StoreError for a file with other settings (or not a feature file), StorageError for a full
    or failing disk."""
    retry_failed = extractor.options.retry_failed
    store = FeatureStore.open(output, extractor.settings, extractor.shapes, extractor.provenance,
                              overwrite=extractor.options.overwrite, warn=warn)
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
        prefix = shard_prefix(key, prefixes)
        if prefix is not None:
            found.setdefault(prefix, set()).add(key)
    return found


def run_jobs(todo: Sequence[VideoJob], extractor: Extractor, store: Sink, *,
             on_video: Optional[OnVideo] = None) -> Summary:
    """Run the engine the extractor's plan names over `todo` into an open store (or Arrays)."""
    if extractor.plan.engine == "ray":
        from c3d_extract.extraction.engine_ray import extract_ray

        return extract_ray(todo, extractor.network, store, extractor.options, on_video)
    return run_local(todo, extractor.replicas or extractor.network, store, extractor.options, on_video,
                     pool=extractor.take_early_pool(todo), plan=extractor.plan)


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


def verify(output: str, jobs: Sequence[VideoJob], extractor: Extractor, count: int) -> Verification:
    """Re-extract a sample of `count` of `jobs` that `output` holds (seeded with the options' `seed`)
    and compare them with the stored rows; `output` is not changed. Raises StoreError when `output` is
    missing, has other settings, or holds none of the jobs."""
    if not os.path.exists(output):
        raise StoreError(f"{output}: no such feature file to verify")
    FeatureStore.check_existing(output, extractor.settings)
    network = extractor.network
    stored = FeatureFile(output)
    in_file = set(stored.keys)
    candidates = sorted((job for job in jobs if job.key in in_file), key=lambda job: job.key)
    if not candidates:
        raise StoreError(f"{output}: none of the input videos is in the file: nothing to verify")
    sample = random.Random(extractor.options.seed).sample(candidates, min(count, len(candidates)))
    sink = Arrays(network.layers)
    run_local(sample, network, sink, extractor.options, plan=extractor.plan)
    worst_diff, worst_cos = 0.0, 1.0
    keys = list(sink.rows)
    for layer in network.layers:  # only the re-extracted rows are read, whatever the file's size
        for old, key in zip(stored.rows(keys, layer), keys):
            value = sink.rows[key][layer]
            worst_diff = max(worst_diff, float(np.abs(old - value).max()))
            worst_cos = min(worst_cos, float(np.dot(old, value)))  # unit rows
    return Verification(len(sample), len(sink.rows), len(sink.failed), worst_diff, worst_cos,
                        network.runtime.precision == "fp32")


__all__ = ["DEVICE_ENV", "ENGINES", "MODELS", "MODEL_NAMES", "VIDEO_EXTENSIONS", "Arrays", "ClipSequence",
           "ExtractOptions", "Extractor", "Failed", "FeatureFile", "FeatureStore", "OnVideo", "QuietRay", "Run",
           "Sink", "StorageError", "StoreError", "Summary", "Verification", "WeightsError", "build_extractor",
           "cache_dir", "device_defaults", "extract", "find_jobs", "open_output", "redact", "run",
           "run_jobs", "verify"]
