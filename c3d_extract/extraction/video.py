"""Reading videos: PyAV (a current FFmpeg) first, decord 0.6.0 for what PyAV cannot read. Both read
sequentially in bounded chunks and turn their error traps into one clear message per file
(reference/environment.md); both say when they repaired frames instead of decoding them. PyAV reads
first because it is faster at equal pixels on every codec both read (bench/results.md, "Reader order").
"""

from __future__ import annotations

import itertools
import os
import re
import stat
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np

import av
import cv2
import decord
from av.video.reformatter import VideoReformatter

from c3d_extract.errors import Failure

decord.logging.set_level(decord.logging.QUIET)

# decord 0.6.0 raises RuntimeError for unreadable containers, DECORDError (not a RuntimeError
# subclass) for missing streams and mid-stream decode failures, and DECORDLimitReachedError (neither)
# when its fault tolerance is exceeded.
DECODER_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, decord.DECORDError,
                                                   decord._ffi.base.DECORDLimitReachedError)
DECORD = f"decord {decord.__version__}"
PYAV = f"pyav {av.__version__}"
DECODERS = (PYAV, DECORD)  # in the order they are tried
# decoded RGB per read: small enough that a chunk is still in the core's cache when it is resized
# (2 MiB read 5-30% faster than 32 MiB through decode + resize on 176x144 to 720x528 videos)
CHUNK_BYTES = 2 * 2**20
# decord silently replaces a frame it cannot decode by its neighbour; a fault tolerance this small
# makes the first such frame an error (DECORDLimitReachedError): its try fails instead of repairing.
_DECORD_FAULT_TOL = "0.000001"
# A decoded stream may fall short of (or exceed) what its container declares by this many frames or
# this share, whichever is larger, before it counts as damaged: every healthy file in the tests and
# in shared/videos matches its declaration exactly (README "Damage the decoders conceal").
_TIMELINE_FRAMES, _TIMELINE_SHARE = 2, 0.10
# an interval between two frames this many times the median one is a hole in the timeline
_GAP_INTERVALS = 4
# formats whose duration FFmpeg estimates from the bit rate: no declaration to hold a stream to
_ESTIMATED_DURATION = {"mpeg", "mpegts", "mpegvideo", "m4v", "h264", "hevc", "rawvideo"}
# FFmpeg's VP8 decoder drops the error of a frame whose coefficients run past their partition when it
# decodes on one thread (or frame threads), and outputs the frame as garbage, flagged nowhere; with
# slice threads avcodec_send_packet returns it (InvalidDataError). PyAVReader decodes VP8 this way (the
# same pixels); decord, which reads a VP8 file only after PyAV failed on it, checks it first with a
# slice-threaded decode of its own without loop filter (which does not change what is detected).
_VP8_SLICE_THREADS = 2


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


@dataclass(frozen=True)
class Declared:
    """What a container declares of its first video stream itself before any frame is decoded: the
    frame count (0 where it has none), the stream's duration in seconds (None where it declares none
    of its own, or only one estimated from the bit rate), and the codec's name. Damage that a
    decoder conceals often shows only as a stream that ends far before (or runs far past) this."""

    frames: int = 0
    seconds: Optional[float] = None
    codec: str = ""
    container: str = ""  # FFmpeg's name of the format ("matroska,webm", "avi", ...)

    @classmethod
    def of(cls, container, stream) -> "Declared":
        """The declaration of `stream` in an open PyAV `container`: the stream's own, never the
        container's overall duration where other streams exist (that is the longest one's)."""
        codec = stream.codec_context.name if stream.codec_context is not None else ""
        if container.format.name in _ESTIMATED_DURATION:
            return cls(0, None, codec, container.format.name)
        return cls(_declared_frames(container, stream), _declared_seconds(container, stream), codec,
                   container.format.name)

    @classmethod
    def probe(cls, path: str) -> "Declared":
        """The declaration read by opening `path` with PyAV (headers only: no frame is decoded
        beyond what FFmpeg's stream probe does); an empty one where PyAV cannot open it."""
        try:
            with _ffmpeg_log():
                with av.open(path, metadata_errors="ignore") as container:
                    if not container.streams.video:
                        return cls()
                    return cls.of(container, container.streams.video[0])
        except (av.error.FFmpegError, UnicodeDecodeError, ValueError):
            return cls()

    def mismatch(self, frames: int, end: Optional[float]) -> str:
        """Why `frames` decoded frames, the last ending at `end` seconds from the stream's start,
        are not this declared stream; "" when they are (within the tolerance)."""
        if self.frames:
            slack = max(_TIMELINE_FRAMES, self.frames * _TIMELINE_SHARE)
            if abs(frames - self.frames) > slack:
                return f"{frames} frames decoded where the container declares {self.frames}"
        elif self.seconds and end is not None:
            slack = max(_TIMELINE_FRAMES * end / max(frames, 1), self.seconds * _TIMELINE_SHARE)
            if end < self.seconds - slack:
                return (f"the stream ends at {end:.2f} s of the {self.seconds:.2f} s its container "
                        f"declares ({frames} frames decoded)")
        return ""


