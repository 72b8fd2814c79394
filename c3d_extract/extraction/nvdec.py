"""Decoding on the GPU (`--decode-on`): NVDEC through PyAV's hwaccel, the frames converted to RGB,
resized and cropped on the network's device with models/pixels.py, which is bit for bit the CPU path's
arithmetic (swscale's yuv420p -> rgb24, OpenCV's INTER_LINEAR). Where NVDEC decodes exactly (H.264,
HEVC, VP8, VP9 by their specifications), the clips equal the CPU readers'.

Threads of the batching process (DeviceDecoders) take videos from the same queue as the CPU decoder
processes (workers.DecodePool), so both decode at once. A video NVDEC cannot take (a codec or profile
off its list, a pixel format or size models/pixels.py does not reproduce, no driver: the open raises)
or fails in goes back to that queue and to the CPU readers, whose tries are numbered after its own
(VideoJob.attempts), as when one CPU reader follows another. The damage checks are the PyAV reader's
(a subclass of pyav_reader.PyAVReader): the declared length, timestamp holes, FFmpeg's log, corrupt frames.

`DeviceReader(hardware=False)` runs the same device path on PyAV's CPU-decoded planes: the tests hold
it to the CPU readers' frames on any machine. This module imports torch (only the batching process
uses it; decoder processes never import it).
"""

from __future__ import annotations

import itertools
import queue
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import av
import numpy as np
import torch

from c3d_extract.errors import UsageError
from c3d_extract.extraction.damage import vp8_damage
from c3d_extract.extraction.decode import DecoderSettings, decode_frames
from c3d_extract.extraction.ffmpeg_log import clean_decoder_message
from c3d_extract.extraction.inputs import VideoJob
from c3d_extract.extraction.remote import is_url
from c3d_extract.extraction.messages import Failed, GiveBack
from c3d_extract.extraction.pyav_reader import PYAV, PyAVReader, rgb_shape
from c3d_extract.extraction.reader_base import VideoError
from c3d_extract.models.pixels import UnsupportedPixels, YuvToRgb, conversion_for, yuv_resize_crop
from c3d_extract.models.preprocess import InputSpec
# what Hopper's NVDEC decodes (FFmpeg's decoder names; wmv3 is VC-1's simple/main profile): not AV1,
# Theora, H.264 10-bit or 4:2:2 (the pixel format check below refuses those, and HEVC 10-bit/4:4:4,
# which models/pixels.py does not convert)
NVDEC_CODECS = frozenset({"mpeg1video", "mpeg2video", "mpeg4", "vc1", "wmv3", "h264", "hevc", "vp8", "vp9"})
NVDEC = f"{PYAV} nvdec"
DEVICE_FRAMES = 16  # frames converted and cropped per call on the device (a chunk)
DEVICE_DECODERS = 2  # NVDEC threads per run (unmeasured: bench/nvdec.py measures 1, 4, 7, 14)


def nvdec_available() -> bool:
    """Whether this PyAV's FFmpeg was built with CUDA hardware decoding (the driver is only tried at
    open: where it is absent, the open raises and the video goes to the CPU readers)."""
    try:
        return "cuda" in av.codec.hwaccel.hwdevices_available()
    except AttributeError:
        return False


def resolve_decode_on(decode_on: str, device: torch.device, engine: str = "local") -> str:
    """--decode-on as it applies: "gpu" (NVDEC threads besides the CPU decoders) or "cpu"; gpu without
    CUDA and NVDEC is a UsageError. auto is cpu everywhere for now: NVDEC has not yet run on a GPU
    machine, and auto is to pick it only where it is measured to pay (bench/nvdec.py); then auto becomes
    gpu where `possible`. The Ray engine decodes where its workers are (cpu). `decode_on` is one of
    --decode-on's choices (ExtractOptions checked it)."""
    possible = device.type == "cuda" and nvdec_available() and engine == "local"
    if decode_on == "gpu" and not possible:
        why = ("the Ray engine decodes on its workers' CPUs" if engine != "local" else
               "the network is not on a CUDA device" if device.type != "cuda" else
               "this PyAV's FFmpeg has no CUDA hardware decoding")
        raise UsageError(f"--decode-on gpu: {why} (use --decode-on cpu or auto)")
    return "gpu" if decode_on == "gpu" else "cpu"


def stream_refusal(codec: str, pix_fmt: Optional[str], height: int, width: int) -> str:
    """Why the GPU path does not take a stream the container declares, "" when it does."""
    if codec not in NVDEC_CODECS:
        return f"NVDEC does not decode {codec or 'this codec'}"
    if pix_fmt not in (None, "cuda", "yuv420p", "yuvj420p"):  # cuda: known at the first frame (sw_format)
        return f"NVDEC path: pixel format {pix_fmt} (8-bit 4:2:0 only)"
    if height % 2 or width % 2:
        return f"NVDEC path: odd frame size {width}x{height} (its planes export whole chroma pairs only)"
    return ""


