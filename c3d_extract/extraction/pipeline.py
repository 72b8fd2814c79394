"""The local engine: decode workers -> clips -> batches across videos -> network (BatchRunner) -> the
Collector's running mean per video (collector.py) -> L2 -> feature file. A video is written the moment
its last clip comes back."""

from __future__ import annotations

import time
from typing import Optional, Sequence

import numpy as np
import torch

from c3d_extract.extraction.assemble import Clip, Failed, Finished
from c3d_extract.extraction.attempts import Attempts
from c3d_extract.extraction.batches import Batches
from c3d_extract.extraction.collector import Collector, OnVideo, Sink, Summary
from c3d_extract.extraction.messages import ShardRead
from c3d_extract.extraction.inputs import VideoJob
from c3d_extract.extraction.plan import RunPlan
from c3d_extract.extraction.runtime import Runtime
from c3d_extract.extraction.workers import DecodePool, SharedJobs
from c3d_extract.models.net import StagedNet
from c3d_extract.models.preprocess import InputSpec
from c3d_extract.options import ExtractOptions


class BatchRunner:
    """The prepared network and the batch shape it is fed: clips of several videos per forward.

    Short batches are padded to `batch_size` with zero clips so every forward has one shape: a
    clip's features then do not depend on which clips shared its batch, and cuDNN/oneDNN pick one
    algorithm. The staging of batches (batches.py) feeds `forward`; `__call__` serves callers that
    hold clips as one array (Ray's forward actors, benchmarks).
    """

    def __init__(self, net: StagedNet, layers: Sequence[str], input_spec: InputSpec, runtime: Runtime,
                 batch_size: int):
        self.net = runtime.prepare(net)
        self.layers = list(layers)
        self.input_spec, self.runtime, self.batch_size = input_spec, runtime, batch_size
        self._constants = input_spec.constants(runtime.device)  # the mean lives on the device once

    def forward(self, batch: torch.Tensor, count: int) -> dict[str, torch.Tensor]:
        """uint8 clips (batch_size, T, h, w, 3) on the runtime's device, the first `count` real ->
        per-layer float32 activations (batch_size, ...) on the device. The rows past `count` are
        zeroed in place first."""
        if count < len(batch):
            batch[count:].zero_()
        x = self.input_spec.normalize(batch, self.runtime.dtype, self._constants)
        x = x.contiguous(memory_format=self.runtime.memory_format)
        with torch.inference_mode():
            out = self.net(x, self.layers)
        return {layer: value.float() for layer, value in out.items()}

    def place_frames(self, frames: np.ndarray) -> torch.Tensor:
        """`--resize-on device`: decoded uint8 frames (n, H, W, 3) uploaded once, resized (OpenCV's
        arithmetic, bit for bit) and cropped on the network's device; the clips are then cut there."""
        return self.input_spec.crop_frames_device(torch.from_numpy(frames).to(self.runtime.device))

    def __call__(self, clips: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 cropped clips (N, T, h, w, 3), any N -> per-layer float32 (N, D), batch by batch."""
        parts: dict[str, list[np.ndarray]] = {layer: [] for layer in self.layers}
        for at in range(0, len(clips), self.batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(clips[at: at + self.batch_size]))
            batch = torch.zeros((self.batch_size, *chunk.shape[1:]), dtype=torch.uint8)
            batch[:len(chunk)] = chunk
            for layer, value in self.forward(batch.to(self.runtime.device), len(chunk)).items():
                parts[layer].append(value[:len(chunk)].flatten(1).cpu().numpy())
        return {layer: np.concatenate(values) if values else np.zeros((0, 0), np.float32)
                for layer, values in parts.items()}


def extract(jobs: Sequence[VideoJob], network: "BatchRunner | Sequence[BatchRunner]", sink: Sink,
            options: ExtractOptions = ExtractOptions(), on_video: Optional[OnVideo] = None,
            pool: Optional[DecodePool] = None, plan: Optional[RunPlan] = None) -> Summary:
    """Run every job through the network into `sink`; failures are recorded, never raised.

    `plan` (api.Extractor's; default: resolved here from `options` for the networks' devices) says
    how many decoder processes decode, what they are told and where frames are resized and decoded; a
    video whose decoder makes no progress for `options.timeout` seconds, or whose decoder process dies,
    is recorded as failed and the run goes on. A list of networks (one per device) shares the batches
    round-robin (batches.py).

    `on_video(key, failure, summary)` is called once per video as it is written (failure None) or failed.
    `pool`: a DecodePool already decoding exactly `jobs` with the plan's decoder settings (api.Extractor's
    early start), else one is made here.
    """
    started = time.perf_counter()
    runners = list(network) if isinstance(network, (list, tuple)) else [network]
    first = runners[0]
    if plan is None:  # networks built by hand (tests, benchmarks): the plan the options say for them
        plan = RunPlan.resolve(options, [runner.runtime.device for runner in runners]).with_input(
            options, first.input_spec)
    collector = Collector(sink, on_video, attempts=Attempts())

    def on_result(outputs: dict[str, np.ndarray], rows: list) -> None:
        for i, (key, start, attempt) in enumerate(rows):
            collector.clip(key, {layer: value[i] for layer, value in outputs.items()}, start, attempt)

    batches = Batches(runners, on_result)
    if pool is None:
        shared, gpu = SharedJobs(jobs), None
        if plan.decode_on == "gpu":
            from c3d_extract.extraction.nvdec import DeviceDecoders, DeviceReader

            reader = DeviceReader.bound(first.input_spec, first.runtime.device)
            gpu = DeviceDecoders(lambda: shared.take(DeviceDecoders.wants), reader)
        pool = DecodePool(shared, plan.decoder, options.short, plan.workers, options.timeout,
                          place=first.place_frames if plan.resize_on == "device" else None,
                          gpu=gpu)
    try:
        for item in pool:
            if isinstance(item, ShardRead):
                collector.shard_read(item)
                continue
            if not isinstance(item, Failed) and collector.newer(item.key, item.attempt):
                # a restarted video: its older attempt's clips are not computed, its sums are gone
                batches.drop_stale(item.key, collector.attempts)
            if isinstance(item, Clip):
                if item.key not in collector.failed:
                    batches.add(item.key, item.start, item.attempt, item.frames)
            elif isinstance(item, Finished):  # written once its last clip is back (Aggregator)
                collector.finished(item)
            else:
                collector.fail(item)
            batches.take()
        batches.finish()
    finally:
        pool.close()
        batches.close()
        collector.summary.seconds = time.perf_counter() - started
    return collector.summary
