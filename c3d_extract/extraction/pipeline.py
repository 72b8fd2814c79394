"""The extraction pipeline: decode workers -> clips -> batches across videos -> network -> running
mean per video -> L2 -> feature file. A video is written the moment its last clip comes back."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Collection, Mapping, Optional, Protocol, Sequence

import numpy as np
import torch

from c3d_extract.extraction.assemble import Clip, Failed, Finished
from c3d_extract.extraction.attempts import Attempts
from c3d_extract.extraction.batches import Batches
from c3d_extract.extraction.decode import ShardRead
from c3d_extract.extraction.inputs import VideoJob
from c3d_extract.extraction.plan import RunPlan
from c3d_extract.extraction.runtime import Runtime
from c3d_extract.extraction.workers import DecodePool, SharedJobs
from c3d_extract.featurefile.writer import ClipRows
from c3d_extract.models.net import StagedNet
from c3d_extract.models.preprocess import InputSpec
from c3d_extract.options import ExtractOptions
from c3d_extract.vectors import l2_normalize


def descriptor(total: np.ndarray) -> np.ndarray:
    """A video's row of one layer from the float64 sum of its clips' activations: their mean,
    L2-normalised, as float32. The mean is the sum scaled by 1/count, a scale the L2 norm removes, so
    the sum is normalised directly (the float64 roundings differ, the float32 row not); an all-zero
    sum stays zero."""
    return l2_normalize(total).astype(np.float32)


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
        return ({layer: descriptor(total) for layer, total in state.sums.items()},
                {**state.facts, "num_clips": state.clips}, clips)


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


@dataclass
class Summary:
    written: int = 0
    failed: int = 0
    clips: int = 0
    seconds: float = 0.0


# what an engine tells its caller of each video, once it is written (failure None) or failed
OnVideo = Callable[[str, Optional[Failed], Summary], None]


class Sink(Protocol):
    """Where an engine's finished videos and failures go: a feature file (featurefile.writer.FeatureStore)
    or arrays in memory (api.Arrays). Each addition with `sync` is durable when it returns; without,
    it waits for commit() with the others of its group (an engine that commits groups itself)."""

    @property
    def done(self) -> Collection[str]:
        """The videos written."""

    @property
    def wants_clips(self) -> bool:
        """Rows need each video's clips, not only their mean (per-clip rows or segments)."""

    @property
    def failed(self) -> Mapping[str, tuple[str, str]]:
        """The videos recorded as failed: (stage, error) by key."""

    def add_video(self, key: str, features: Mapping[str, np.ndarray], facts: Mapping,
                  clips: Optional[ClipRows] = None, sync: bool = True) -> None: ...

    def add_record(self, key: str, record: bytes, sync: bool = True) -> None:
        """A finished video given as its whole journal record (writer.video_record: made where its
        descriptors were computed, a Ray forward actor), for a sink that keeps neither clips nor
        segments."""

    def add_failure(self, key: str, stage: str, error: str, sync: bool = True) -> None: ...

    def clear_failure(self, key: str, sync: bool = True) -> None: ...

    def commit(self, wait: bool = True) -> None:
        """Make the records since the last commit durable (`wait`: before returning; else in the
        background, the commit before this one durable on return)."""


