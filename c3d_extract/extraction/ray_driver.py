"""The Ray engine's driver side (`--engine ray`): the forward actors' rows in, the store's rows out.

A `video` row (a whole journal record made on an actor) is appended as it came; `part` rows (the
sums of a video's clips in one forward call) are added up until one decode run of the video holds
all its clips; per-clip rows (a file that keeps every clip) go through the Collector's running sums.
A block Ray runs again after a lost node sends rows the driver already has: they are dropped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from c3d_extract.extraction.messages import ShardRead
from c3d_extract.extraction.inputs import VideoJob, shard_prefix
from c3d_extract.extraction.collector import Collector, Failed, Finished

COMMIT_SECONDS = 0.1  # group commit: the journal is fsynced at most about this often (and at the end)


@dataclass
class _Partial:
    """The clips of one video from one decode run (nonce) summed so far (of its newest attempt)."""

    sums: Optional[dict] = None
    starts: set = field(default_factory=set)
    expected: Optional[int] = None
    facts: Optional[dict] = None


class Driver:
    """The driver's side of the engine: result batches in, rows of the store out. A video is written
    once the part rows of one decode run of it hold all its clips (starts unique: a block Ray runs
    again under another nonce never adds to the first run's sums); per-clip rows when the file keeps
    every clip. The store's records are committed in groups (COMMIT_SECONDS)."""

    def __init__(self, jobs: Sequence[VideoJob], collector: Collector, layers: Sequence[str]):
        self.collector, self.layers = collector, list(layers)
        self.store = collector.store
        self.attempts = collector.attempts  # the run's: a part row's attempt is counted per decode run
        self.pending = {job.key for job in jobs}  # not yet written or failed (a tar shard: not yet read to its end)
        self.shards = {job.prefix: job.key for job in jobs if job.is_shard}
        self.parts: dict[str, dict[str, _Partial]] = {}     # video -> nonce -> its sums so far
        self.clips_seen: dict[str, set[tuple[int, int]]] = {}  # per-clip rows: (attempt, start) taken
        self.committed = time.monotonic()

    def wanted(self, key: str) -> bool:
        """Whether a row is news: its video (or the tar shard it is a member of) is pending and the
        video is neither written nor failed."""
        if key in self.store.done or key in self.collector.failed:
            return False
        if key in self.pending:
            return True
        prefix = shard_prefix(key, self.shards) if self.shards else None
        return prefix is not None and self.shards[prefix] in self.pending

    def resolved(self, key: str) -> None:
        self.pending.discard(key)
        self.parts.pop(key, None)
        self.clips_seen.pop(key, None)

    def absorb(self, batch: dict) -> None:
        """One result batch of the forward actors; the group is committed when COMMIT_SECONDS passed."""
        outputs = [batch[f"out_{layer}"] for layer in self.layers] if "out_" + self.layers[0] in batch else []
        records, clips = batch.get("record"), batch.get("clips")
        for i, (key, kind, meta) in enumerate(zip(batch["key"], batch["kind"], batch["meta"])):
            key = str(key)
            if not self.wanted(key):  # a block Ray ran again after a lost node: already written or failed
                continue
            if kind == "video":  # the most common row by far: appended as it came
                self.collector.record(key, records[i], int(clips[i]))
                self.resolved(key)
                continue
            if kind == "part":
                sums = [np.frombuffer(batch[f"sum_{layer}"][i], np.float64) for layer in self.layers]
                self._part(key, str(batch["nonce"][i]), json.loads(meta), sums)
            elif kind == "read":
                self.collector.shard_read(ShardRead(key))
                self.pending.discard(key)
            elif kind == "fail":
                info = json.loads(meta)
                self.collector.fail(Failed(key, info["stage"], info["error"]))
                self.resolved(key)
            else:
                self._clip_row(key, kind, meta, int(batch["start"][i]), [column[i] for column in outputs])
            if key in self.store.done:
                self.resolved(key)
        if time.monotonic() - self.committed >= COMMIT_SECONDS:
            self.commit(wait=False)

    def commit(self, wait: bool = True) -> None:
        """The group absorbed since the last commit made durable: with `wait` before returning (all
        of it), else its fsync runs in the background while the driver reads on."""
        self.collector.commit(wait)
        self.committed = time.monotonic()

    def _part(self, key: str, nonce: str, info: dict, sums: list) -> None:
        part = self.parts.setdefault(key, {}).setdefault(nonce, _Partial())
        attempt = int(info.get("attempt", 0))
        if self.attempts.newer((key, nonce), attempt):  # a second decoder started it over: older clips go
            part.__init__()
        elif not self.attempts.current((key, nonce), attempt):
            return
        starts = info["starts"]
        if part.starts.intersection(starts):
            return  # the same clips twice in one run: cannot happen; never counted twice
        part.starts.update(starts)
        if part.sums is None:
            part.sums = {layer: np.array(value, np.float64) for layer, value in zip(self.layers, sums)}
        else:
            for layer, value in zip(self.layers, sums):
                part.sums[layer] += value
        if "num_clips" in info:
            part.expected, part.facts = info["num_clips"], info["facts"]
        if part.expected is not None and len(part.starts) == part.expected:
            self.collector.whole(key, part.sums, part.expected, part.facts)

    def _clip_row(self, key: str, kind: str, meta: str, start: int, values: list) -> None:
        """A per-clip row (clip, last or done): the Collector's running sums, duplicates dropped."""
        info = json.loads(meta) if kind in ("last", "done") else {}
        if kind in ("clip", "last"):
            attempt = int(info.get("attempt", 0) if kind == "last" else (meta or 0))
            seen = self.clips_seen.setdefault(key, set())
            if (attempt, start) not in seen:
                seen.add((attempt, start))
                self.collector.clip(key, dict(zip(self.layers, values)), start, attempt)
        if kind in ("last", "done") and self.wanted(key):
            self.collector.finished(Finished(key, info["num_clips"], info["facts"], info.get("attempt", 0)))
