"""Shared memory between a decoder process and the process that batches: cropped frames without a pipe.

A pipe copies every byte twice through the kernel, which cost the reader more CPU than all the rest
of the batching process's work per clip (bench/results.md, "Figures moved out of docstrings"). So each
decoder writes its cropped frames into a ring of frames in memory it shares with the parent (a
memfd the parent creates; the decoder opens it through /proc), and sends through its pipe only a
small header per ~1 MiB of frames. The parent cuts the clips straight out of the ring (views, no
copy) and copies each once, into its batch slot.

The decoder keeps every frame that a future window of its video needs contiguous with the new ones
(when it wraps to the ring's start it copies those, fewer than one window, along), so each window
is one slice of the ring. The parent says how far it is done by writing a sequence number into the
ring's first bytes; the decoder never overwrites a frame the parent has not released. Frames are
announced in RING messages (messages.RingHeader). This module imports no torch (decoder processes
load it).
"""

from __future__ import annotations

import mmap
import os
import time
from typing import Optional

import numpy as np

from c3d_extract.extraction.clips import window_starts
from c3d_extract.extraction.messages import MESSAGE_BYTES, RING, Message, RingHeader

RING_BYTES = 16 * 2**20
_HEADER = 4096          # the released sequence number lives here, frames start after it


def ring_frames(frame_shape: tuple[int, ...], clip_len: int) -> int:
    """Frames a ring holds: RING_BYTES, and never fewer than a window's tail, a wrap and two large chunks."""
    frame_bytes = int(np.prod(frame_shape))
    return max(RING_BYTES // frame_bytes, 2 * clip_len + 2 * 64 + MESSAGE_BYTES // frame_bytes + 1)


class FrameRing:
    """A ring of `frames` uint8 frames of `frame_shape` in shared memory, and the sequence number up
    to which the reader has released them. The parent creates it (`FrameRing.create`); the decoder
    opens it by its `path`."""

    def __init__(self, fd: int, frame_shape: tuple[int, ...], frames: int, owner: bool):
        self.fd, self.frame_shape, self.size, self.owner = fd, tuple(frame_shape), frames, owner
        length = _HEADER + frames * int(np.prod(frame_shape))
        self._map = mmap.mmap(fd, length)
        self.released = np.frombuffer(self._map, np.int64, 1, 0)
        self.frames = np.frombuffer(self._map, np.uint8, length - _HEADER, _HEADER).reshape(frames, *frame_shape)

    @classmethod
    def create(cls, frame_shape: tuple[int, ...], clip_len: int) -> Optional["FrameRing"]:
        """A new ring in a memfd (None where memfd or /proc is missing: the pipe carries the frames)."""
        frames = ring_frames(frame_shape, clip_len)
        try:
            fd = os.memfd_create("c3d-extract-frames", os.MFD_CLOEXEC)
        except (AttributeError, OSError):
            return None
        try:
            os.ftruncate(fd, _HEADER + frames * int(np.prod(frame_shape)))
            return cls(fd, frame_shape, frames, owner=True)
        except OSError:
            os.close(fd)
            return None

    @property
    def path(self) -> str:
        """Where another process of the same user opens it."""
        return f"/proc/{os.getpid()}/fd/{self.fd}"

    @classmethod
    def open(cls, path: str, frame_shape: tuple[int, ...], frames: int) -> "FrameRing":
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        return cls(fd, frame_shape, frames, owner=False)

    def release(self, sequence: int) -> None:
        """The reader no longer needs frames before `sequence` (monotonic)."""
        if sequence > self.released[0]:
            self.released[0] = sequence

    def close(self) -> None:
        self.released = self.frames = None  # the views must go before the map closes
        try:
            self._map.close()
        except BufferError:  # a view still lives somewhere: the map goes when it does
            pass
        os.close(self.fd)


class RingWriter:
    """The decoder's side: writes a video's frames into the ring, keeps what a future window needs
    contiguous, announces frames in headers on `connection`, and waits (marked as waiting on the
    parent, not hanging) while the ring is full."""

    def __init__(self, ring: FrameRing, clip_len: int, stride: int, connection):
        self.ring, self.clip_len, self.stride, self.connection = ring, clip_len, stride, connection
        self.sequence = 0             # sequence number of the next frame written
        self._video: Optional[tuple[str, int]] = None
        self._written = 0             # frames of the current video attempt written
        self._next_start = 0          # first frame a future window of it needs
        self._pending: Optional[list] = None  # [first frame, position, sequence, count] not announced
        self._frame_bytes = int(np.prod(ring.frame_shape))
        self._parent = os.getppid()

    def write(self, key: str, attempt: int, frames: np.ndarray) -> None:
        """Put the next frames (n, *frame_shape) of video attempt (key, attempt) into the ring."""
        if (key, attempt) != self._video:
            self.flush()
            self._video, self._written, self._next_start = (key, attempt), 0, 0
        count, size = len(frames), self.ring.size
        position = self.sequence % size
        tail = max(0, self._written - self._next_start)  # frames before these that a window still needs
        if position + count >= size:  # wrap (never to the last slot exactly: the tail stays one slice)
            self.flush()
            start = self.sequence + size - position
            self._wait(start + tail + count)
            if tail:
                old = (self.sequence - tail) % size
                self.ring.frames[:tail] = self.ring.frames[old: old + tail]
            self._pending = [self._next_start, 0, start, tail]
            self.sequence, position = start + tail, tail
        else:
            self._wait(self.sequence + count)
        self.ring.frames[position: position + count] = frames
        if self._pending is None:
            self._pending = [self._written, position, self.sequence, 0]
        self._pending[3] += count
        self.sequence += count
        self._written += count
        self._next_start += self.stride * len(window_starts(self._written, self.clip_len, self.stride,
                                                            self._next_start))
        if self._pending[3] * self._frame_bytes >= MESSAGE_BYTES:
            self.flush()

    def flush(self) -> None:
        """Announce the frames written and not yet announced."""
        if self._pending and self._pending[3]:
            self.connection.send(Message(RING, RingHeader(*self._video, *self._pending)))
        self._pending = None

    def _wait(self, end: int) -> None:
        """Until every frame before `end - size` is released (the parent is behind, not us). A parent
        that died releases nothing: BrokenPipeError, as a send to it would raise."""
        if end - self.ring.size <= self.ring.released[0]:
            return
        self.flush()  # the parent can only release what it was told about
        pause = 0.0002
        while end - self.ring.size > self.ring.released[0]:
            if os.getppid() != self._parent:
                raise BrokenPipeError("the process that batches is gone")
            time.sleep(pause)
            pause = min(pause * 2, 0.005)
