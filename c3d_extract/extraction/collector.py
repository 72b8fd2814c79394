"""Where the network's outputs become rows: running float64 sums of each video's clip activations, the
mean and L2 once all are in (Aggregator, descriptor), and the Collector that writes finished and failed
videos to a Sink (a feature file or arrays in memory), for both engines (pipeline.extract, the Ray
driver). A video started over by a second decoder drops its older attempt here (attempts.Attempts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Collection, Mapping, Optional, Protocol

import numpy as np

from c3d_extract.extraction.assemble import Failed, Finished
from c3d_extract.extraction.attempts import Attempts
from c3d_extract.extraction.decode import ShardRead
from c3d_extract.featurefile.writer import ClipRows
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
