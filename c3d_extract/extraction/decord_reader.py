"""The second reader: decord 0.6.0, for what PyAV cannot open or decode. It reads in order, a bounded
chunk at a time, and holds what it read to what the container declares (damage.py).
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional

import decord
import numpy as np

from c3d_extract.extraction.damage import Declared, timeline_hole, vp8_damage
from c3d_extract.extraction.ffmpeg_log import clean_decoder_message
from c3d_extract.extraction.reader_base import VideoError, VideoInfo, check_file, chunk_frames

decord.logging.set_level(decord.logging.QUIET)

# decord 0.6.0 raises RuntimeError for unreadable containers, DECORDError (not a RuntimeError
# subclass) for missing streams and mid-stream decode failures, and DECORDLimitReachedError (neither)
# when its fault tolerance is exceeded.
DECODER_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, decord.DECORDError,
                                                   decord._ffi.base.DECORDLimitReachedError)
DECORD = f"decord {decord.__version__}"
# decord silently replaces a frame it cannot decode by its neighbour; a fault tolerance this small
# makes the first such frame an error (DECORDLimitReachedError): its try fails instead of repairing.
_DECORD_FAULT_TOL = "0.000001"


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
        step = chunk_frames(self.info.height, self.info.width)
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
        """A hole in the timeline of a Matroska or WebM stream (damage.timeline_hole), "" elsewhere:
        in AVI a hole is repeat chunks, in MP4/MOV a phone's pause; both healthy (a cut span in those
        moves the index instead). A pause in a Matroska file costs a second read by PyAV."""
        frames = self.info.num_frames
        if frames < 3 or not self.declared.container.startswith("matroska"):
            return ""
        try:
            starts = np.asarray(self._reader.get_frame_timestamp(list(range(frames))))[:, 0]
        except DECODER_ERRORS + (IndexError,):
            return ""
        return timeline_hole(starts)
