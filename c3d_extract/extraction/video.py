"""Reading videos: decord first (the user's choice), PyAV (a current FFmpeg) for what decord cannot
read. Both read sequentially in bounded chunks and turn their error traps into one clear message per
file (reference/environment.md); both say when they repaired frames instead of decoding them.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from typing import Iterator

import numpy as np

import av
import decord

from c3d_extract.errors import Failure

decord.logging.set_level(decord.logging.QUIET)

# decord 0.6.0 raises RuntimeError for unreadable containers, DECORDError (not a RuntimeError
# subclass) for missing streams and mid-stream decode failures, and DECORDLimitReachedError (neither)
# when its fault tolerance is exceeded.
DECODER_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, decord.DECORDError,
                                                   decord._ffi.base.DECORDLimitReachedError)
DECORD = f"decord {decord.__version__}"
PYAV = f"pyav {av.__version__}"
DECODERS = (DECORD, PYAV)
# decoded RGB per read: small enough that a chunk is still in the core's cache when it is resized
# (2 MiB read 5-30% faster than 32 MiB through decode + resize on 176x144 to 720x528 videos)
CHUNK_BYTES = 2 * 2**20
# decord silently replaces a frame it cannot decode by its neighbour; a fault tolerance this small
# makes the first such frame an error (DECORDLimitReachedError) so the video goes to PyAV instead.
_DECORD_FAULT_TOL = "0.000001"


class VideoError(Failure):
    """A video that cannot be processed: `stage` is open, decode or clips; str() is the reason.
    `final` errors (no file, a directory, empty, unreadable) are not worth a second decoder;
    `frames` is how many frames were decoded before a decode error."""

    def __init__(self, stage: str, message: str, final: bool = False, frames: int = 0):
        super().__init__(message)
        self.stage, self.final, self.frames = stage, final, frames


@dataclass(frozen=True)
class VideoInfo:
    """What the container says: frame count (a claim until decoded), average fps, decoded frame
    size (after rotation) and the codec."""

    num_frames: int
    fps: float
    height: int
    width: int
    codec: str = ""


# FFmpeg error codes that decord prints as bare numbers
_AVERRORS = {"-1094995529": "invalid data", "-11": "resource temporarily unavailable (EAGAIN)",
             "-541478725": "unexpected end of file"}


def clean_decoder_message(exc: BaseException | str) -> str:
    """decord's text minus its '[hh:mm:ss] /src/file.cc:123:' prefixes and C++ check
    expressions, on one line, with FFmpeg's numeric error codes named."""
    text = re.sub(r"\[\d\d:\d\d:\d\d\] \S+?:\d+: ", "", str(exc))
    text = re.sub(r"Check failed: .*? \((-?\d+) vs\. 0\) ",
                  lambda m: f"FFmpeg error {m.group(1)} ({_AVERRORS.get(m.group(1), 'see FFmpeg')}): ", text)
    text = re.sub(r"\[0x[0-9a-f]+\]|\[\S+ @ 0x[0-9a-f]+\] ", "", text)
    text = " ".join(text.split())
    return (text[:300] + "...") if len(text) > 300 else (text or type(exc).__name__)


def check_file(path: str) -> None:
    """The errors no decoder can get past, each with its own message."""
    if not os.path.exists(path):
        raise VideoError("open", "no such file", final=True)
    if os.path.isdir(path):
        raise VideoError("open", "is a directory, not a video file", final=True)
    try:
        with open(path, "rb") as handle:
            empty = not handle.read(1)
    except OSError as exc:
        raise VideoError("open", f"cannot read: {exc.strerror or exc}", final=True) from None
    if empty:
        raise VideoError("open", "empty file (0 bytes)", final=True)


