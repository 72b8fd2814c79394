"""What runs in a decoder process: one video from file to resized, cropped frames (decord, then PyAV
when decord cannot read it or would repair frames). The clips are cut where they are batched
(assemble.py), so each frame travels from a decoder process once although it is in two clips.
This module and what it imports stay free of torch: every decoder process imports it (torch would
cost each one ~1.5 s of CPU at start, taken from the network on a small machine).

The stream of one video is Frames chunks then End, or Failed. Each decoder's try is an `attempt`:
when decord fails after some frames were sent, PyAV starts the video again with the next attempt
number, and everything of the older attempt is dropped downstream (ClipAssembler, Collector).
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
import math
import signal
import time
from typing import Iterable, Iterator, Optional, Union

import cv2
import decord
import numpy as np

from c3d_extract.extraction.inputs import VideoJob
from c3d_extract.models.preprocess import InputSpec
from c3d_extract.extraction.video import READERS, VideoError, clean_decoder_message


IDLE = "idle"  # what a decoder process sends when it finished a job


@dataclass
class Frames:
    """Consecutive frames of one video: cropped uint8 (n, h, w, 3) RGB, or as decoded."""

    key: str
    attempt: int
    frames: np.ndarray


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


# how FFmpeg starts a line it logs: "[h264 @ 0x55d0c8a0] error while decoding MB 8 5"
_FFMPEG_LINE = re.compile(r"^\[[\w-]+ @ 0x[0-9a-f]+\] ", re.M)


class NativeStderr:
    """What C code writes on file descriptor 2 (decord's 'ERROR opening', FFmpeg's own lines), caught
    so it is folded into the tool's one line per video instead of reaching the user's terminal.

    Only for decoder processes (fd 2 is the whole process's): `install()` sends fd 2 to a file for
    the process's life (decord's decoder thread also logs between calls). There, decord's FFmpeg
    logs its errors, so the damage it conceals (macroblocks it could not decode, filled in: the frame
    is still returned) is seen and the video goes to PyAV, which counts the repaired frames."""

    _sink = None

    @classmethod
    def install(cls) -> None:
        cls._sink = tempfile.TemporaryFile()
        os.dup2(cls._sink.fileno(), 2)
        decord.logging.set_level(decord.logging.ERROR)

    @classmethod
    def text(cls) -> str:
        """Everything written since the last call (raw), or "" where not installed."""
        if cls._sink is None:
            return ""
        cls._sink.seek(0)
        text = cls._sink.read().decode("utf-8", "replace")
        cls._sink.seek(0)
        cls._sink.truncate()
        return text


def decode_frames(job: VideoJob, spec: InputSpec, resize: bool = True, keep_partial: bool = False,
                  readers: Iterable = READERS) -> Iterator[Union[Frames, End, Failed]]:
    """The frames of one video, resized and cropped (unless `resize` is False: the device does it),
    then End with the video's facts; or Failed. decord reads first; a video it cannot open, fails
    in, or would repair frames of, is read again from the start by PyAV. With `keep_partial`, a video
    that breaks after some frames ends there (status partial:<frames>) instead of failing."""
    notes, stages = [], []
    sent: Optional[tuple[int, int, object]] = None   # (attempt, frames, reader) of the last try that sent frames
    codec = ""
    NativeStderr.text()  # what an earlier video left behind is not this one's
    for attempt, reader_class in enumerate(readers):
        try:
            reader = reader_class(job.path)
        except VideoError as exc:
            if exc.final:
                yield Failed(job.key, exc.stage, str(exc))
                return
            raw = NativeStderr.text().replace(f"ERROR opening: {job.path}, ", "")  # the path is on our line
            native = clean_decoder_message(raw) if raw.strip() else ""
            notes.append(f"{reader_class.name}: {exc}" + (f" ({native})" if native.strip() else ""))
            stages.append(exc.stage)
            continue
        codec = getattr(reader, "codec", codec)
        count = 0
        try:
            for chunk in reader.chunks():
                yield Frames(job.key, attempt, spec.crop_frames(chunk) if resize else chunk)
                count += len(chunk)
                sent = (attempt, count, reader)
        except VideoError as exc:
            notes.append(f"{reader.name}: {exc}")
            stages.append(exc.stage)
            continue
        finally:
            reader.close()  # stops decord's decoder thread before its log is read
        damage = [line for line in NativeStderr.text().splitlines() if _FFMPEG_LINE.match(line)]
        if damage and reader_class is not READERS[-1]:  # every frame came, but FFmpeg concealed errors
            notes.append(f"{reader.name}: FFmpeg reported {len(damage)} decoding error(s), e.g. "
                         f"{clean_decoder_message(damage[0])}")
            stages.append("decode")
            continue
        status = f"repaired:{reader.repaired}" if reader.repaired else "ok"
        yield End(job.key, attempt, _facts(reader, count, status))
        return
    if keep_partial and sent is not None:
        attempt, count, reader = sent
        yield End(job.key, attempt, _facts(reader, count, f"partial:{count}"))
        return
    stage = "decode" if "decode" in stages else "open"
    prefix = f"video stream {codec}: " if codec and stage == "open" else ""
    yield Failed(job.key, stage, prefix + "; ".join(notes))


def _facts(reader, frames: int, status: str) -> dict:
    info = reader.info
    return {"num_frames": frames, "fps": info.fps, "height": info.height, "width": info.width,
            "status": status, "decoder": reader.name}


def serve(tasks, results, heartbeat) -> None:
    """Decode the jobs received on `tasks` until None arrives; `results` is this process's own pipe.
    The first message is the pool's settings (spec, resize, keep_partial): a process can be started
    before they are known (prestart)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    cv2.setNumThreads(1)  # one decoder per core: no thread pool inside the resize
    NativeStderr.install()  # decoders' own lines are folded into each video's one line, not printed

    def send(message) -> None:
        heartbeat.value = math.inf  # waiting on the parent, not hanging
        results.send(message)
        heartbeat.value = time.time()

    try:
        spec, resize, keep_partial = tasks.recv()
    except EOFError:  # the parent is gone (or never needed this spare)
        return

    while True:
        try:
            job = tasks.recv()
        except EOFError:  # the parent is gone
            return
        if job is None:
            return
        heartbeat.value = time.time()
        try:
            for item in decode_frames(job, spec, resize, keep_partial):
                heartbeat.value = time.time()
                send(item)
        except Exception as exc:  # a bug or a decoder surprise must cost one video, not the worker
            send(Failed(job.key, "decode", f"unexpected {type(exc).__name__}: {exc}"))
        send(IDLE)
