"""The damage checks: what a container declares of its video stream (Declared: frame count, duration,
AVI's repeat chunks), against which a decoded stream that ends early (a cut file) or runs long is held;
a hole in a Matroska timeline; VP8 damage that only a slice-threaded decode reports. Each says why in
a string ("" or None when it found nothing): the readers raise it. No torch.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Optional

import av
import numpy as np

from c3d_extract.extraction.ffmpeg_log import clean_decoder_message, ffmpeg_capture

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
            with ffmpeg_capture():
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


def timeline_hole(starts: np.ndarray) -> str:
    """A span cut out of a container whose frames keep their timestamps (Matroska, WebM) leaves a hole
    in the timeline where no frame was demuxed: the reason, given the frames' start times in seconds,
    or "" where no interval between two frames is _GAP_INTERVALS times the median one (jitter changes
    it by less)."""
    steps = np.diff(np.sort(starts))
    usual = float(np.median(steps))
    if usual <= 0 or steps.max() <= _GAP_INTERVALS * usual:
        return ""
    at = int(np.argmax(steps))
    return (f"no frame between {np.sort(starts)[at]:.2f} s and {np.sort(starts)[at + 1]:.2f} s "
            f"({steps.max() / usual:.0f} frame intervals): data is missing")


def vp8_damage(path: str) -> Optional[str]:
    """Decode `path`'s VP8 stream with slice threads and no loop filter, for the error FFmpeg drops
    when it decodes on one thread (see _VP8_SLICE_THREADS): the reason, or None when none came."""
    count = 0
    try:
        with ffmpeg_capture():
            with av.open(path, metadata_errors="ignore") as container:
                stream = container.streams.video[0]
                slice_threads(stream.codec_context)
                stream.codec_context.options = {"skip_loop_filter": "all"}
                for _ in container.decode(stream):
                    count += 1
    except (av.error.FFmpegError, ValueError) as exc:
        return f"VP8 frame {count} is damaged (a slice-threaded decode says: {clean_decoder_message(exc)})"
    return None


def slice_threads(context) -> None:
    context.thread_type = "SLICE"
    context.thread_count = _VP8_SLICE_THREADS