# Matroska's track statistics tag (FFmpeg's muxer writes DURATION, mkvmerge DURATION-eng): the end
# of the track's last frame, "HH:MM:SS.nnnnnnnnn"
_DURATION_TAG = re.compile(r"^(\d+):(\d\d):(\d\d(?:\.\d+)?)$")


def _declared_frames(container, stream) -> int:
    """The frames the stream declares it will show. MP4/MOV: its samples less those its edit list
    cuts (FFmpeg decodes and drops them: index entries flagged discard). AVI: the stream header's
    count less the zero-size chunks its index lists (avi_repeat_chunks). 0 where nothing is declared."""
    frames = int(stream.frames or 0)
    if not frames:
        return 0
    name = container.format.name
    if name == "avi":
        return frames - avi_repeat_chunks(container.name, stream.index, frames)
    entries = getattr(stream, "index_entries", None)
    if name.startswith("mov,") and entries is not None and len(entries) == frames:
        return frames - sum(1 for entry in entries if entry.is_discard)
    return frames


_IDX1_ENTRY = np.dtype([("id", "S4"), ("flags", "<u4"), ("offset", "<u4"), ("size", "<u4")])


def avi_repeat_chunks(path: str, number: int, frames: int) -> int:
    """How many of AVI stream `number`'s `frames` (its header's count) are zero-size chunks in the
    file's idx1 index: AVI's 'repeat the previous frame', which capture tools write for a still
    scene and FFmpeg skips (it decodes the others only). 0 where the index is absent, or does not
    list exactly `frames` chunks of that stream (a damaged index says nothing: the header's count
    stands). Reads the top-level chunk headers and the index, nothing else."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:] != b"AVI ":
                return 0
            end, at = min(12 + int.from_bytes(head[4:8], "little"), os.fstat(handle.fileno()).st_size), 12
            while at + 8 <= end:
                handle.seek(at)
                chunk = handle.read(8)
                size = int.from_bytes(chunk[4:8], "little")
                if chunk[:4] == b"idx1":
                    data = handle.read(min(size, end - at - 8))
                    break
                at += 8 + size + (size & 1)
            else:
                return 0
    except (OSError, ValueError):
        return 0
    index = np.frombuffer(data[:len(data) // 16 * 16], _IDX1_ENTRY)
    ids = index["id"].astype("S4")
    mine = np.isin(ids, [b"%02ddc" % number, b"%02ddb" % number])
    if int(mine.sum()) != frames:
        return 0
    return int((index["size"][mine] == 0).sum())


def _declared_seconds(container, stream) -> Optional[float]:
    """How long the stream declares it runs, from its first frame: its own duration (MP4/MOV per
    track, AVI from the stream header); Matroska/WebM's track DURATION tag less the track's start;
    the container's duration only where the video is its only stream; else None."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    for key, value in stream.metadata.items():
        match = _DURATION_TAG.match(value.strip()) if key.upper().split("-")[0] == "DURATION" else None
        if match:
            end = int(match[1]) * 3600 + int(match[2]) * 60 + float(match[3])
            start = stream.start_time * stream.time_base if stream.start_time and stream.time_base else 0
            start = float(start)
            return end - start if end > start else None
    others = [s for s in container.streams if s is not stream and s.type != "attachment"]
    if not others and container.duration:
        return container.duration / 1e6
    return None


