"""What runs in a decoder process: one video from file to resized, cropped frames (PyAV, then decord
when PyAV cannot open or decode it; PyAV alone for MPEG program and transport streams,
video.readers_for). The clips are cut where they are batched (assemble.py), so each frame
travels from a decoder process once (through a shared ring, ring.py) although it is in two clips.
This module and what it imports stay free of torch: every decoder process imports it (torch would
cost each one seconds of CPU at start, taken from the network on a small machine).

The stream of one video is Frames chunks then End, or Failed. Each decoder's try is an `attempt`:
when PyAV fails after some frames were sent, decord starts the video again with the next attempt
number, and everything of the older attempt is dropped downstream (one rule: extraction/attempts.py;
a new attempt also starts a new ClipAssembler cutter).
Frames no clip reads (InputSpec.frame_used: the odd ones of Res3D) are neither converted to RGB nor
resized: they travel black.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional, Union

import cv2

from c3d_extract.extraction.decord_reader import DecordReader
from c3d_extract.extraction.ffmpeg_log import NativeStderr, clean_decoder_message, damage_lines, damage_since
from c3d_extract.extraction.inputs import VideoJob
from c3d_extract.extraction.messages import IDLE, ITEM, End, Failed, Frames, FrameSender, Message, ShardRead
from c3d_extract.extraction.reader_base import VideoError
from c3d_extract.extraction.remote import FETCH_STAGE, FetchError, fetch, is_url
from c3d_extract.extraction.ring import FrameRing, RingWriter, ring_frames
from c3d_extract.extraction.shards import ShardBroken, members
from c3d_extract.extraction.video import readers_for
from c3d_extract.models.preprocess import InputSpec
from c3d_extract.options import ExtractOptions
from c3d_extract.settings import check_resize_on


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
    vp8_check: bool = True  # VP8 decoded with slice threads, which report damage (damage._VP8_SLICE_THREADS)

    def __post_init__(self) -> None:
        check_resize_on(self.resize_on)

    @property
    def wanted(self) -> Optional[Callable[[int], bool]]:
        """Which frames a reader converts to RGB: those a clip reads (InputSpec.frame_used) where the
        decoder crops, all (None) where the device resizes (it needs every frame as decoded)."""
        return self.input_spec.frame_used if self.resize_on == "workers" else None

    @classmethod
    def of(cls, options: ExtractOptions, input_spec: InputSpec, resize_on: str = "workers") -> "DecoderSettings":
        """The decoders' part of a run's options (`resize_on` as resolved: RunSettings.resize_on)."""
        storage = dict(options.storage_options) if options.storage_options is not None else None
        return cls(input_spec, resize_on, options.keep_partial, storage_options=storage,
                   vp8_check=options.vp8_check)


def decode_frames(job: VideoJob, decoder: DecoderSettings, readers: Optional[Iterable] = None
                  ) -> Iterator[Union[Frames, End, Failed]]:
    """The frames of one video, resized and cropped (unless `decoder.resize_on` is "device"),
    then End with the video's facts; or Failed. The readers are tried in the order video.readers_for
    gives (PyAV then decord; PyAV alone for MPEG program and transport streams), or in `readers`' order;
    a video one cannot open or fails in is read again from the start by the next one. PyAV counts the
    frames FFmpeg repaired (`repaired:N`). decord cannot: a decord try whose FFmpeg logs a decoding error
    (seen after each chunk; decord logs from a thread of its own, so the moment varies) sends no more
    frames, reads on (so that how the try ends, and its message, do not depend on timing), and counts
    as failed. With `decoder.keep_partial`, a video that breaks after some frames ends there (status
    partial:<frames>, the frames the last try that sent any sent) instead of failing. A stream that ends
    far before what its container declares is a decoding error too, and `decoder.vp8_check` makes PyAV
    decode VP8 with slice threads, where FFmpeg reports the damage it conceals on one thread (and decord check
    a VP8 stream that way before it reads it: damage.Declared, damage.vp8_damage). Frames no clip
    reads are neither converted nor resized where the decoder crops (black: DecoderSettings.wanted)."""
    order = tuple(readers) if readers is not None else readers_for(job.path)
    notes, stages = [], []
    sent: Optional[tuple[int, int, object]] = None   # (attempt, frames, reader) of the last try that sent frames
    most: Optional[tuple[int, type]] = None  # (frames, reader class) of the try that sent the most
    codec = ""
    input_spec, wanted = decoder.input_spec, decoder.wanted
    for attempt, reader_class in enumerate(order, job.attempts):
        NativeStderr.text()  # what an earlier video or try left behind is not this try's
        try:
            reader = reader_class(job.path, vp8_check=decoder.vp8_check)
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
                    found, seen = damage_since(seen)
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
        damage = damage_lines(NativeStderr.text()) if watched else []
        if damage:  # FFmpeg concealed errors (every frame came, or the try stopped sending early)
            notes.append(f"{reader.name}: FFmpeg reported {len(damage)} decoding error(s), e.g. "
                         f"{clean_decoder_message(damage[0])}")
            stages.append("decode")
            continue
        status = f"repaired:{reader.repaired}" if reader.repaired else "ok"
        yield End(job.key, attempt, _facts(reader, count, status))
        return
    if decoder.keep_partial and sent is not None:
        if most[0] > sent[1]:  # an earlier try got further than the last one: its frames again, as a new attempt
            sent = yield from _partial_again(job, decoder, most[1], most[0], job.attempts + len(order), sent)
        attempt, count, reader = sent
        yield End(job.key, attempt, _facts(reader, count, f"partial:{count}"))
        return
    stage = "decode" if "decode" in stages else "open"
    prefix = f"video stream {codec}: " if codec and stage == "open" else ""
    yield Failed(job.key, stage, prefix + "; ".join(notes))


def _partial_again(job: VideoJob, decoder: DecoderSettings, reader_class: type, frames: int, attempt: int,
                   sent: tuple) -> Iterator[Frames]:
    """The first `frames` frames of a video read again by `reader_class` (whose try had sent that many
    before it failed, more than a later try did before it failed too: PyAV, then decord, on a file
    broken midway), as attempt `attempt`; returns (attempt, frames sent, reader) for the partial End
    (`sent`, what was sent before, where the reader cannot open the file this time)."""
    input_spec, wanted = decoder.input_spec, decoder.wanted
    try:
        reader, count = reader_class(job.path, vp8_check=decoder.vp8_check), 0
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
        return decode_frames(VideoJob(key, path, attempts=job.attempts), decoder)

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

    def send(item: Union[Frames, End, Failed, ShardRead, Message]) -> None:
        """Frames into the ring (or gathered for the pipe); anything else, after them, as a Message."""
        heartbeat.value = math.inf  # waiting on the parent, not hanging
        if ring is not None and isinstance(item, Frames):
            ring.write(item.key, item.attempt, item.frames)
        else:
            if ring is not None:
                ring.flush()
            sender.send(item if isinstance(item, (Frames, Message)) else Message(ITEM, item))
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
        send(Message(IDLE))
