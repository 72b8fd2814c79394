"""Cutting a stream of frames into overlapping clips.

The rule (README "Clips"): windows of `clip_len` frames start at frames 0, stride, 2*stride, ...
while the whole window fits in the video; the network sees every `frame_step`-th frame of a window.
Frames after the last whole window (fewer than `stride`) are not used, as in the original tool,
which only ever read whole clips. A video shorter than one window gives one clip according to
`short`: "loop" repeats the video from its start (frame i of the window is frame i mod N),
"edge" repeats its last frame, "skip" makes it a failure. A video with no frame is always a failure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Optional

import numpy as np

from c3d_extract.errors import UsageError

if TYPE_CHECKING:
    import torch


def window_starts(num_frames: int, clip_len: int, stride: int, first: int = 0) -> list[int]:
    """First frame of every whole window of a video once `num_frames` of its frames are in, from the
    window that starts at `first` (0, or a start not given yet) on. The one place of the rule: the
    cutter (ClipCutter) and a decoder's ring (ring.RingWriter) follow it as frames come."""
    return list(range(first, num_frames - clip_len + 1, stride))


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
    straight from a pipe; `push` copies one in), and a clip is a view of it, valid until the frames
    after the next ones arrive: copy it (into a batch slot) before asking for more. When a chunk does
    not fit, the frames a future window still needs (fewer than clip_len) move to the start of a
    second buffer, and the two take turns; a buffer holds about BUFFER_BYTES or clip_len + one chunk
    of frames, so a video of any length costs the same memory. Buffers come from and go back to
    `spares` (shared by the videos of one run), so memory that is already mapped and warm in the
    cache is reused instead of fresh pages faulted in for every video.
    """

    BUFFER_BYTES = 4 * 2**20

    def __init__(self, clip_len: int, stride: int, frame_step: int, spares: Optional[list] = None):
        self.clip_len, self.stride, self.frame_step = clip_len, stride, frame_step
        self._buffer: "np.ndarray | torch.Tensor | None" = None
        self._other: "np.ndarray | torch.Tensor | None" = None  # the buffer before, reused next
        self._spares = spares if spares is not None else []
        self._shared = False    # self._buffer is someone else's (attach)
        self._base = 0          # video index of self._buffer[0]
        self._fill = 0          # frames in self._buffer
        self._next_start = 0    # first frame of the next window
        self.frames_seen = 0
        self.clips_cut = 0

    def _fresh(self, frames: int, frame_shape: tuple, like) -> "np.ndarray | torch.Tensor":
        """A buffer for at least `frames` frames of `frame_shape`, like `like` (numpy or a torch
        device): the one before, a spare, or a new one."""
        is_torch = like is not None and not isinstance(like, np.ndarray)  # a torch tensor (--resize-on device)
        dtype = like.dtype if like is not None else np.uint8
        for pool in ([self._other] if self._other is not None else [], self._spares):
            for i, buffer in enumerate(pool):
                if ((not isinstance(buffer, np.ndarray)) == is_torch and buffer.dtype == dtype and len(buffer) >= frames
                        and tuple(buffer.shape[1:]) == tuple(frame_shape)
                        and (not is_torch or buffer.device == like.device)):
                    return pool.pop(i)
        size = max(frames, self.BUFFER_BYTES // max(1, int(np.prod(frame_shape))))
        if is_torch:
            import torch  # already imported where tensors come: the decoding side stays without it

            return torch.empty((size, *frame_shape), dtype=dtype, device=like.device)
        return np.empty((size, *frame_shape), dtype)

    def reserve(self, count: int, frame_shape: tuple, like: "np.ndarray | torch.Tensor | None" = None
                ) -> "np.ndarray | torch.Tensor":
        """The place (count, *frame_shape) where the next `count` frames go; then `commit(count)`.
        A numpy buffer unless `like` is a torch tensor (then one on its device)."""
        buffer = self._buffer
        if buffer is None or tuple(buffer.shape[1:]) != tuple(frame_shape) or self._fill + count > len(buffer):
            keep = max(0, self.frames_seen - self._next_start) if buffer is not None else 0
            if self._other is not None:
                self._spares.append(self._other)
            self._other = None
            fresh = self._fresh(self.clip_len + count, frame_shape, like)
            if keep:
                fresh[:keep] = buffer[self._fill - keep: self._fill]
            self._other = buffer if self._owned() else None
            self._buffer, self._base, self._fill, self._shared = fresh, self.frames_seen - keep, keep, False
        return self._buffer[self._fill: self._fill + count]

    def commit(self, count: int) -> Iterator[tuple[int, "np.ndarray | torch.Tensor"]]:
        """The `count` reserved frames have arrived: yield (start frame, clip view) for every window
        they complete."""
        self._fill += count
        self.frames_seen += count
        return self._windows()

    def _windows(self) -> Iterator[tuple[int, "np.ndarray | torch.Tensor"]]:
        for start in window_starts(self.frames_seen, self.clip_len, self.stride, self._next_start):
            offset = start - self._base
            yield start, self._buffer[offset: offset + self.clip_len: self.frame_step]
            self.clips_cut += 1
            self._next_start = start + self.stride

    def attach(self, buffer: np.ndarray, first: int, position: int, count: int
               ) -> Iterator[tuple[int, np.ndarray]]:
        """Frames first..first+count-1 are at buffer[position: position+count] of a buffer someone else
        owns (a decoder's shared ring, ring.py), right after every earlier frame a future window
        needs: yield (start frame, clip view) for every window they complete."""
        if self._owned():  # frames that came by copy before: none are kept here any more
            self.release()
        self._buffer, self._base, self._fill = buffer, first - position, position + count
        self._shared = True
        new = max(0, first + count - self.frames_seen)
        self.frames_seen += new
        return self._windows()

    def _owned(self) -> bool:
        return self._buffer is not None and not self._shared

    def push(self, frames: "np.ndarray | torch.Tensor") -> Iterator[tuple[int, "np.ndarray | torch.Tensor"]]:
        """Copy the next frames (n, ...) in and yield (start frame, clip view) for every completed window."""
        self.reserve(len(frames), tuple(frames.shape[1:]), frames)[:] = frames
        yield from self.commit(len(frames))

    @property
    def needed_from(self) -> int:
        """The first frame a future window (or a short video's padded clip) still needs."""
        return self._next_start

    def release(self) -> None:
        """The video is over: its buffers go back to the spares (its clip views are void)."""
        if self._owned():
            self._spares.append(self._buffer)
        if self._other is not None:
            self._spares.append(self._other)
        self._buffer = self._other = None

    @property
    def held(self) -> int:
        """Frames the buffers hold (bounded whatever the video's length)."""
        return sum(len(b) for b in (self._buffer, self._other) if b is not None)

    def short_clip(self, rule: str) -> "np.ndarray | torch.Tensor":
        """The single padded clip of a video that ended before its first window was complete (a copy)."""
        assert self.clips_cut == 0 and self._buffer is not None and self._base <= 0
        indices = short_indices(self.frames_seen, self.clip_len, rule)[:: self.frame_step]
        return self._buffer[[i - self._base for i in indices]]