def _chunk_frames(height: int, width: int) -> int:
    """Frames per read: about CHUNK_BYTES of decoded RGB, between 4 and 64 frames."""
    return int(min(64, max(4, CHUNK_BYTES // max(height * width * 3, 1))))


class DecordReader:
    """A decord reader that yields the frames of one video in order, a bounded chunk at a time.

    Sequential reads cost one decode per frame; cutting overlapping clips with per-clip seeks is
    4-12x slower (reference/environment.md section 4). Memory is O(chunk), whatever the length.
    decord applies rotation metadata itself.
    """

    name = DECORD

    def __init__(self, path: str, num_threads: int = 1):
        self.path, self.repaired = path, 0
        check_file(path)
        try:
            self._reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=num_threads,
                                              fault_tol=_DECORD_FAULT_TOL)
            num_frames = len(self._reader)
            fps = float(self._reader.get_avg_fps()) if num_frames else 0.0
        except DECODER_ERRORS as exc:
            message = clean_decoder_message(exc)
            if "cannot find video stream" in message:
                raise VideoError("open", "no video stream it can decode") from None
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
            message = clean_decoder_message(exc)
            if "recovered from nearest frames" in message:
                message = "a frame in this range could not be decoded (decord would repeat its neighbour)"
            raise VideoError("decode", f"decoding failed in frames {start}-{stop - 1} of {len(self._reader)}: "
                                       f"{message}", frames=start) from None

    def close(self) -> None:
        """Let decord's decoder thread go (before its log is read)."""
        self.__dict__.pop("_reader", None)

    def chunks(self) -> Iterator[np.ndarray]:
        """Yield uint8 RGB frames (n, H, W, 3) in order; a decode error raises VideoError (the
        reader is dead afterwards: decord cannot resume a stream that failed)."""
        step = _chunk_frames(self.info.height, self.info.width)
        yield self._first
        for start in range(1, self.info.num_frames, step):
            yield self._read(start, min(start + step, self.info.num_frames))


class PyAVReader:
    """The second decoder: PyAV, which bundles a current FFmpeg (AV1, current HEVC and VP9).

    It reads packets in order and converts each frame to RGB with FFmpeg's swscale, as decord does,
    and applies rotation metadata the way decord does. Frames FFmpeg marks corrupt (error concealment)
    or decode errors it logs are counted in `repaired`: such a video is never recorded as plain ok.
    """

    name = PYAV

    def __init__(self, path: str, num_threads: int = 1):
        self.path, self.repaired, self._errors = path, 0, 0
        check_file(path)
        try:
            self._container = av.open(path, metadata_errors="ignore")
        except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
            raise VideoError("open", f"not a readable video ({clean_decoder_message(exc)})") from None
        if not self._container.streams.video:
            others = [s.type for s in self._container.streams]
            what = f"{others.count('audio')} audio stream(s)" if "audio" in others else "an empty container"
            self._container.close()
            raise VideoError("open", f"no video stream ({what})", final=True)
        self._stream = stream = self._container.streams.video[0]
        context = stream.codec_context
        self.codec = f"{context.name} {context.width}x{context.height}"
        context.thread_count = num_threads
        rate = stream.average_rate or stream.guessed_rate
        self._frames = self._decode()
        try:
            self._first = next(self._frames)
        except StopIteration:
            raise VideoError("open", "the video stream has no frames") from None
        self.info = VideoInfo(int(stream.frames or 0), float(rate) if rate else 0.0,
                              self._first.shape[0], self._first.shape[1], context.name)

    def _decode(self) -> Iterator[np.ndarray]:
        count = 0
        with av.logging.Capture(True) as logs:
            try:
                for frame in self._container.decode(self._stream):
                    if frame.is_corrupt:
                        self.repaired += 1
                    image = frame.to_ndarray(format="rgb24")
                    turns = (frame.rotation // 90) % 4  # -90 (a portrait phone video): 3 turns, as decord
                    if turns:
                        image = np.ascontiguousarray(np.rot90(image, k=turns))
                    count += 1
                    yield image
            except (av.error.FFmpegError, ValueError) as exc:
                stage = "open" if count == 0 else "decode"
                raise VideoError(stage, f"decoding failed after frame {count}: {clean_decoder_message(exc)}",
                                 frames=count) from None
            finally:
                self._errors = sum(1 for level, _, _ in logs if level <= av.logging.ERROR)
                self._container.close()
        if self._errors and not self.repaired:  # FFmpeg concealed an error without flagging the frame
            self.repaired = 1

    def close(self) -> None:
        self._container.close()

    def chunks(self) -> Iterator[np.ndarray]:
        """Yield uint8 RGB frames (n, H, W, 3) in order, about CHUNK_BYTES at a time."""
        step = _chunk_frames(self.info.height, self.info.width)
        batch = [self._first]
        try:
            for image in self._frames:
                batch.append(image)
                if len(batch) == step:
                    yield np.stack(batch)
                    batch = []
        except VideoError:
            if batch:  # the frames before the damage still count (--keep-partial)
                yield np.stack(batch)
            raise
        if batch:
            yield np.stack(batch)


READERS = (DecordReader, PyAVReader)
# PyAV alone for the MPEG program and transport streams: decord 0.6.0 repeats a frame in place of one
# it loses on healthy ones (its fault tolerance stops it, after frames were sent for nothing) and
# cannot open MPEG-1/2 video elementary streams at all. A fallback to decord would add nothing.
MPEG_STREAM_READERS = (PyAVReader,)
SNIFF_BYTES = 4096  # enough for 8 transport stream packets whatever the first one's offset
_TS_PACKET_SIZES = (188, 192, 204)  # TS; M2TS/AVCHD (4-byte time code prefix); DVB with FEC bytes
_TS_PACKETS_NEEDED = 8  # sync bytes in a row (fewer only in a file too short to hold that many)


def _is_mpeg_stream(head: bytes) -> bool:
    """Whether `head` starts an MPEG program stream, an MPEG-1/2 video elementary stream or an MPEG
    transport stream (any of _TS_PACKET_SIZES, the first sync byte within the first packet)."""
    zeros = len(head) - len(head.lstrip(b"\0"))  # a start code may have more than two leading zeros
    if zeros >= 2 and head[zeros:zeros + 2] in (b"\x01\xba", b"\x01\xbb", b"\x01\xb3"):
        return True  # pack header, system header, sequence header
    for size in _TS_PACKET_SIZES:
        for offset in range(min(size, len(head))):
            packets = min(_TS_PACKETS_NEEDED, (len(head) - offset + size - 1) // size)
            if packets >= 3 and all(head[offset + k * size] == 0x47 for k in range(packets)):
                return True
    return False


def readers_for(path: str) -> tuple[type, ...]:
    """The readers to try on `path`, in order, chosen from its first SNIFF_BYTES bytes (one read;
    the name's extension does not count): MPEG_STREAM_READERS for an MPEG program stream (pack
    header 00 00 01 BA, or a system header 00 00 01 BB), an MPEG-1/2 video elementary stream
    (sequence header 00 00 01 B3) or an MPEG transport stream (sync byte 0x47 every 188 bytes,
    every 192 in M2TS, every 204 with FEC bytes); READERS for anything else, and for anything that
    is not a regular file or cannot be read here (a FIFO is never read: its bytes would be lost;
    check_file reports the unreadable)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # before open(): opening a FIFO waits for a writer
            return READERS
        with open(path, "rb") as handle:
            head = handle.read(SNIFF_BYTES)
    except (OSError, ValueError):
        return READERS
    return MPEG_STREAM_READERS if _is_mpeg_stream(head) else READERS
