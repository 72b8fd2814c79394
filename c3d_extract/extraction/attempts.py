"""The attempt rule, once: a decoder that fails after sending frames of a video starts it over with the
next attempt number (decode.py; a video NVDEC gave back comes again from the CPU decoders, nvdec.py), and
from then on everything of an older attempt is stale: its clips are not computed (batches.Batches),
its running sums are dropped (collector.Collector), its partial sums too under Ray (ray_driver.Driver).
One `Attempts` per run says which is which; the run's parts consult it. No torch."""

from __future__ import annotations

from typing import Hashable


class Attempts:
    """The newest decoder attempt seen of each video (a key; the Ray driver's partial sums are kept
    per (video, decode run)). Attempt 0 is every video's first and is not stored: only videos
    started over cost an entry, kept for the whole run (results of an older attempt may still be in
    flight when the newer one has finished)."""

    def __init__(self) -> None:
        self._newest: dict[Hashable, int] = {}

    def newer(self, key: Hashable, attempt: int) -> bool:
        """Whether `attempt` starts `key` over (later than any seen): it becomes the newest, and the
        caller drops what it holds of the older ones. True once per new attempt."""
        if attempt > self._newest.get(key, 0):
            self._newest[key] = attempt
            return True
        return False

    def current(self, key: Hashable, attempt: int) -> bool:
        """Whether an item of `attempt` still counts: False once a later attempt of `key` was seen."""
        return attempt >= self._newest.get(key, 0)
