"""The extraction pipeline: decode workers -> clips -> batches across videos -> network -> running
mean per video -> L2 -> feature file. A video is written the moment its last clip comes back."""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from c3d_extract.extraction.assemble import Clip, Failed, Finished
from c3d_extract.extraction.inputs import VideoJob
from c3d_extract.extraction.runtime import Runtime
from c3d_extract.extraction.workers import DecodePool
from c3d_extract.featurefile.writer import ClipRows, FeatureStore
from c3d_extract.models.net import StagedNet
from c3d_extract.models.preprocess import InputSpec
from c3d_extract.vectors import l2_normalize


@dataclass
class _Running:
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    clips: int = 0
    expected: Optional[int] = None
    facts: Optional[dict] = None
    kept: list = field(default_factory=list)  # (start frame, outputs) when clips are kept


class Aggregator:
    """Running float64 sums of clip activations per video; mean and L2 once all clips are in.

    With `keep_clips` (per-clip features or segment pooling) the clips themselves are kept too, so a
    video in flight costs O(its clips); otherwise O(1).
    """

    def __init__(self, keep_clips: bool = False) -> None:
        self._videos: dict[str, _Running] = {}
        self.keep_clips = keep_clips

    def add(self, key: str, outputs: dict[str, np.ndarray], start: int = 0) -> None:
        state = self._videos.setdefault(key, _Running())
        for layer, value in outputs.items():
            if layer in state.sums:
                state.sums[layer] += value
            else:
                state.sums[layer] = value.astype(np.float64)
        state.clips += 1
        if self.keep_clips:
            state.kept.append((start, {layer: np.array(v, np.float32) for layer, v in outputs.items()}))

    def expect(self, key: str, num_clips: int, facts: dict) -> None:
        state = self._videos.setdefault(key, _Running())
        state.expected, state.facts = num_clips, facts

    def drop(self, key: str) -> None:
        self._videos.pop(key, None)

    def pop_finished(self, key: str) -> Optional[tuple[dict[str, np.ndarray], dict, Optional[ClipRows]]]:
        """(L2-normalised mean per layer, facts, kept clips or None) once every clip of `key` is in."""
        state = self._videos.get(key)
        if state is None or state.expected is None or state.clips < state.expected:
            return None
        del self._videos[key]
        clips = None
        if self.keep_clips:
            kept = sorted(state.kept, key=lambda item: item[0])  # engines may deliver clips out of order
            clips = ClipRows([start for start, _ in kept],
                             {layer: np.stack([outputs[layer] for _, outputs in kept]) for layer in state.sums})
        return ({layer: l2_normalize(total / state.clips).astype(np.float32) for layer, total in state.sums.items()},
                {**state.facts, "num_clips": state.clips}, clips)


class BatchRunner:
    """The prepared network and the batch shape it is fed: clips of several videos per forward.

    Short batches are padded to `batch_size` so every forward has one shape: a clip's features then
    do not depend on which clips shared its batch, and cuDNN/oneDNN pick one algorithm.
    """

    def __init__(self, net: StagedNet, layers: Sequence[str], spec: InputSpec, runtime: Runtime,
                 batch_size: int, resize_on_device: bool = False):
        self.net = runtime.prepare(net)
        self.layers = list(layers)
        self.spec, self.runtime, self.batch_size = spec, runtime, batch_size
        self.resize_on_device = resize_on_device
        self._constants = spec.constants(runtime.device)  # the mean lives on the device once

    def _to_device(self, clip: torch.Tensor) -> torch.Tensor:
        if self.runtime.device.type == "cuda":
            return clip.pin_memory().to(self.runtime.device, non_blocking=True)
        return clip

    def __call__(self, clips: Sequence[torch.Tensor]) -> dict[str, np.ndarray]:
        """uint8 clips (cropped, or full-size with resize_on_device) -> per-layer float32 (len(clips), D)."""
        n = len(clips)
        if self.resize_on_device:  # full-size frames of any size: resize and crop each clip where it runs
            batch = torch.stack([self.spec.crop_frames_float(self._to_device(clip)) for clip in clips])
        else:
            batch = self._to_device(torch.stack(list(clips)))
        if n < self.batch_size:
            batch = torch.cat([batch, batch.new_zeros((self.batch_size - n, *batch.shape[1:]))])
        x = self.spec.normalize(batch, self.runtime.dtype, self._constants)
        x = x.contiguous(memory_format=self.runtime.memory_format)
        with torch.inference_mode():
            out = self.net(x, self.layers)
        return {layer: value[:n].float().flatten(1).cpu().numpy() for layer, value in out.items()}


@dataclass
class Summary:
    written: int = 0
    failed: int = 0
    clips: int = 0
    seconds: float = 0.0


