"""Cutting a stream of frames into overlapping clips.

The rule (README "Clips"): windows of `clip_len` frames start at frames 0, stride, 2*stride, ...
while the whole window fits in the video; the network sees every `frame_step`-th frame of a window.
Frames after the last whole window (fewer than `stride`) are not used, as in the original tool,
which only ever read whole clips. A video shorter than one window gives one clip according to
`short`: "loop" repeats the video from its start (frame i of the window is frame i mod N),
"edge" repeats its last frame, "skip" makes it a failure. A video with no frame is always a failure.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from c3d_extract.errors import UsageError


def window_starts(num_frames: int, clip_len: int, stride: int) -> list[int]:
    """First frame of every whole window of a video with `num_frames` frames."""
    return list(range(0, num_frames - clip_len + 1, stride)) if num_frames >= clip_len else []


def short_indices(num_frames: int, clip_len: int, rule: str) -> list[int]:
    """Frame indices that fill one window of a video shorter than it ("loop" or "edge")."""
    if rule == "loop":
        return [i % num_frames for i in range(clip_len)]
    if rule == "edge":
        return [min(i, num_frames - 1) for i in range(clip_len)]
    raise UsageError(f"no padding rule {rule!r} (choose loop or edge)")


class ClipCutter:
    """Turns frame chunks of any size into clips as soon as their window is complete.

    It keeps only the frames that a future window still needs (at most clip_len + one chunk), so
    a video of any length costs the same memory.
    """

    def __init__(self, clip_len: int, stride: int, frame_step: int):
        self.clip_len, self.stride, self.frame_step = clip_len, stride, frame_step
        self._buffer: torch.Tensor | None = None
        self._base = 0          # video index of self._buffer[0]
        self._next_start = 0    # first frame of the next window
        self.frames_seen = 0
        self.clips_cut = 0

    def push(self, frames: "np.ndarray | torch.Tensor") -> Iterator[tuple[int, "np.ndarray | torch.Tensor"]]:
        """Add the next frames (n, ...) and yield (start frame, clip) for every completed window."""
        if self._buffer is None:
            self._buffer = frames
        else:  # numpy or torch, whichever came: no conversion on the way
            join = np.concatenate if isinstance(frames, np.ndarray) else torch.cat
            self._buffer = join([self._buffer, frames])
        self.frames_seen += len(frames)
        while self._next_start + self.clip_len <= self.frames_seen:
            offset = self._next_start - self._base
            # a view, not a copy: the buffer is never written in place (new frames make a new one), and
            # the batch that stacks the clips is the one copy each frame needs
            yield self._next_start, self._buffer[offset: offset + self.clip_len: self.frame_step]
            self.clips_cut += 1
            self._next_start += self.stride
        keep_from = min(self._next_start, self.frames_seen) - self._base
        if keep_from > 0:
            self._buffer = self._buffer[keep_from:]
            self._base += keep_from

    def short_clip(self, rule: str) -> "np.ndarray | torch.Tensor":
        """The single padded clip of a video that ended before its first window was complete."""
        assert self.clips_cut == 0 and self._buffer is not None and self._base == 0
        indices = short_indices(self.frames_seen, self.clip_len, rule)[:: self.frame_step]
        return self._buffer[indices]
