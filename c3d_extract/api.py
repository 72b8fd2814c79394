"""The Python API: what the command line does, callable from a script or a notebook.

    from c3d_extract import api
    api.extract(["videos/"], "out.h5", model="res3d", weights="random")   # a feature file
    arrays = api.extract(["a.mp4", "b.mp4"], weights="random")           # or arrays in memory
    features = api.FeatureFile("out.h5")
    x, labels = features.matrix("res5b"), features.labels()
"""

from __future__ import annotations

import copy
import shlex
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from c3d_extract import __version__
from c3d_extract.featurefile.reader import ClipSequence, FeatureFile
from c3d_extract.extraction.inputs import VideoJob, find_videos, parse_extensions, parse_shard, shard_of
from c3d_extract.models.registry import ModelSpec
from c3d_extract.extraction.pipeline import ClipRows, Failed, Network, Summary, extract as run_local
from c3d_extract.extraction.runtime import Runtime, default_device, resolve_device, resolve_precision
from c3d_extract.storage import StorageError
from c3d_extract.featurefile.writer import FeatureStore, StoreError
from c3d_extract.extraction.video import DECODERS
from c3d_extract.weights.load import RANDOM, Loaded, WeightsError, load_weights, spec_mean

Warn = Callable[[str], None]


@dataclass
class Extractor:
    """A network ready to run with the exact settings a feature file records."""

    spec: ModelSpec
    network: Network          # the first replica
    loaded: Loaded
    settings: dict
    provenance: dict
    shapes: dict
    replicas: list = field(default_factory=list)  # one Network per device, the first is `network`
    keep_partial: bool = False  # keep the frames before the damage of a video that breaks (partial:N)


def build_extractor(model: Optional[str] = None, layers: Optional[Sequence[str]] = None,
                    weights: Optional[str] = None, seed: int = 0, mean: Optional[str] = None,
                    clip_len: Optional[int] = None, stride: Optional[int] = None, frame_step: Optional[int] = None,
                    short: str = "loop", device: Optional[str] = None, precision: str = "auto",
                    batch_size: Optional[int] = None, per_clip: bool = False, segments: Optional[int] = None,
                    shard: Optional[str] = None, resize_on: str = "auto", keep_partial: bool = False,
                    quiet: bool = True,
                    warn: Warn = lambda message: None) -> Extractor:
    """Resolve weights, spec, layers, devices and precision. `device` may list several devices
    ("cuda:0,cuda:1"): one replica each; None means $C3D_EXTRACT_DEVICE, else auto. Raises ValueError for bad arguments and WeightsError for
    weights that cannot be had or do not fit. `resize_on`: "workers" (decoder processes, OpenCV's
    resize: bit-exact), "device" (where the network runs: full frames travel, a float resize that
    is not bit-exact, README Limits), or "auto" (= workers: the default is faithful everywhere).
    `keep_partial`: a video that breaks while decoding keeps its frames before the damage."""
    if resize_on not in ("auto", "workers", "device"):
        raise ValueError(f"resize_on must be auto, workers or device, not {resize_on!r}")
    device = device or default_device()
    targets = [resolve_device(name.strip()) for name in device.split(",")]
    if len({t.type for t in targets}) > 1:
        raise ValueError(f"--device {device}: mix of CPU and CUDA devices")
    runtime = Runtime(targets[0], resolve_precision(precision, targets[0]))
    if shard:
        parse_shard(shard)
    loaded = load_weights(weights, model, seed, quiet=quiet, warn=warn)
    spec = spec_mean(loaded.spec, mean)
    changes = {k: v for k, v in (("clip_len", clip_len), ("stride", stride), ("frame_step", frame_step))
               if v is not None}
    spec = spec.with_input(**changes) if changes else spec
    shapes = spec.layer_shapes(list(layers or spec.default_layers), net=loaded.net)
    if weights == RANDOM:
        warn(f"warning: random weights (seed {seed}): the features are meaningless outside smoke tests")
    settings = {"model": spec.model, "spec": spec.name, "weights_sha256": loaded.identity,
                "layers": list(shapes), **spec.input.settings(), "short_videos": short,
                "precision": runtime.precision, **({"shard": shard} if shard else {}),
                **({"per_clip": True} if per_clip else {}), **({"segments": segments} if segments else {}),
                **({"keep_partial": True} if keep_partial else {})}
    provenance = {"c3d_extract_version": __version__, "weights": loaded.path,
                  "device": ",".join(str(t) for t in targets),
                  "decoder": ", then ".join(DECODERS), "torch_version": torch.__version__, "command_line": shlex.join(sys.argv)}
    batch = batch_size or (32 if runtime.device.type == "cuda" else 4)
    copies = [copy.deepcopy(loaded.net) for _ in targets[1:]]  # before the first is cast in place
    on_device = resize_on == "device"
    # the device's float resize differs from OpenCV's by a grey level in some pixels, so a file
    # records where it resized and never mixes the two.
    settings["resize_on"] = "device" if on_device else "workers"
    replicas = [Network(net, list(shapes), spec.input, Runtime(target, runtime.precision), batch, on_device)
                for net, target in zip([loaded.net, *copies], targets)]
    return Extractor(spec, replicas[0], loaded, settings, provenance, shapes, replicas, keep_partial)