class DeviceReader(PyAVReader):
    """A PyAV reader whose frames become cropped uint8 RGB (n, h, w, 3) tensors on `device`, through
    models/pixels.py. `hardware`: decoded by NVDEC (frames stay on the GPU, planes exported by DLPack);
    else by PyAV on the CPU (its planes uploaded), the same device path, for tests on any machine.
    Bind the settings with `bound` (decode.decode_frames makes readers from a path alone)."""

    name = NVDEC
    crops = True
    input_spec: InputSpec
    device: torch.device = torch.device("cpu")
    hardware: bool = True
    _OPEN_FAILED = "NVDEC cannot open it"
    # FFmpeg's lines of this thread only: the other decoder threads' damage is not this video's (one
    # decoding thread, no frame or slice threads of FFmpeg's own, so none of this video's is missed)
    _LOCAL_LOG = True

    @classmethod
    def bound(cls, input_spec: InputSpec, device: torch.device | str, hardware: bool = True) -> type:
        """This reader class with its spec, device and decoder fixed."""
        name = NVDEC if hardware else f"{PYAV} + device pixels"
        return type(cls.__name__, (cls,), {"input_spec": input_spec, "device": torch.device(device),
                                           "hardware": hardware, "name": name,
                                           "_OPEN_FAILED": cls._OPEN_FAILED if hardware else "not a readable video"})

    def __init__(self, path: str, num_threads: int = 1, vp8_check: bool = True):
        self._vp8_check = vp8_check
        super().__init__(path, num_threads=1, vp8_check=False)  # VP8: checked in _refuse
        try:
            self._conversion(self._first)
        except VideoError:
            self.close()
            raise

    def _open(self, path: str):
        if not self.hardware:
            return super()._open(path)
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        accel = av.codec.hwaccel.HWAccel("cuda", device=str(index), allow_software_fallback=False,
                                         is_hw_owned=True)
        return av.open(path, metadata_errors="ignore", hwaccel=accel)

    def _refuse(self, stream) -> str:
        context = stream.codec_context
        if self.hardware:
            pix_fmt = context.format.name if context.format is not None else None
            refusal = stream_refusal(context.name, pix_fmt, context.height, context.width)
            if refusal:
                return refusal
        if self._vp8_check and context.name == "vp8":  # NVDEC would conceal it as one thread does
            return vp8_damage(self.path) or ""
        return ""

    def _conversion(self, frame: "av.VideoFrame"):
        """The exact conversion for `frame`'s format and tags (VideoError where there is none)."""
        fmt = frame.sw_format.name if frame.format.name == "cuda" and frame.sw_format else frame.format.name
        try:
            return conversion_for(fmt, frame.colorspace, frame.color_range, frame.height)
        except UnsupportedPixels as exc:
            raise VideoError("open", f"device pixels: {exc}") from None

    def _planes(self, frame: "av.VideoFrame") -> _Planes:
        """`frame`'s conversion and its Y, U, V planes on the device (NVDEC's NV12 copied out of its
        surface at once: a decoder has few, and a chunk would hold DEVICE_FRAMES of them)."""
        conversion, turns = self._conversion(frame), (frame.rotation // 90) % 4
        if frame.format.name == "cuda":  # DLPack without a stream, after a synchronise (PyAV's rule)
            torch.cuda.current_stream(self.device).synchronize()
            luma = torch.from_dlpack(frame.planes[0].__dlpack__()).clone()
            chroma = torch.from_dlpack(frame.planes[1].__dlpack__()).clone()
            return _Planes(conversion, turns, luma, chroma[..., 0], chroma[..., 1])
        return _Planes(conversion, turns, *(plane.to(self.device) for plane in cpu_planes(frame)))

    def chunks(self, wanted: Optional[Callable[[int], bool]] = None) -> Iterator[torch.Tensor]:
        """Cropped uint8 RGB frames (n, h, w, 3) on the device, DEVICE_FRAMES at a time; frame i is
        converted only where `wanted(i)` (the others black, as the CPU path leaves them)."""
        frames = itertools.chain([self._first], self._frames)
        self._first = None
        batch: list[Optional[torch.Tensor]] = []
        shape, index = None, 0
        try:
            for frame in frames:
                if shape is None:
                    shape = rgb_shape(frame)
                elif rgb_shape(frame) != shape:
                    raise VideoError("decode", f"the frame size changes at frame {index} (not supported)",
                                     frames=index)
                batch.append(self._planes(frame) if wanted is None or wanted(index) else None)
                index += 1
                if len(batch) == DEVICE_FRAMES:
                    yield self._crop(batch)
                    batch = []
        except VideoError:
            if batch:
                yield self._crop(batch)
            raise
        except (av.error.FFmpegError, RuntimeError) as exc:  # DLPack export, the device
            raise VideoError("decode", f"device conversion of frame {index}: {clean_decoder_message(exc)}",
                             frames=index) from None
        if batch:
            yield self._crop(batch)

    def _crop(self, batch: list[Optional[_Planes]]) -> torch.Tensor:
        """Cropped frames of a chunk: converted only where the crop's resize reads (yuv_resize_crop);
        a rotated frame whole, turned (as PyAVReader turns its RGB), then resized and cropped."""
        spec = self.input_spec
        out = torch.zeros((len(batch), *spec.crop, 3), dtype=torch.uint8, device=self.device)
        kept = [k for k, planes in enumerate(batch) if planes is not None]
        plain = [k for k in kept if batch[k].turns == 0 and batch[k].conversion == batch[kept[0]].conversion]
        if plain:
            first = batch[plain[0]]
            height, width = first.y.shape
            size = spec.size_for(height, width)
            y, u, v = (torch.stack([getattr(batch[k], name) for k in plain]) for name in "yuv")
            out[plain] = yuv_resize_crop(first.conversion, y, u, v, size, spec.offset(size), spec.crop)
        for k in set(kept) - set(plain):
            planes = batch[k]
            rgb = torch.rot90(planes.conversion.planar(planes.y, planes.u, planes.v), planes.turns, (0, 1))
            out[k] = spec.crop_frames_device(rgb[None])[0]
        return out


@dataclass
class _Planes:
    """One decoded frame on the device: its exact conversion, quarter turns, and Y, U, V planes."""

    conversion: YuvToRgb
    turns: int
    y: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor


def cpu_planes(frame: "av.VideoFrame") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A CPU yuv420p/yuvj420p frame's Y, U, V planes as uint8 tensors of their true sizes (through
    the buffers and line sizes: PyAV's DLPack export floors an odd chroma size)."""
    height, width = frame.height, frame.width
    sizes = ((height, width), ((height + 1) // 2, (width + 1) // 2), ((height + 1) // 2, (width + 1) // 2))
    out = []
    for plane, (rows, columns) in zip(frame.planes, sizes):
        data = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:rows, :columns]
        out.append(torch.from_numpy(np.ascontiguousarray(data)))
    return tuple(out)


def device_items(job: VideoJob, reader: type) -> Iterator:
    """The Frames (device tensors) and End of one video read by `reader` (DeviceReader.bound), or
    GiveBack where it did not finish: any failure sends the video to the CPU readers, which decide
    whether it fails (with --keep-partial too: their tries may get further)."""
    for item in decode_frames(job, DecoderSettings(reader.input_spec), readers=(reader,)):
        if isinstance(item, Failed):
            yield GiveBack(VideoJob(job.key, job.path, attempts=1), item.error)
            return
        yield item


class DeviceDecoders:
    """Threads that read videos with a bound DeviceReader, taking jobs from `take` (None: no more),
    their items in one bounded queue (`get`). Only plain local files come here (`wants`)."""

    def __init__(self, take: Callable[[], Optional[VideoJob]], reader: type, threads: int = DEVICE_DECODERS,
                 depth: int = 8):
        self._take, self._reader = take, reader
        self.items: "queue.Queue" = queue.Queue(maxsize=depth)
        self._alive = threads
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, name=f"c3d-nvdec-{i}", daemon=True)
                         for i in range(threads)]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def wants(job: VideoJob) -> bool:
        """Local files only: a tar shard or a URL is the CPU decoders' (their spooling is there)."""
        return not job.is_shard and not is_url(job.path) and job.attempts == 0

    @property
    def busy(self) -> bool:
        """Whether a thread may still put items."""
        with self._lock:
            return self._alive > 0 or not self.items.empty()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                job = self._take()
                if job is None:
                    return
                try:
                    for item in device_items(job, self._reader):
                        self._put(item)
                except Exception as exc:  # a surprise costs the GPU try of one video, not the thread
                    self._put(GiveBack(VideoJob(job.key, job.path, attempts=1),
                                       f"unexpected {type(exc).__name__}: {exc}"))
        finally:
            with self._lock:
                self._alive -= 1

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self.items.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Stop the threads (a video in progress is abandoned); waits a little for each."""
        self._stop.set()
        while True:
            try:
                self.items.get_nowait()
            except queue.Empty:
                break
        for thread in self._threads:
            thread.join(timeout=5)