def _ffmpeg_log(local: bool = False) -> av.logging.Capture:
    """PyAV's capture of FFmpeg's log lines at error level and above, from every thread (a decoder's
    slice threads log too), one line per message. PyAV's default level (None) hands every line to
    FFmpeg's own printer, so a capture alone sees nothing; repeats are not folded, else one video's
    last line would be reported in the next one's."""
    av.logging.set_skip_repeated(False)
    if av.logging.get_level() is None or av.logging.get_level() < av.logging.ERROR:
        av.logging.set_level(av.logging.ERROR)
    return av.logging.Capture(local)


class _OpenLog:
    """An _ffmpeg_log capture held open across a reader's life (its decoding is a generator): `lines`
    fills while it is open, `end()` closes it once, whoever calls it first. `local`: only the lines
    of FFmpeg calls made in this thread (a reader in a thread beside others: nvdec.DeviceReader)."""

    def __init__(self, local: bool = False):
        self._capture = _ffmpeg_log(local)
        self.lines = self._capture.__enter__()

    def end(self) -> None:
        if self._capture is not None:
            self._capture.__exit__(None, None, None)
            self._capture = None


def vp8_damage(path: str) -> Optional[str]:
    """Decode `path`'s VP8 stream with slice threads and no loop filter, for the error FFmpeg drops
    when it decodes on one thread (see _VP8_SLICE_THREADS): the reason, or None when none came."""
    count = 0
    try:
        with _ffmpeg_log():
            with av.open(path, metadata_errors="ignore") as container:
                stream = container.streams.video[0]
                _slice_threads(stream.codec_context)
                stream.codec_context.options = {"skip_loop_filter": "all"}
                for _ in container.decode(stream):
                    count += 1
    except (av.error.FFmpegError, ValueError) as exc:
        return f"VP8 frame {count} is damaged (a slice-threaded decode says: {clean_decoder_message(exc)})"
    return None


def _slice_threads(context) -> None:
    context.thread_type = "SLICE"
    context.thread_count = _VP8_SLICE_THREADS