def find_jobs(inputs: Sequence[str], root: Optional[str] = None, ext: Optional[str] = None,
              shard: Optional[str] = None, warn: Warn = lambda message: None) -> list[VideoJob]:
    """The videos of directories, files and @lists, keyed relative to `root`, optionally one shard."""
    extensions = parse_extensions(ext)
    jobs, problems = find_videos(inputs, root, extensions)
    for path, problem in problems:
        warn(f"warning: {path}: {problem}")
    if not jobs:
        raise ValueError(f"no video found in {', '.join(inputs)} (extensions: {','.join(extensions)})")
    if shard:
        index, count = parse_shard(shard)
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

    @property
    def keys(self) -> list[str]:
        return sorted(self.rows)

    def matrix(self, layer: Optional[str] = None) -> np.ndarray:
        """(N, D) rows in `keys` order."""
        layer = layer or self.layers[0]
        return np.stack([self.rows[k][layer] for k in self.keys]) if self.rows else np.zeros((0, 0), np.float32)


def extract(videos: Sequence[str], output: Optional[str] = None, *, root: Optional[str] = None,
            ext: Optional[str] = None, overwrite: bool = False, retry_failed: bool = False, workers: int = 1,
            timeout: float = 300.0, engine: str = "local", ray_address: Optional[str] = None,
            on_video: Optional[Callable[[str, Optional[Failed], Summary], None]] = None,
            warn: Warn = lambda message: None, **options) -> "Summary | Arrays":
    """Extract descriptors of `videos` (paths, directories, @lists). With `output`, into that feature
    file (resuming it; crash-safe) and return a Summary; without, return an `Arrays` in memory.
    `options` are those of build_extractor (model, layers, weights, ...)."""
    if output is None and engine != "local":
        raise ValueError("extracting to arrays runs the local engine; give `output` for --engine ray")
    extractor = build_extractor(warn=warn, **options)
    jobs = find_jobs(videos, root, ext, options.get("shard"), warn)
    short = options.get("short", "loop")
    if output is None:
        sink = Arrays(extractor.network.layers, keep_clips=bool(options.get("per_clip") or options.get("segments")))
        run_local(jobs, extractor.replicas, sink, short=short, workers=workers, timeout=timeout,  # type: ignore[arg-type]
                  keep_partial=extractor.keep_partial)
        return sink
    with FeatureStore.open(output, extractor.settings, extractor.shapes, extractor.provenance, overwrite) as store:
        todo = pending_jobs(jobs, store, retry_failed)
        return run_jobs(todo, extractor, store, short, workers, timeout, engine, ray_address, on_video)


def pending_jobs(jobs: Sequence[VideoJob], store: FeatureStore, retry_failed: bool = False) -> list[VideoJob]:
    """What a run still has to do: the failed videos with `retry_failed`, else those not in the file."""
    if retry_failed:
        return [job for job in jobs if job.key in store.failed]
    return [job for job in jobs if job.key not in store.done and job.key not in store.failed]


def run_jobs(todo: Sequence[VideoJob], extractor: Extractor, store: FeatureStore, short: str, workers: int,
             timeout: float, engine: str, ray_address: Optional[str], on_video) -> Summary:
    """Run the chosen engine over `todo` into an open store."""
    if engine == "ray":
        from c3d_extract.extraction.engine_ray import extract_ray

        return extract_ray(todo, extractor.network, store, short=short, address=ray_address, on_video=on_video,
                           timeout=timeout, keep_partial=extractor.keep_partial)
    if engine != "local":
        raise ValueError(f"unknown engine {engine!r}; use local or ray")
    return run_local(todo, extractor.replicas or extractor.network, store, short=short, workers=workers,
                     on_video=on_video, timeout=timeout, keep_partial=extractor.keep_partial)


__all__ = ["Arrays", "ClipSequence", "Extractor", "FeatureFile", "StorageError", "StoreError", "WeightsError",
           "build_extractor", "extract", "find_jobs", "pending_jobs", "run_jobs"]
