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

    Frames land in a buffer the cutter owns (`reserve` gives the place a chunk is received into,
    straight from a pipe; `push` copies one in), and a clip is a view of it. A buffer region is
    written once and never again: when a chunk does not fit, the frames a future window still needs
    (fewer than clip_len) move to a new buffer, so every view handed out stays valid. The buffer
    holds about BUFFER_BYTES or clip_len + one chunk of frames: a video of any length costs the same
    memory.
    """

    BUFFER_BYTES = 4 * 2**20

    def __init__(self, clip_len: int, stride: int, frame_step: int):
        self.clip_len, self.stride, self.frame_step = clip_len, stride, frame_step
        self._buffer: "np.ndarray | torch.Tensor | None" = None
        self._base = 0          # video index of self._buffer[0]
        self._fill = 0          # frames in self._buffer
        self._next_start = 0    # first frame of the next window
        self.frames_seen = 0
        self.clips_cut = 0

    def reserve(self, count: int, frame_shape: tuple, like: "np.ndarray | torch.Tensor | None" = None
                ) -> "np.ndarray | torch.Tensor":
        """The place (count, *frame_shape) where the next `count` frames go; then `commit(count)`.
        A numpy buffer unless `like` is a torch tensor (then one on its device)."""
        buffer = self._buffer
        if buffer is None or tuple(buffer.shape[1:]) != tuple(frame_shape) or self._fill + count > len(buffer):
            keep = self.frames_seen - max(self._next_start, self._base) if buffer is not None else 0
            frame_bytes = max(1, int(np.prod(frame_shape)))
            size = max(self.clip_len + count, self.BUFFER_BYTES // frame_bytes)
            if isinstance(like, torch.Tensor):
                fresh = torch.empty((size, *frame_shape), dtype=like.dtype, device=like.device)
            else:
                fresh = np.empty((size, *frame_shape), np.uint8 if like is None else like.dtype)
            if keep > 0:
                fresh[:keep] = buffer[self._fill - keep: self._fill]
            self._buffer, self._base, self._fill = fresh, self.frames_seen - max(keep, 0), max(keep, 0)
        return self._buffer[self._fill: self._fill + count]

    def commit(self, count: int) -> Iterator[tuple[int, "np.ndarray | torch.Tensor"]]:
        """The `count` reserved frames have arrived: yield (start frame, clip view) for every window
        they complete. A view stays valid (its region is never rewritten)."""
        self._fill += count
        self.frames_seen += count
        while self._next_start + self.clip_len <= self.frames_seen:
            offset = self._next_start - self._base
            yield self._next_start, self._buffer[offset: offset + self.clip_len: self.frame_step]
            self.clips_cut += 1
            self._next_start += self.stride

    def push(self, frames: "np.ndarray | torch.Tensor") -> Iterator[tuple[int, "np.ndarray | torch.Tensor"]]:
        """Copy the next frames (n, ...) in and yield (start frame, clip) for every completed window."""
        self.reserve(len(frames), tuple(frames.shape[1:]), frames)[:] = frames
        yield from self.commit(len(frames))

    @property
    def held(self) -> int:
        """Frames the buffer holds (bounded whatever the video's length)."""
        return 0 if self._buffer is None else len(self._buffer)

    def short_clip(self, rule: str) -> "np.ndarray | torch.Tensor":
        """The single padded clip of a video that ended before its first window was complete."""
        assert self.clips_cut == 0 and self._buffer is not None and self._base == 0
        indices = short_indices(self.frames_seen, self.clip_len, rule)[:: self.frame_step]
        return self._buffer[indices]
