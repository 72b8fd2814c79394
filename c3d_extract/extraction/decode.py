"""What runs in a decoder process: one video from file to resized, cropped frames (PyAV, then decord
when PyAV cannot open or decode it; PyAV alone for MPEG program and transport streams,
video.readers_for). The clips are cut where they are batched (assemble.py), so each frame
travels from a decoder process once (through a shared ring, ring.py) although it is in two clips.
This module and what it imports stay free of torch: every decoder process imports it (torch would
cost each one seconds of CPU at start, taken from the network on a small machine).

The stream of one video is Frames chunks then End, or Failed. Each decoder's try is an `attempt`:
when PyAV fails after some frames were sent, decord starts the video again with the next attempt
number, and everything of the older attempt is dropped downstream (ClipAssembler, Collector).
Frames no clip reads (InputSpec.frame_used: the odd ones of Res3D) are neither converted to RGB nor
resized: they travel black.
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
from c3d_extract.extraction.remote import FETCH_STAGE, FetchError, fetch, is_url
from c3d_extract.extraction.ring import FrameRing, RingWriter, ring_frames
from c3d_extract.extraction.shards import ShardBroken, members
from c3d_extract.models.preprocess import InputSpec
from c3d_extract.options import ExtractOptions
from c3d_extract.settings import check_resize_on
from c3d_extract.extraction.video import DecordReader, VideoError, clean_decoder_message, readers_for


IDLE = "idle"  # what a decoder process sends when it finished a job


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


@dataclass(frozen=True)
class DecoderSettings:
    """What a decoder process needs to know of its pool: the input spec, where frames are resized
    and cropped (`resize_on` "workers": here; "device": the network's device does it), and whether a
    broken video keeps its first frames."""

    input_spec: InputSpec
    resize_on: str = "workers"
    keep_partial: bool = False
    ring: Optional[str] = None  # where this decoder's shared frame ring is opened (ring.py), if any
    storage_options: Optional[dict] = None  # fsspec storage options for URL inputs (remote.py): never shown
    vp8_check: bool = True  # VP8 decoded with slice threads, which report damage (video._VP8_SLICE_THREADS)

    def __post_init__(self) -> None:
        check_resize_on(self.resize_on)

    @classmethod
    def of(cls, options: ExtractOptions, input_spec: InputSpec, resize_on: str = "workers") -> "DecoderSettings":
        """The decoders' part of a run's options (`resize_on` as resolved: RunSettings.resize_on)."""
        storage = dict(options.storage_options) if options.storage_options is not None else None
        return cls(input_spec, resize_on, options.keep_partial, storage_options=storage,
                   vp8_check=options.vp8_check)


class FrameSender:
    """A decoder's side of its pipe: Frames of one video attempt are gathered into messages of about
    MESSAGE_BYTES (a chunk of a large video is a few frames; each message costs the parent a wake-up
    and a header), sent as a header tuple and the raw bytes (os.write from the array: no pickling)."""

    MESSAGE_BYTES = 2**20

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
            if self._bytes >= self.MESSAGE_BYTES:
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


# how FFmpeg starts a line it logs: "[h264 @ 0x55d0c8a0] error while decoding MB 8 5", a demuxer by its
# formats ("[matroska,webm @ 0x...]"); decord's FFmpeg logs a packet a damaged container cuts short
# with no name at all ("Truncating packet of size 5484 to 2572")
_FFMPEG_LINE = re.compile(r"^(\[[\w,-]+ @ 0x[0-9a-f]+\] |Truncating packet of size )", re.M)


class NativeStderr:
    """What C code writes on file descriptor 2 (decord's 'ERROR opening', FFmpeg's own lines), caught
    so it is folded into the tool's one line per video instead of reaching the user's terminal.

    Only for decoder processes (fd 2 is the whole process's): `install()` sends fd 2 to a file for
    the process's life (decord's decoder thread also logs between calls). There, decord's FFmpeg
    logs its errors, so the damage it conceals (macroblocks it could not decode, filled in: the frame
    is still returned) is seen, and decord's try counts as failed (decord cannot say which frames it
    repaired; PyAV, which counts them, read the video first). PyAV's own FFmpeg logs through PyAV's
    capture (video._ffmpeg_log), not here."""

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


def _damage_lines(text: str) -> list[str]:
    """The lines of caught native output that FFmpeg logged: errors it concealed, among others."""
    return [line for line in text.splitlines() if _FFMPEG_LINE.match(line)]


def _damage_since(offset: int) -> tuple[list[str], int]:
    """FFmpeg's lines among the complete lines NativeStderr caught past byte `offset`, and the offset
    after those lines. One fstat when nothing was written; the file is read with pread, so neither
    its offset (where fd 2 writes) nor its text (NativeStderr.text) changes."""
    sink = NativeStderr._sink
    if sink is None:
        return [], offset
    size = os.fstat(sink.fileno()).st_size
    if size <= offset:
        return [], offset
    data = os.pread(sink.fileno(), size - offset, offset)
    end = data.rfind(b"\n") + 1  # a line FFmpeg is still writing is looked at next time
    return _damage_lines(data[:end].decode("utf-8", "replace")), offset + end


def decode_frames(job: VideoJob, input_spec: InputSpec, resize_on: str = "workers", keep_partial: bool = False,
                  readers: Optional[Iterable] = None, vp8_check: bool = True
                  ) -> Iterator[Union[Frames, End, Failed]]:
    """The frames of one video, resized and cropped (unless `resize_on` is "device": the device does it),
    then End with the video's facts; or Failed. The readers are tried in the order video.readers_for
    gives (PyAV then decord; PyAV alone for MPEG program and transport streams), or in `readers`' order;
    a video one cannot open or fails in is read again from the start by the next one. PyAV counts the
    frames FFmpeg repaired (`repaired:N`). decord cannot: a decord try whose FFmpeg logs a decoding error
    (seen after each chunk; decord logs from a thread of its own, so the moment varies) sends no more
    frames, reads on (so that how the try ends, and its message, do not depend on timing), and counts
    as failed. With `keep_partial`, a video that breaks after some frames ends there (status
    partial:<frames>, the frames the last try that sent any sent) instead of failing. A stream that ends
    far before what its container declares is a decoding error too, and `vp8_check` makes PyAV decode
    VP8 with slice threads, where FFmpeg reports the damage it conceals on one thread (and decord check
    a VP8 stream that way before it reads it: video.Declared, video.vp8_damage). With `resize_on`
    "workers", frames no clip reads (InputSpec.frame_used) are neither converted nor resized (black)."""
    order = tuple(readers) if readers is not None else readers_for(job.path)
    notes, stages = [], []
    sent: Optional[tuple[int, int, object]] = None   # (attempt, frames, reader) of the last try that sent frames
    most: Optional[tuple[int, type]] = None  # (frames, reader class) of the try that sent the most
    codec = ""
    wanted = input_spec.frame_used if resize_on == "workers" else None
    for attempt, reader_class in enumerate(order, job.attempts):
        NativeStderr.text()  # what an earlier video or try left behind is not this try's
        try:
            reader = reader_class(job.path, vp8_check=vp8_check)
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
        watched = reader_class is DecordReader  # its FFmpeg's lines are its only signal of damage
        count, seen, doomed = 0, 0, False
        try:
            for chunk in reader.chunks(wanted):
                if watched and not doomed:
                    found, seen = _damage_since(seen)
                    doomed = bool(found)
                if doomed:  # the try will count as failed: frames sent now would be dropped. The read
                    continue  # goes on so that how it ends, and its message, do not depend on timing
                # a reader that crops itself (nvdec.DeviceReader: on the GPU) hands on what it gives
                crop = wanted is not None and not reader.crops
                frames = input_spec.crop_frames(chunk, count) if crop else chunk
                yield Frames(job.key, attempt, frames)
                count += len(chunk)
                sent = (attempt, count, reader)
                if most is None or count > most[0]:
                    most = (count, reader_class)
        except VideoError as exc:
            notes.append(f"{reader.name}: {exc}")
            stages.append(exc.stage)
            continue
        finally:
            reader.close()  # stops decord's decoder thread before its log is read
        damage = _damage_lines(NativeStderr.text()) if watched else []
        if damage:  # FFmpeg concealed errors (every frame came, or the try stopped sending early)
            notes.append(f"{reader.name}: FFmpeg reported {len(damage)} decoding error(s), e.g. "
                         f"{clean_decoder_message(damage[0])}")
            stages.append("decode")
            continue
        status = f"repaired:{reader.repaired}" if reader.repaired else "ok"
        yield End(job.key, attempt, _facts(reader, count, status))
        return
    if keep_partial and sent is not None:
        if most[0] > sent[1]:  # an earlier try got further than the last one: its frames again, as a new attempt
            sent = yield from _partial_again(job, input_spec, most[1], most[0], job.attempts + len(order), wanted,
                                              vp8_check, sent)
        attempt, count, reader = sent
        yield End(job.key, attempt, _facts(reader, count, f"partial:{count}"))
        return
    stage = "decode" if "decode" in stages else "open"
    prefix = f"video stream {codec}: " if codec and stage == "open" else ""
    yield Failed(job.key, stage, prefix + "; ".join(notes))


def _partial_again(job: VideoJob, input_spec: InputSpec, reader_class: type, frames: int, attempt: int,
                   wanted, vp8_check: bool, sent: tuple) -> Iterator[Frames]:
    """The first `frames` frames of a video read again by `reader_class` (whose try had sent that many
    before it failed, more than a later try did before it failed too: PyAV, then decord, on a file
    broken midway), as attempt `attempt`; returns (attempt, frames sent, reader) for the partial End
    (`sent`, what was sent before, where the reader cannot open the file this time)."""
    try:
        reader, count = reader_class(job.path, vp8_check=vp8_check), 0
    except VideoError:
        return sent
    try:
        for chunk in reader.chunks(wanted):
            chunk = chunk[:frames - count]
            crop = wanted is not None and not reader.crops
            yield Frames(job.key, attempt, input_spec.crop_frames(chunk, count) if crop else chunk)
            count += len(chunk)
            if count == frames:
                break
    except VideoError:
        pass
    finally:
        reader.close()
    return attempt, count, reader


def decode_job(job: VideoJob, decoder: DecoderSettings, progress=lambda: None
               ) -> Iterator[Union[Frames, End, Failed, ShardRead]]:
    """decode_frames for any job: a local file as it is; a URL fetched first into a temporary file
    (remote.fetch; a download that fails is a Failed of stage fetch); a tar shard member by member
    (shards.py), then ShardRead, or a Failed of the shard's own key when it breaks."""
    def frames(key: str, path: str):
        return decode_frames(VideoJob(key, path, attempts=job.attempts), decoder.input_spec, decoder.resize_on,
                             decoder.keep_partial, vp8_check=decoder.vp8_check)

    if job.is_shard:
        try:
            for key, spool in members(job, decoder.storage_options, progress):
                with spool:
                    yield from frames(key, spool.path)
        except ShardBroken as exc:
            yield Failed(job.key, exc.stage, str(exc))
            return
        yield ShardRead(job.key)
    elif is_url(job.path):
        try:
            spool = fetch(job.path, decoder.storage_options, progress)
        except FetchError as exc:
            yield Failed(job.key, FETCH_STAGE, str(exc))
            return
        with spool:
            yield from frames(job.key, spool.path)
    else:
        yield from frames(job.key, job.path)


