"""The first reader: PyAV, which bundles a current FFmpeg. It reads packets in order, converts each
frame to RGB once, counts the frames FFmpeg repaired, and holds the stream to what its container
declares (damage.py).
"""

from __future__ import annotations

import itertools
from typing import Callable, Iterator, Optional

import av
import cv2
import numpy as np
from av.video.reformatter import VideoReformatter

from c3d_extract.extraction.damage import Declared, slice_threads
from c3d_extract.extraction.ffmpeg_log import OpenLog, clean_decoder_message
from c3d_extract.extraction.reader_base import VideoError, VideoInfo, check_file, chunk_frames

PYAV = f"pyav {av.__version__}"


class PyAVReader:
    """The first reader: PyAV, which bundles a current FFmpeg (AV1, current HEVC and VP9, Theora).

    It reads packets in order and converts each frame to RGB with FFmpeg's swscale through one
    reformatter per reader on one thread (`frame.to_ndarray` builds a new converter, with a thread
    per core, for every frame: the same pixels 1.3-2.4x slower), straight into the chunk it hands on,
    and applies rotation metadata the way decord does. Frames FFmpeg marks corrupt (error
    concealment) or decode errors it logs are counted in `repaired`: such a video is never recorded
    as plain ok. VP8 is decoded with slice threads, so the damage FFmpeg drops on one thread raises
    here (see damage._VP8_SLICE_THREADS) instead of needing a second decode.
    """

    name = PYAV
    crops = False  # yields decoded frames (decode.decode_frames resizes and crops them)
    _OPEN_FAILED = "not a readable video"
    _LOCAL_LOG = False  # FFmpeg's lines of every thread: its own frame and slice threads log too

    def __init__(self, path: str, num_threads: int = 1, vp8_check: bool = True):
        self.path, self.repaired, self._errors = path, 0, 0
        check_file(path)
        self._log = OpenLog(self._LOCAL_LOG)  # the container's own errors count too
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
            slice_threads(context)
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
        height, width = rgb_shape(self._first)
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
                shape = rgb_shape(frame)
                if chunk is None:
                    chunk, fill = np.empty((chunk_frames(*shape), *shape, 3), np.uint8), 0
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


def rgb_shape(frame: "av.VideoFrame") -> tuple[int, int]:
    """(H, W) of `frame` as RGB after its rotation metadata is applied."""
    turns = (frame.rotation // 90) % 4
    return (frame.width, frame.height) if turns % 2 else (frame.height, frame.width)
