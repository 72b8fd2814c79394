"""The extraction pipeline: decode workers -> clips -> batches across videos -> network -> running
mean per video -> L2 -> feature file. A video is written the moment its last clip comes back."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from c3d_extract.clips import ClipCutter
from c3d_extract.inputs import VideoJob
from c3d_extract.models.net import StagedNet
from c3d_extract.preprocess import InputSpec
from c3d_extract.runtime import Runtime
from c3d_extract.store import FeatureStore
from c3d_extract.video import VideoError, VideoReader
from c3d_extract.workers import DecodePool


@dataclass
class Clip:
    key: str
    start: int
    frames: torch.Tensor  # uint8 (T, h, w, 3) RGB, cropped


@dataclass
class Finished:
    key: str
    num_clips: int
    facts: dict


@dataclass
class Failed:
    key: str
    stage: str
    error: str


Item = Union[Clip, Finished, Failed]


def decode_video(job: VideoJob, spec: InputSpec, short: str) -> Iterator[Item]:
    """All clips of one video, then Finished with its facts, or Failed as soon as anything breaks.

    A Failed after some clips means those clips must be discarded: a video is whole or absent.
    """
    try:
        reader = VideoReader(job.path)
        cutter = ClipCutter(spec.clip_len, spec.stride, spec.frame_step)
        for frames in reader.frames():
            for start, clip in cutter.push(spec.crop_frames(frames)):
                yield Clip(job.key, start, clip)
        status = "ok"
        if cutter.clips_cut == 0:
            if short == "skip":
                raise VideoError("clips", f"{cutter.frames_seen} frames: shorter than one "
                                          f"{spec.clip_len}-frame window (--short skip)")
            yield Clip(job.key, 0, cutter.short_clip(short))
            status = f"short:{short}"
        info = reader.info
        yield Finished(job.key, max(cutter.clips_cut, 1), {
            "num_frames": cutter.frames_seen, "fps": info.fps, "height": info.height,
            "width": info.width, "status": status})
    except VideoError as exc:
        yield Failed(job.key, exc.stage, str(exc))
    except Exception as exc:  # a bug or a decoder surprise must cost one video, not the run
        yield Failed(job.key, "decode", f"unexpected {type(exc).__name__}: {exc}")


@dataclass
class _Running:
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    clips: int = 0
    expected: Optional[int] = None
    facts: Optional[dict] = None


class Aggregator:
    """Running float64 sums of clip activations per video; mean and L2 once all clips are in."""

    def __init__(self) -> None:
        self._videos: dict[str, _Running] = {}

    def add(self, key: str, outputs: dict[str, np.ndarray]) -> None:
        state = self._videos.setdefault(key, _Running())
        for layer, value in outputs.items():
            if layer in state.sums:
                state.sums[layer] += value
            else:
                state.sums[layer] = value.astype(np.float64)
        state.clips += 1

    def expect(self, key: str, num_clips: int, facts: dict) -> None:
        state = self._videos.setdefault(key, _Running())
        state.expected, state.facts = num_clips, facts

    def drop(self, key: str) -> None:
        self._videos.pop(key, None)

    def pop_finished(self, key: str) -> Optional[tuple[dict[str, np.ndarray], dict]]:
        """(L2-normalised mean per layer, facts) when every clip of `key` is in, else None."""
        state = self._videos.get(key)
        if state is None or state.expected is None or state.clips < state.expected:
            return None
        del self._videos[key]
        return {layer: l2_normalize(total / state.clips) for layer, total in state.sums.items()}, \
            {**state.facts, "num_clips": state.clips}


def l2_normalize(vector: np.ndarray) -> np.ndarray:
    """vector / ||vector|| as float32; an all-zero vector stays zero (it has no direction)."""
    norm = np.linalg.norm(vector)
    return (vector / norm if norm > 0 else vector).astype(np.float32)


class Network:
    """The prepared network and the batch shape it is fed: clips of several videos per forward.

    Short batches are padded to `batch_size` so every forward has one shape: a clip's features then
    do not depend on which clips shared its batch, and cuDNN/oneDNN pick one algorithm.
    """

    def __init__(self, net: StagedNet, layers: Sequence[str], spec: InputSpec, runtime: Runtime,
                 batch_size: int):
        self.net = runtime.prepare(net)
        self.layers = list(layers)
        self.spec, self.runtime, self.batch_size = spec, runtime, batch_size

    def __call__(self, clips: Sequence[torch.Tensor]) -> dict[str, np.ndarray]:
        """uint8 clips -> per-layer float32 arrays (len(clips), D)."""
        n = len(clips)
        batch = torch.stack(list(clips))
        if n < self.batch_size:
            batch = torch.cat([batch, batch.new_zeros((self.batch_size - n, *batch.shape[1:]))])
        device = self.runtime.device
        if device.type == "cuda":
            batch = batch.pin_memory().to(device, non_blocking=True)
        x = self.spec.normalize(batch, self.runtime.dtype).contiguous(memory_format=self.runtime.memory_format)
        with torch.inference_mode():
            out = self.net(x, self.layers)
        return {layer: value[:n].float().flatten(1).cpu().numpy() for layer, value in out.items()}


@dataclass
class Summary:
    written: int = 0
    failed: int = 0
    clips: int = 0
    seconds: float = 0.0


def extract(jobs: Sequence[VideoJob], network: Network, store: FeatureStore, short: str = "loop",
            workers: int = 1, on_video: Optional[Callable[[str, Optional[Failed], Summary], None]] = None,
            timeout: float = 300.0) -> Summary:
    """Run every job through the network into `store`; failures are recorded, never raised.

    Decoding runs in `workers` processes; a video whose decoder makes no progress for `timeout`
    seconds, or whose decoder process dies, is recorded as failed and the run goes on.

    `on_video(key, failure, summary)` is called once per video as it is written (failure None) or failed.
    """
    summary = Summary()
    started = time.perf_counter()
    aggregator = Aggregator()
    failed: set[str] = set()
    pending: list[Clip] = []

    def write_if_finished(key: str) -> None:
        done = aggregator.pop_finished(key)
        if done is not None:
            store.add_video(key, *done)
            summary.written += 1
            if on_video:
                on_video(key, None, summary)

    def run_batch() -> None:
        outputs = network([clip.frames for clip in pending])
        keys = [clip.key for clip in pending]
        pending.clear()
        for i, key in enumerate(keys):
            if key not in failed:
                aggregator.add(key, {layer: value[i] for layer, value in outputs.items()})
                summary.clips += 1
        for key in dict.fromkeys(keys):
            write_if_finished(key)

    pool = DecodePool(jobs, network.spec, short, workers, timeout)
    try:
        for item in pool:
            if isinstance(item, Clip):
                pending.append(item)
                if len(pending) == network.batch_size:
                    run_batch()
            elif isinstance(item, Finished):
                if item.key in failed:
                    continue
                aggregator.expect(item.key, item.num_clips, item.facts)
                write_if_finished(item.key)
            elif item.key not in failed:
                failed.add(item.key)
                aggregator.drop(item.key)
                store.add_failure(item.key, item.stage, item.error)
                summary.failed += 1
                if on_video:
                    on_video(item.key, item, summary)
        if pending:
            run_batch()
    finally:
        pool.close()
        summary.seconds = time.perf_counter() - started
    return summary
