"""What a decoder process sends its parent on its pipe: one tagged Message, (kind, payload), built by
every sender and read in one place (workers.DecodePool._read). No torch (decoder processes import it).

    kind     payload                      sent by
    FRAMES   FramesHeader, then the       FrameSender (frames not cropped in the decoder: the pipe
             frames' raw bytes            carries them, os.write/os.readv, no pickling)
    RING     RingHeader                   ring.RingWriter (cropped frames already in the shared ring)
    ITEM     End | Failed | ShardRead     decode.serve (how a video, or a tar shard, ended)
    IDLE     None                         decode.serve (the job is done: the next one may come)

The stream of one video is its frames (FRAMES or RING), then End, or Failed. Frames, End and Failed
are also what decode.decode_frames yields in-process (nvdec.py's threads, the tests).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from c3d_extract.extraction.inputs import VideoJob

FRAMES, RING, ITEM, IDLE = "frames", "ring", "item", "idle"
# frames sent (or announced in a ring, ring.py) per message: each costs the parent a wake-up and a header
MESSAGE_BYTES = 2**20


class Message(NamedTuple):
    """One message on a decoder's pipe: `kind` (FRAMES, RING, ITEM or IDLE) says what `payload` is.
    Tuples all the way down (cheap to pickle and unpickle: one per ~MESSAGE_BYTES of frames)."""

    kind: str
    payload: Any = None


class FramesHeader(NamedTuple):
    """Frames of a video attempt whose raw bytes follow on the pipe, which the parent reads straight
    into the buffer the clips are cut from (read_frames_into: no pickling, no copy)."""

    key: str
    attempt: int
    shape: tuple[int, ...]


class RingHeader(NamedTuple):
    """Frames first..first+count-1 of a video attempt are at ring[position: position+count] of the
    decoder's shared ring (ring.py); frame i's sequence number is sequence + i - first."""

    key: str
    attempt: int
    first: int
    position: int
    sequence: int
    count: int


@dataclass
class Frames:
    """Consecutive frames of one video: cropped uint8 (n, h, w, 3) RGB, or as decoded."""

    key: str
    attempt: int
    frames: np.ndarray


class FrameSender:
    """A decoder's side of its pipe: Frames of one video attempt are gathered into messages of about
    MESSAGE_BYTES (a chunk of a large video is a few frames), each sent as a FRAMES message and the raw
    bytes (os.write from the array: no pickling); any other Message goes after what is held."""

    def __init__(self, connection):
        self.connection = connection
        self._pending: list[Frames] = []
        self._bytes = 0

    def send(self, item: "Frames | Message") -> None:
        """Frames are held until enough have come; a Message sends what is held first."""
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
        self.connection.send(Message(FRAMES, FramesHeader(first.key, first.attempt, tuple(array.shape))))
        view = memoryview(array.reshape(-1))
        while len(view):
            view = view[os.write(self.connection.fileno(), view):]


def read_frames_into(connection, array: np.ndarray) -> None:
    """Fill a contiguous uint8 `array` with the raw bytes that follow a FRAMES message (os.readv,
    straight into place). EOFError when the sender died in the middle."""
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