class Replicas:
    """One network replica per device (`--device cuda:0,cuda:1`, or `cpu,cpu` as a stand-in), fed
    batches round-robin from one decoding pool. Results are taken in the order batches were given,
    so the running sums, and the features, do not depend on the number of replicas. Each replica
    runs in a thread of its own (PyTorch releases the GIL), which also overlaps the network with
    the reading of clips for a single device."""

    def __init__(self, networks: Sequence[BatchRunner]):
        self.networks = list(networks)
        self._threads = [ThreadPoolExecutor(1, thread_name_prefix=f"replica{i}") for i in range(len(networks))]
        self._next = 0
        self._in_flight: "deque[tuple[Future, list]]" = deque()

    @property
    def batch_size(self) -> int:
        return self.networks[0].batch_size

    def submit(self, clips: list) -> None:
        i, self._next = self._next, (self._next + 1) % len(self.networks)
        frames = [clip.frames for clip in clips]
        self._in_flight.append((self._threads[i].submit(self.networks[i], frames), clips))

    def results(self, wait: bool = False) -> Iterator[tuple[dict[str, np.ndarray], list]]:
        """Finished batches in submission order; with `wait`, all of them, else those done (and the
        oldest whenever more than two per replica are in flight, to bound memory)."""
        while self._in_flight and (wait or self._in_flight[0][0].done()
                                   or len(self._in_flight) > 2 * len(self.networks)):
            future, clips = self._in_flight.popleft()
            yield future.result(), clips

    def close(self) -> None:
        for thread in self._threads:
            thread.shutdown(wait=True, cancel_futures=True)


class Collector:
    """Turns the stream of network outputs, finished and failed videos into rows of the store.

    Items of one video may come in any order (clip outputs after its Finished, say); a video is
    written once all its clips are in, and nothing of a failed video is written. Both engines use it.
    """

    def __init__(self, store: FeatureStore, on_video: Optional[Callable[[str, Optional[Failed], "Summary"], None]]):
        self.store, self.on_video = store, on_video
        self.summary = Summary()
        self.aggregator = Aggregator(keep_clips=getattr(store, "wants_clips", False))
        self.failed: set[str] = set()
        self.attempts: dict[str, int] = {}  # videos a second decoder started over (decode.py)

    def _current(self, key: str, attempt: int) -> bool:
        """False for an item of an attempt a later one replaced; a later attempt drops the older one's sums."""
        current = self.attempts.get(key, 0)
        if attempt > current:
            self.aggregator.drop(key)
            self.attempts[key] = attempt
        return attempt >= current and key not in self.failed

    def clip(self, key: str, outputs: dict[str, np.ndarray], start: int = 0, attempt: int = 0) -> None:
        """One clip's activations (layer -> 1-D array) and the video frame it starts at."""
        if self._current(key, attempt):
            self.aggregator.add(key, outputs, start)
            self.summary.clips += 1
            self._write_if_finished(key)

    def finished(self, item: Finished) -> None:
        if self._current(item.key, item.attempt):
            self.aggregator.expect(item.key, item.num_clips, item.facts)
            self._write_if_finished(item.key)

    def fail(self, item: Failed) -> None:
        if item.key in self.failed:
            return
        self.failed.add(item.key)
        self.aggregator.drop(item.key)
        self.store.add_failure(item.key, item.stage, item.error)
        self.summary.failed += 1
        if self.on_video:
            self.on_video(item.key, item, self.summary)

    def _write_if_finished(self, key: str) -> None:
        done = self.aggregator.pop_finished(key)
        if done is not None:
            features, facts, clips = done
            if clips is None:
                self.store.add_video(key, features, facts)
            else:
                self.store.add_video(key, features, facts, clips=clips)
            self.summary.written += 1
            if self.on_video:
                self.on_video(key, None, self.summary)


def extract(jobs: Sequence[VideoJob], network: "BatchRunner | Sequence[BatchRunner]", store: FeatureStore,
            short: str = "loop", workers: int = 1,
            on_video: Optional[Callable[[str, Optional[Failed], Summary], None]] = None,
            timeout: float = 300.0, keep_partial: bool = False) -> Summary:
    """Run every job through the network into `store`; failures are recorded, never raised.

    Decoding runs in `workers` processes; a video whose decoder makes no progress for `timeout`
    seconds, or whose decoder process dies, is recorded as failed and the run goes on.

    `on_video(key, failure, summary)` is called once per video as it is written (failure None) or failed.
    """
    started = time.perf_counter()
    replicas = Replicas(network if isinstance(network, (list, tuple)) else [network])
    collector = Collector(store, on_video)
    pending: list[Clip] = []

    def take(wait: bool = False) -> None:
        for outputs, clips in replicas.results(wait):
            for i, clip in enumerate(clips):
                collector.clip(clip.key, {layer: value[i] for layer, value in outputs.items()}, clip.start,
                               clip.attempt)

    pool = DecodePool(jobs, replicas.networks[0].spec, short, workers, timeout,
                      resize=not replicas.networks[0].resize_on_device, keep_partial=keep_partial)
    try:
        for item in pool:
            if isinstance(item, Clip):
                if item.key in collector.failed or item.attempt < collector.attempts.get(item.key, 0):
                    continue
                pending.append(item)
                if len(pending) == replicas.batch_size:
                    replicas.submit(pending)
                    pending = []
            elif isinstance(item, Finished):  # written once its last clip is back (Aggregator)
                collector.finished(item)
            else:
                collector.fail(item)
            take()
        if pending:
            replicas.submit(pending)
        take(wait=True)
    finally:
        pool.close()
        replicas.close()
        collector.summary.seconds = time.perf_counter() - started
    return collector.summary