def _chunk_frames(height: int, width: int) -> int:
    """Frames per read: about CHUNK_BYTES of decoded RGB, between 4 and 64 frames."""
    return int(min(64, max(4, CHUNK_BYTES // max(height * width * 3, 1))))


class _DLPack:
    """A decord NDArray seen through the DLPack protocol, for `np.from_dlpack`: the array shares its
    memory (decord's `asnumpy` copies it once more; 1.2x on the whole read)."""

    def __init__(self, array):
        self.array = array

    def __dlpack__(self, **_) -> object:
        return self.array.to_dlpack()

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # kDLCPU, device 0


class DecordReader:
    """A decord reader that yields the frames of one video in order, a bounded chunk at a time: the
    second reader, for what PyAV cannot open or decode.

    Sequential reads cost one decode per frame; cutting overlapping clips with per-clip seeks is
    4-12x slower (reference/environment.md section 4). Memory is O(chunk), whatever the length.
    decord applies rotation metadata itself.
    """

    name = DECORD
    crops = False  # yields decoded frames (decode.decode_frames resizes and crops them)

    def __init__(self, path: str, num_threads: int = 1, vp8_check: bool = True):
        self.path, self.repaired = path, 0
        check_file(path)
        self.declared = Declared.probe(path)
        if vp8_check and self.declared.codec == "vp8":
            damage = vp8_damage(path)  # decord's FFmpeg conceals it the same way, silently
            if damage:
                raise VideoError("decode", damage)
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
            return np.from_dlpack(_DLPack(self._reader.get_batch(list(range(start, stop)))))
        except DECODER_ERRORS as exc:
            message = clean_decoder_message(exc)
            if "recovered from nearest frames" in message:
                message = "a frame in this range could not be decoded (decord would repeat its neighbour)"
            raise VideoError("decode", f"decoding failed in frames {start}-{stop - 1} of {len(self._reader)}: "
                                       f"{message}", frames=start) from None

    def close(self) -> None:
        """Let decord's decoder thread go (before its log is read)."""
        self.__dict__.pop("_reader", None)

    def chunks(self, wanted: Optional[Callable[[int], bool]] = None) -> Iterator[np.ndarray]:
        """Yield uint8 RGB frames (n, H, W, 3) in order; a decode error raises VideoError (the
        reader is dead afterwards: decord cannot resume a stream that failed). decord converts every
        frame whatever `wanted` says (its decoding thread does), so all frames are yielded."""
        step = _chunk_frames(self.info.height, self.info.width)
        yield self._first
        for start in range(1, self.info.num_frames, step):
            yield self._read(start, min(start + step, self.info.num_frames))
        self._check_timeline()

    def _check_timeline(self) -> None:
        """decord counts the packets it could demux: a container that breaks midway ends its stream
        there without an error, so the count and the last frame's end are held to the declaration."""
        frames = self.info.num_frames
        try:
            end = float(self._reader.get_frame_timestamp(frames - 1)[1])
        except DECODER_ERRORS + (IndexError,):
            end = None
        mismatch = self.declared.mismatch(frames, end) or self._gap()
        if mismatch:
            raise VideoError("decode", mismatch, frames=frames)

    def _gap(self) -> str:
        """A span cut out of a container whose frames keep their timestamps (Matroska, WebM) leaves
        a hole in the timeline where no frame was demuxed: the reason, or "" where no interval between
        two frames is _GAP_INTERVALS times the median one (jitter changes it by less). Only there: in
        AVI a hole is repeat chunks, in MP4/MOV a phone's pause; both healthy (a cut span in those
        moves the index instead). A pause in a Matroska file costs a second read by PyAV."""
        frames = self.info.num_frames
        if frames < 3 or not self.declared.container.startswith("matroska"):
            return ""
        try:
            starts = np.asarray(self._reader.get_frame_timestamp(list(range(frames))))[:, 0]
        except DECODER_ERRORS + (IndexError,):
            return ""
        steps = np.diff(np.sort(starts))
        usual = float(np.median(steps))
        if usual <= 0 or steps.max() <= _GAP_INTERVALS * usual:
            return ""
        at = int(np.argmax(steps))
        return (f"no frame between {np.sort(starts)[at]:.2f} s and {np.sort(starts)[at + 1]:.2f} s "
                f"({steps.max() / usual:.0f} frame intervals): data is missing")


class PyAVReader:
    """The first reader: PyAV, which bundles a current FFmpeg (AV1, current HEVC and VP9, Theora).

    It reads packets in order and converts each frame to RGB with FFmpeg's swscale through one
    reformatter per reader on one thread (`frame.to_ndarray` builds a new converter, with a thread
    per core, for every frame: the same pixels 1.3-2.4x slower), straight into the chunk it hands on,
    and applies rotation metadata the way decord does. Frames FFmpeg marks corrupt (error
    concealment) or decode errors it logs are counted in `repaired`: such a video is never recorded
    as plain ok. VP8 is decoded with slice threads, so the damage FFmpeg drops on one thread raises
    here (see _VP8_SLICE_THREADS) instead of needing a second decode.
    """

    name = PYAV
    crops = False  # yields decoded frames (decode.decode_frames resizes and crops them)
    _OPEN_FAILED = "not a readable video"
    _LOCAL_LOG = False  # FFmpeg's lines of every thread: its own frame and slice threads log too

    def __init__(self, path: str, num_threads: int = 1, vp8_check: bool = True):
        self.path, self.repaired, self._errors = path, 0, 0
        check_file(path)
        self._log = _OpenLog(self._LOCAL_LOG)  # the container's own errors count too
        try:
            self._container = self._open(path)
        except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
            self._log.end()
            raise VideoError("open", f"{self._OPEN_FAILED} ({clean_decoder_message(exc)})") from None
        if not self._container.streams.video:
            others = [s.type for s in self._container.streams]
            what = f"{others.count('audio')} audio stream(s)" if "audio" in others else "an empty container"
            self._container.close()
            self._log.end()
            raise VideoError("open", f"no video stream ({what})", final=True)
        self._stream = stream = self._container.streams.video[0]
        context = stream.codec_context
        if context is None:  # FFmpeg has no decoder for the codec the (damaged?) header names
            self._container.close()
            self._log.end()
            raise VideoError("open", "the video stream's codec is unknown to FFmpeg (no decoder for it: "
                                     "a damaged header, or a codec it does not support)")
        self.codec = f"{context.name} {context.width}x{context.height}"
        self.declared = Declared.of(self._container, stream)
        refusal = self._refuse(stream)
        if refusal:
            self.close()
            raise VideoError("open", refusal)
        context.thread_count = num_threads
        if vp8_check and context.name == "vp8":  # this read is the check: no second decode
            _slice_threads(context)
        rate = stream.average_rate or stream.guessed_rate
        self._rate = float(rate) if rate else 0.0  # before the first frame: _check_timeline reads it
        self._reformatter = VideoReformatter()
        self._frames = self._decode()
        try:
            self._first = next(self._frames)
        except StopIteration:
            said = [message for level, _, message in self._log.lines if level <= av.logging.ERROR]
            raise VideoError("open", "the video stream has no frames" + (
                f" (FFmpeg: {clean_decoder_message(said[0])})" if said else "")) from None
        height, width = _rgb_shape(self._first)
        self.info = VideoInfo(int(stream.frames or 0), self._rate, height, width, context.name)

    def _open(self, path: str):
        """The open container (a subclass opens it with a hardware decoder: nvdec.NvdecReader)."""
        return av.open(path, metadata_errors="ignore")

    def _refuse(self, stream) -> str:
        """Why this reader does not take `stream` (a subclass's codec list), "" when it does."""
        return ""

    def _decode(self) -> Iterator["av.VideoFrame"]:
        count, last = 0, None
        logs = self._log.lines
        try:
            for frame in _video_frames(self._container, self._stream):
                if frame.is_corrupt:
                    self.repaired += 1
                count += 1
                last = frame.pts if frame.pts is not None else last
                yield frame
        except (av.error.FFmpegError, ValueError) as exc:
            stage = "open" if count == 0 else "decode"
            raise VideoError(stage, f"decoding failed after frame {count}: {clean_decoder_message(exc)}",
                             frames=count) from None
        finally:
            self._errors = sum(1 for level, _, _ in logs if level <= av.logging.ERROR)
            self._container.close()
            self._log.end()
        if count:  # none: __init__ says so
            self._check_timeline(count, last)
        if self._errors and not self.repaired:  # FFmpeg concealed an error without flagging the frame
            self.repaired = 1

    def _convert(self, frame: "av.VideoFrame", slot: np.ndarray) -> None:
        """`frame` as rgb24 into `slot` (H, W, 3), turned by its rotation metadata: one swscale pass
        into the frame's own buffer, one copy of its rows (line stride honoured) into the slot."""
        rgb = self._reformatter.reformat(frame, format="rgb24", threads=1)
        plane = rgb.planes[0]
        image = np.ndarray((rgb.height, rgb.width, 3), np.uint8, plane, strides=(plane.line_size, 3, 1))
        turns = (frame.rotation // 90) % 4  # -90 (a portrait phone video): 3 turns, as decord
        if turns:  # np.rot90(image, k=turns), as OpenCV's SIMD transpose (a strided numpy copy is 10x slower)
            cv2.rotate(image, _ROTATE[turns], dst=slot)
        else:
            slot[...] = image

    def _check_timeline(self, count: int, last_pts: Optional[int]) -> None:
        """A stream that ends far before its declaration is cut (an error: partial with
        --keep-partial); one that runs far past it holds frames the container did not declare
        (duplicated data), counted as repaired."""
        stream, rate = self._stream, self._rate
        end = None
        if last_pts is not None and stream.time_base:
            end = float((last_pts - (stream.start_time or 0)) * stream.time_base) + (1 / rate if rate else 0)
        mismatch = self.declared.mismatch(count, end)
        if mismatch and self.declared.frames and count > self.declared.frames:
            self.repaired = max(self.repaired, count - self.declared.frames)
        elif mismatch:
            raise VideoError("decode", mismatch, frames=count)

    def close(self) -> None:
        self._container.close()
        self._log.end()

    def chunks(self, wanted: Optional[Callable[[int], bool]] = None) -> Iterator[np.ndarray]:
        """Yield uint8 RGB frames (n, H, W, 3) in order, about CHUNK_BYTES at a time, each chunk a
        fresh array the frames were converted into. Frame i is converted only where `wanted(i)` (all
        without it); the others are decoded (the stream needs them) and left black. A stream whose
        frame size changes is a decode error there."""
        frames = itertools.chain([self._first], self._frames)
        self._first = None
        chunk, fill, index = None, 0, 0
        try:
            for frame in frames:
                shape = _rgb_shape(frame)
                if chunk is None:
                    chunk, fill = np.empty((_chunk_frames(*shape), *shape, 3), np.uint8), 0
                elif chunk.shape[1:3] != shape:  # chunks and clips need one size
                    raise VideoError("decode", f"the frame size changes at frame {index}, from {chunk.shape[2]}x"
                                     f"{chunk.shape[1]} to {shape[1]}x{shape[0]} (damaged data, or a stream "
                                     f"that changes size: not supported)", frames=index)
                if wanted is None or wanted(index):
                    self._convert(frame, chunk[fill])
                else:
                    chunk[fill] = 0
                fill += 1
                index += 1
                if fill == len(chunk):
                    yield chunk
                    chunk, fill = np.empty_like(chunk), 0
        except VideoError:
            if fill:  # the frames before the damage still count (--keep-partial)
                yield chunk[:fill]
            raise
        except av.error.FFmpegError as exc:  # the conversion (a format swscale cannot convert)
            raise VideoError("decode", f"cannot convert frame {index} to RGB: {clean_decoder_message(exc)}",
                             frames=index) from None
        if fill:
            yield chunk[:fill]


def _video_frames(container, stream) -> Iterator:
    """`container.decode(stream)`, but for a stream FFmpeg finds in the middle of the file (FLV
    announces streams in its packets, and damage can make one up): PyAV 18's demux flushes every
    stream by indexes into a list made at open, and raises IndexError past it. `stream`'s own flush
    comes first (its index is lower), so that IndexError comes after its last frame."""
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except IndexError:  # the flush of streams that came later: `stream` is done
            return
        yield from packet.decode()


# np.rot90's k counter-clockwise quarter turns as cv2.rotate codes
_ROTATE = {1: cv2.ROTATE_90_COUNTERCLOCKWISE, 2: cv2.ROTATE_180, 3: cv2.ROTATE_90_CLOCKWISE}


def _rgb_shape(frame: "av.VideoFrame") -> tuple[int, int]:
    """(H, W) of `frame` as RGB after its rotation metadata is applied."""
    turns = (frame.rotation // 90) % 4
    return (frame.width, frame.height) if turns % 2 else (frame.height, frame.width)


# PyAV first for every codec: at equal pixels (bit-identical rgb24 for 8-bit video) it is faster than
# decord on each one both read (bench/results.md, "Reader order"); decord reads what PyAV cannot open
# or decode. A video PyAV fails in midway is read again by decord from the start (decode.decode_frames).
READERS = (PyAVReader, DecordReader)
# PyAV alone for the MPEG program and transport streams: decord 0.6.0 repeats a frame in place of one
# it loses on healthy ones (its fault tolerance stops it) and drops a transport stream's first GOP,
# and cannot open MPEG-1/2 video elementary streams at all. A fallback to decord would add nothing.
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
        for offset in (at for at in range(min(size, len(head))) if head[at] == 0x47):  # the first sync byte
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
