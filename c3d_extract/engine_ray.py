"""`--engine ray`: the same extraction on Ray Data, on a laptop or a cluster.

Decoding runs as CPU tasks (`flat_map` over the video list, streaming clips), the network as an
actor pool (`map_batches`, one actor per GPU on CUDA, else one on the CPU), and the driver collects
clip activations into the same running means and crash-safe store as the local engine, so both
write the same file. Ray streams blocks with backpressure, so memory stays bounded.

Every row has the same columns so the dataset has one schema: `kind` is clip, done or fail; `meta`
carries a video's facts or its error as JSON; `frames` is a clip (all zeros for done/fail rows).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Callable, Optional, Sequence

import numpy as np

from c3d_extract.decode import NativeStderr
from c3d_extract.inputs import VideoJob
from c3d_extract.pipeline import Clip, Collector, Failed, Finished, Network, Summary, decode_video
from c3d_extract.store import FeatureStore


def _require_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RuntimeError("--engine ray needs Ray Data: pip install 'ray[data]' (or this package's [ray] extra)") from None
    return ray


class _Decode:
    """Ray flat_map: one video row -> its clip rows, then one done or fail row."""

    def __init__(self, spec, short: str):
        self.spec, self.short = spec, short
        self.blank = np.zeros((spec.frames, *spec.crop, 3), np.uint8)
        NativeStderr.install()  # this actor's process decodes only: the decoders' lines fold into one line

    def __call__(self, row: dict):
        for item in decode_video(VideoJob(row["key"], row["path"]), self.spec, self.short):
            if isinstance(item, Clip):
                frames = np.ascontiguousarray(item.frames.numpy())  # a view into the decoded frames
                yield {"key": item.key, "kind": "clip", "meta": "", "start": item.start, "frames": frames}
            elif isinstance(item, Finished):
                meta = json.dumps({"num_clips": item.num_clips, "facts": item.facts})
                yield {"key": item.key, "kind": "done", "meta": meta, "start": 0, "frames": self.blank}
            else:
                meta = json.dumps({"stage": item.stage, "error": item.error})
                yield {"key": item.key, "kind": "fail", "meta": meta, "start": 0, "frames": self.blank}


class _Forward:
    """Ray map_batches actor: the prepared network, built once per actor."""

    def __init__(self, net, layers, spec, runtime, batch_size: int):
        ray = _require_ray()
        if isinstance(net, ray.ObjectRef):  # the weights travel once through the object store
            net = ray.get(net)
        self.network = Network(net, layers, spec, runtime, batch_size)

    def __call__(self, batch: dict) -> dict:
        import torch

        clips = np.flatnonzero(batch["kind"] == "clip")
        out = {"key": batch["key"], "kind": batch["kind"], "meta": batch["meta"], "start": batch["start"]}
        values = self.network([torch.from_numpy(batch["frames"][i]) for i in clips]) if len(clips) else {}
        for layer in self.network.layers:
            column = np.zeros((len(batch["key"]), 1), np.float32)
            if len(clips):
                column = np.zeros((len(batch["key"]), values[layer].shape[1]), np.float32)
                column[clips] = values[layer]
            out[f"out_{layer}"] = column
        return out


def extract_ray(jobs: Sequence[VideoJob], network: Network, store: FeatureStore, short: str = "loop",
                address: Optional[str] = None,
                on_video: Optional[Callable[[str, Optional[Failed], Summary], None]] = None) -> Summary:
    """Extract `jobs` with Ray Data into `store` (local Ray when `address` is None)."""
    ray = _require_ray()
    started = time.perf_counter()
    ours = not ray.is_initialized()
    if ours:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    try:
        return _run(ray, jobs, network, store, short, on_video, started)
    finally:
        if ours:
            ray.shutdown()


def _run(ray, jobs, network, store, short, on_video, started) -> Summary:
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.execution_options.preserve_order = False
    gpus = int(ray.cluster_resources().get("GPU", 0)) if network.runtime.device.type == "cuda" else 0
    net = ray.put(network.net.to("cpu").float())  # the actors prepare their own copy
    dataset = ray.data.from_items([{"key": job.key, "path": job.path} for job in jobs],
                                  override_num_blocks=max(1, len(jobs)))
    dataset = dataset.flat_map(_Decode, fn_constructor_kwargs={"spec": network.spec, "short": short},
                               compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, int(
                                   ray.cluster_resources().get("CPU", 1)) - 1)), num_cpus=1)
    dataset = dataset.map_batches(
        _Forward, batch_size=network.batch_size, batch_format="numpy", num_gpus=1 if gpus else 0,
        compute=ray.data.ActorPoolStrategy(size=max(1, gpus)),
        fn_constructor_kwargs={"net": net, "layers": network.layers, "spec": network.spec,
                               "runtime": network.runtime, "batch_size": network.batch_size})
    collector = Collector(store, on_video)
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for i, (key, kind, meta) in enumerate(zip(batch["key"], batch["kind"], batch["meta"])):
            key = str(key)
            if kind == "clip":
                collector.clip(key, {layer: batch[f"out_{layer}"][i] for layer in network.layers},
                               int(batch["start"][i]))
            elif kind == "done":
                info = json.loads(meta)
                collector.finished(Finished(key, info["num_clips"], info["facts"]))
            else:
                info = json.loads(meta)
                collector.fail(Failed(key, info["stage"], info["error"]))
    collector.summary.seconds = time.perf_counter() - started
    return collector.summary
