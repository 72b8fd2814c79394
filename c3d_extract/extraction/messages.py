"""What a decoder sends its parent on its pipe, and how frames cross it. No torch (decoder processes
import it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from c3d_extract.extraction.inputs import VideoJob

IDLE = "idle"  # what a decoder process sends when it finished a job
# frames sent (or announced in a ring, ring.py) per message: each costs the parent a wake-up and a header
MESSAGE_BYTES = 2**20


@dataclass
class Frames:
    """Consecutive frames of one video: cropped uint8 (n, h, w, 3) RGB, or as decoded."""

    key: str
    attempt: int
    frames: np.ndarray


@dataclass
class FramesHeader:
    """How Frames cross a decoder's pipe: a header (a plain tuple on the wire, cheap to unpickle,
    `FramesHeader.wire`), then the frames' raw bytes, which the parent reads straight into the buffer
    the clips are cut from (no pickling, no copy)."""

    key: str
    attempt: int
    shape: tuple[int, ...]

    TAG = "frames"

    @classmethod
    def from_wire(cls, message) -> "Optional[FramesHeader]":
        """The header a received message is, or None for any other message."""
        if type(message) is tuple and message[0] == cls.TAG:
            return cls(message[1], message[2], message[3])
        return None


class FrameSender:
    """A decoder's side of its pipe: Frames of one video attempt are gathered into messages of about
    MESSAGE_BYTES (a chunk of a large video is a few frames; each message costs the parent a wake-up
    and a header), sent as a header tuple and the raw bytes (os.write from the array: no pickling)."""

    def __init__(self, connection):
        self.connection = connection
        self._pending: list[Frames] = []
        self._bytes = 0

    def send(self, item) -> None:
        """Frames are held until enough have come; anything else sends what is held first."""
        if isinstance(item, Frames):
            if self._pending and (item.key, item.attempt) != (self._pending[0].key, self._pending[0].attempt):
                self.flush()
            self._pending.append(item)
            self._bytes += item.frames.nbytes
            if self._bytes >= MESSAGE_BYTES:
                self.flush()
            return
        self.flush()
        self.connection.send(item)

    def flush(self) -> None:
        if not self._pending:
            return
        first = self._pending[0]
        arrays = [p.frames for p in self._pending]
        array = np.ascontiguousarray(arrays[0]) if len(arrays) == 1 else np.concatenate(arrays)
        self._pending, self._bytes = [], 0
        self.connection.send((FramesHeader.TAG, first.key, first.attempt, tuple(array.shape)))
        view = memoryview(array.reshape(-1))
        while len(view):
            view = view[os.write(self.connection.fileno(), view):]


def read_frames_into(connection, array: np.ndarray) -> None:
    """Fill a contiguous uint8 `array` with the raw bytes that follow a FramesHeader (os.readv, straight
    into place). EOFError when the sender died in the middle."""
    view, fd = memoryview(array.reshape(-1)), connection.fileno()
    while len(view):
        count = os.readv(fd, [view])
        if count == 0:
            raise EOFError("the decoder's pipe closed in the middle of frames")
        view = view[count:]


@dataclass
class End:
    """A video's stream ended after `facts["num_frames"]` frames (status ok, repaired:N or partial:N)."""

    key: str
    attempt: int
    facts: dict


@dataclass
class Failed:
    key: str
    stage: str
    error: str


@dataclass
class GiveBack:
    """A video a GPU decoder thread did not finish (nvdec.py): it goes to the decoder processes, whose
    tries are numbered from `job.attempts` (after the GPU's), as when one reader follows another."""

    job: VideoJob
    reason: str


@dataclass
class ShardRead:
    """A tar shard was read to its end (an older failure of the shard itself no longer holds)."""

    key: str
