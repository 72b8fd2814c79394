"""Reading videos with decord: sequentially, in bounded chunks, with its error traps turned into
one clear message per file (reference/environment.md)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

import decord

decord.logging.set_level(decord.logging.QUIET)

# decord 0.6.0 raises RuntimeError for unreadable containers and DECORDError (not a RuntimeError
# subclass) for missing streams and mid-stream decode failures.
DECODER_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, decord.DECORDError)
DECODER = f"decord {decord.__version__}"
CHUNK_BYTES = 32 * 2**20


class VideoError(Exception):
    """A video that cannot be processed: `stage` is open, decode or clips; str() is the reason."""

    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage


@dataclass(frozen=True)
class VideoInfo:
    """What the container says: frame count, average fps and the decoded frame size."""

    num_frames: int
    fps: float
    height: int
    width: int


# FFmpeg error codes that decord prints as bare numbers
_AVERRORS = {"-1094995529": "invalid data", "-11": "resource temporarily unavailable (EAGAIN)",
             "-541478725": "unexpected end of file"}


def clean_decoder_message(exc: BaseException) -> str:
    """decord's text minus its '[hh:mm:ss] /src/file.cc:123:' prefixes and C++ check
    expressions, on one line, with FFmpeg's numeric error codes named."""
    text = re.sub(r"\[\d\d:\d\d:\d\d\] \S+?:\d+: ", "", str(exc))
    text = re.sub(r"Check failed: .*? \((-?\d+) vs\. 0\) ",
                  lambda m: f"FFmpeg error {m.group(1)} ({_AVERRORS.get(m.group(1), 'see FFmpeg')}): ", text)
    text = " ".join(text.split())
    return (text[:300] + "...") if len(text) > 300 else (text or type(exc).__name__)


class VideoReader:
    """A decord reader that yields the frames of one video in order, a bounded chunk at a time.

    Sequential reads cost one decode per frame; cutting overlapping clips with per-clip seeks is
    4-12x slower (reference/environment.md section 4). Memory is O(chunk), whatever the length.
    """

    def __init__(self, path: str, num_threads: int = 1):
        self.path = path
        if not os.path.exists(path):
            raise VideoError("open", "no such file")
        if os.path.isdir(path):
            raise VideoError("open", "is a directory, not a video file")
        try:
            with open(path, "rb") as handle:
                empty = not handle.read(1)
        except OSError as exc:
            raise VideoError("open", f"cannot read: {exc.strerror or exc}") from None
        if empty:
            raise VideoError("open", "empty file (0 bytes)")
        try:
            self._reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=num_threads)
            num_frames = len(self._reader)
            fps = float(self._reader.get_avg_fps()) if num_frames else 0.0
        except DECODER_ERRORS as exc:
            message = clean_decoder_message(exc)
            if "cannot find video stream" in message:
                raise VideoError("open", "no video stream (audio-only or empty container)") from None
            if str(exc).startswith("Error reading"):
                raise VideoError("open", "not a readable video (corrupt, truncated or not a video)") from None
            raise VideoError("open", f"cannot open as video: {message}") from None
        if num_frames == 0:
            raise VideoError("open", "the video stream has no frames")
        self._first = self._read(0, 1)  # the frame size is only known once a frame is decoded
        self.info = VideoInfo(num_frames, fps, int(self._first.shape[1]), int(self._first.shape[2]))

    def _read(self, start: int, stop: int) -> np.ndarray:
        try:
            return self._reader.get_batch(list(range(start, stop))).asnumpy()
        except DECODER_ERRORS as exc:
            raise VideoError(
                "decode", f"decoding failed in frames {start}-{stop - 1} of {len(self._reader)}: "
                          f"{clean_decoder_message(exc)}") from None

    def chunk_frames(self) -> int:
        """Frames per read: about CHUNK_BYTES of decoded RGB, between 4 and 64 frames."""
        frame_bytes = self.info.height * self.info.width * 3
        return int(min(64, max(4, CHUNK_BYTES // max(frame_bytes, 1))))

    def frames(self) -> Iterator[torch.Tensor]:
        """Yield uint8 RGB frames (n, H, W, 3) in order; a decode error raises VideoError (the
        reader is dead afterwards: decord cannot resume a stream that failed)."""
        step = self.chunk_frames()
        yield torch.from_numpy(self._first)
        for start in range(1, self.info.num_frames, step):
            yield torch.from_numpy(self._read(start, min(start + step, self.info.num_frames)))