def _facts(reader, frames: int, status: str) -> dict:
    info = reader.info
    return {"num_frames": frames, "fps": info.fps, "height": info.height, "width": info.width,
            "status": status, "decoder": reader.name}


def serve(tasks, results, heartbeat) -> None:
    """Decode the jobs received on `tasks` until None arrives; `results` is this process's own pipe.
    The first message is the pool's DecoderSettings: a process can be started before they are known
    (prestart)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    cv2.setNumThreads(1)  # one decoder per core: no thread pool inside the resize
    NativeStderr.install()  # decoders' own lines are folded into each video's one line, not printed

    def send(message) -> None:
        heartbeat.value = math.inf  # waiting on the parent, not hanging
        if ring is not None and isinstance(message, Frames):
            ring.write(message.key, message.attempt, message.frames)
        else:
            if ring is not None:
                ring.flush()
            sender.send(message)
        heartbeat.value = time.time()

    try:
        decoder: DecoderSettings = tasks.recv()
    except EOFError:  # the parent is gone (or never needed this spare)
        return

    def beat() -> None:  # a download's progress (remote.fetch) counts as the decoder's
        heartbeat.value = time.time()

    sender, ring = FrameSender(results), None
    if decoder.ring and decoder.resize_on == "workers":  # cropped frames go through shared memory
        try:
            input_spec = decoder.input_spec
            shape = (*input_spec.crop, 3)
            ring = RingWriter(FrameRing.open(decoder.ring, shape, ring_frames(shape, input_spec.clip_len)),
                              input_spec.clip_len, input_spec.stride, results)
        except OSError:  # /proc not readable here: the pipe carries the frames
            ring = None

    while True:
        try:
            job = tasks.recv()
        except EOFError:  # the parent is gone
            return
        if job is None:
            return
        heartbeat.value = time.time()
        try:
            for item in decode_job(job, decoder, beat):
                heartbeat.value = time.time()
                send(item)
        except Exception as exc:  # a bug or a decoder surprise must cost one video, not the worker
            send(Failed(job.key, "decode", f"unexpected {type(exc).__name__}: {exc}"))
        send(IDLE)