class Collector:
    """Turns the stream of network outputs, finished and failed videos into rows of the store.

    Items of one video may come in any order (clip outputs after its Finished, say); a video is
    written once all its clips are in, and nothing of a failed video is written. Both engines use it.
    With `grouped`, the store's records wait for `commit()` (one fsync for a group), and `on_video`
    hears of a video only once its group is durable. `attempts`: the run's (attempts.Attempts), which
    says what a video started over makes stale.
    """

    def __init__(self, store: Sink, on_video: Optional[OnVideo], grouped: bool = False,
                 attempts: Optional[Attempts] = None):
        self.store, self.on_video = store, on_video
        self.grouped = grouped
        # grouped: the store's records wait for commit(); else the keyword is left out, so a sink
        # that never groups (one written for the local engine alone) need not know it
        self._sync = {"sync": False} if grouped else {}
        self._waiting: list[tuple[str, Optional[Failed]]] = []  # told once their group is committed
        self._flying: list[tuple[str, Optional[Failed]]] = []  # their group is being fsynced
        self.summary = Summary()
        self.aggregator = Aggregator(keep_clips=store.wants_clips)
        self.failed: set[str] = set()
        self.attempts = attempts if attempts is not None else Attempts()

    def newer(self, key: str, attempt: int) -> bool:
        """Whether `attempt` starts `key` over (Attempts.newer): the older attempt's running sums go."""
        if self.attempts.newer(key, attempt):
            self.aggregator.drop(key)
            return True
        return False

    def _current(self, key: str, attempt: int) -> bool:
        """False for an item of an attempt a later one replaced, or of a failed video."""
        self.newer(key, attempt)
        return self.attempts.current(key, attempt) and key not in self.failed

    def clip(self, key: str, outputs: dict[str, np.ndarray], start: int = 0, attempt: int = 0) -> None:
        """One clip's activations (layer -> 1-D array) and the video frame it starts at."""
        if self._current(key, attempt):
            self.aggregator.add(key, outputs, start)
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
        self.store.add_failure(item.key, item.stage, item.error, **self._sync)
        self.summary.failed += 1
        self._tell(item.key, item)

    def whole(self, key: str, sums: dict[str, np.ndarray], count: int, facts: dict) -> None:
        """A video whose clips were summed elsewhere (float64 per layer, `count` clips): written now."""
        if key in self.failed:
            return
        self.aggregator.drop(key)
        features = {layer: descriptor(total) for layer, total in sums.items()}
        self._written(key, features, {**facts, "num_clips": count}, None)

    def _tell(self, key: str, failure: Optional[Failed]) -> None:
        if self.grouped:
            self._waiting.append((key, failure))
        elif self.on_video:
            self.on_video(key, failure, self.summary)

    def commit(self, wait: bool = True) -> None:
        """Group commit: the store's records since the last commit made durable (one fsync), then
        `on_video` told of their videos. Without `wait` the fsync runs in the background while the
        caller goes on: the videos of the commit before are told, durable by then."""
        if not self.grouped:
            return
        try:
            self.store.commit(wait)
        except Exception:  # a group the store could not write took its videos back: never told of
            self._flying = [(key, failure) for key, failure in self._flying if failure or key in self.store.done]
            self._waiting = [(key, failure) for key, failure in self._waiting if failure or key in self.store.done]
            raise
        durable, self._flying, self._waiting = self._flying, self._waiting, []
        if wait:
            durable, self._flying = durable + self._flying, []
        if self.on_video:
            for key, failure in durable:
                self.on_video(key, failure, self.summary)

    def shard_read(self, item: ShardRead) -> None:
        """A tar shard read to its end: a failure recorded for the shard itself by an earlier run is gone."""
        if item.key in self.store.failed:
            self.store.clear_failure(item.key, **self._sync)

    def _write_if_finished(self, key: str) -> None:
        done = self.aggregator.pop_finished(key)
        if done is not None:
            self._written(key, *done)

    def _written(self, key: str, features: dict, facts: dict, clips: Optional[ClipRows]) -> None:
        if clips is None:
            self.store.add_video(key, features, facts, **self._sync)
        else:
            self.store.add_video(key, features, facts, clips=clips, **self._sync)
        self._count(key, facts["num_clips"])

    def record(self, key: str, record: bytes, count: int) -> None:
        """A video of `count` clips whose whole journal record was made elsewhere (a Ray forward
        actor: writer.video_record): added to the store as it is."""
        if key in self.failed:
            return
        self.store.add_record(key, record, **self._sync)
        self._count(key, count)

    def _count(self, key: str, count: int) -> None:
        """A video of `count` clips the store now holds: counted, and told to `on_video` (with
        `grouped`, once its group is committed)."""
        self.summary.written += 1
        self.summary.clips += count  # only the clips of what was written count
        self._tell(key, None)


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
                batches.drop_stale(item.key, collector.attempts)  # a restarted video's old clips are not computed
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
