"""How the installed decord reads a codec zoo, against PyAV and against the frames that were encoded.

    python bench/decoder_zoo.py DIR --make        # write the zoo and PyAV's frames (needs PyAV)
    python bench/decoder_zoo.py DIR --read        # read it with the installed decord (decord, numpy only)

The zoo is the tests' (bench/support/videos.py ZOO: 128x160, 24 frames) plus the issue's other
variants (10-bit and fragmented H.264, VFR, hvc1-tagged HEVC, VP9 realtime, 1080p H.264, 4K HEVC)
and every file of shared/videos. `--read` imports nothing of this package, so it runs in a venv
holding another decord build (e.g. decord2, which installs the same `decord` module) and prints one
markdown row per video: frames read or the error, the largest and mean difference to PyAV's frames,
and the mean difference to the encoded frames (the zoo's own videos). Reads with the tool's decord
settings (one thread, its tiny fault tolerance: a frame decord would repeat is an error), 16 frames a
read (the tool reads frame 0 alone, then ~2 MiB chunks: the frames are the same).
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys

import numpy as np

SOURCE = "source.npy"  # the frames every 128x160 zoo video encodes


def make(folder: str) -> None:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    import av

    from c3d_extract.extraction.pyav_reader import PyAVReader
    from bench.support.videos import SHARED_VIDEOS, ZOO, encoder_available, moving_frames

    def write(name, frames, codec, pix_fmt="yuv420p", tag=None, rate=25, options=None, container=None, pts=None):
        out = av.open(os.path.join(folder, name), "w", options=container or {})
        stream = out.add_stream(codec, rate=rate, options=options or {})
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt, stream.bit_rate = pix_fmt, 2_000_000
        if tag:
            stream.codec_context.codec_tag = tag
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            if pts is not None:
                frame.pts = pts[i]
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
        out.close()

    os.makedirs(folder, exist_ok=True)
    source = moving_frames(24, 128, 160, seed=8)
    np.save(os.path.join(folder, SOURCE), source)
    for name, codec, pix_fmt, tag in ZOO:
        if encoder_available(codec):
            write(name, source, codec, pix_fmt, tag)
        else:
            print(f"no encoder here for {name} ({codec})")
    extras = [("h264_10bit.mkv", source, "libx264", dict(pix_fmt="yuv420p10le")),
              ("h264_fragmented.mp4", source, "libx264", dict(container={"movflags": "frag_keyframe+empty_moov"})),
              ("h264_vfr.mkv", source, "libx264", dict(rate=1000, pts=[i * 40 + (i % 3) * 7 for i in range(24)])),
              ("hevc_hvc1.mp4", source, "libx265", dict(tag="hvc1")),
              ("vp9_realtime.webm", source, "libvpx-vp9", dict(options={"deadline": "realtime", "cpu-used": "8"})),
              ("big_h264_1080p.mp4", moving_frames(12, 1080, 1920, seed=3), "libx264", {}),
              ("big_hevc_4k.mp4", moving_frames(6, 2160, 3840, seed=4), "libx265", {})]
    for name, frames, codec, options in extras:
        if encoder_available(codec):
            write(name, frames, codec, **options)
        else:
            print(f"no encoder here for {name} ({codec})")
    for path in sorted(glob.glob(str(SHARED_VIDEOS / "*"))):
        if path.endswith((".md", "SUMS")):
            continue
        link = os.path.join(folder, "shared_" + os.path.basename(path))
        if not os.path.lexists(link):
            os.symlink(path, link)
    for path in _videos(folder):
        try:
            np.save(path + ".pyav.npy", np.concatenate(list(PyAVReader(path).chunks())))
        except Exception as exc:  # the corrupt sample: PyAV fails too, the row says so
            print(f"{os.path.basename(path)}: PyAV: {exc}")


def _videos(folder: str) -> list[str]:
    return sorted(p for p in glob.glob(os.path.join(folder, "*")) if not p.endswith(".npy"))


def read(folder: str) -> None:
    import decord

    decord.logging.set_level(decord.logging.QUIET)
    errors = (RuntimeError, decord.DECORDError, decord._ffi.base.DECORDLimitReachedError)
    source = np.load(os.path.join(folder, SOURCE)).astype(np.int16)
    print(f"| video | decord {decord.__version__} | vs PyAV: max, mean | vs encoded frames: decord, PyAV |")
    print("|---|---|---|---|")
    for path in _videos(folder):
        name = os.path.basename(path)
        reference = np.load(path + ".pyav.npy").astype(np.int16) if os.path.exists(path + ".pyav.npy") else None
        try:
            reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1, fault_tol="0.000001")
            n = len(reader)
            if n == 0:
                print(f"| {name} | no frames | | |")
                continue
            frames = np.concatenate([reader.get_batch(list(range(s, min(s + 16, n)))).asnumpy()
                                     for s in range(0, n, 16)]).astype(np.int16)
        except errors as exc:
            text = re.sub(r"\[[^]]*\]|\S+\.cc:\d+: |Check failed: ", "", " ".join(str(exc).split())).strip()
            print(f"| {name} | {type(exc).__name__}: {text[:100]} | | |")
            continue
        read_as = f"{len(frames)} x {frames.shape[1]}x{frames.shape[2]}"
        if reference is None or reference.shape != frames.shape:
            other = "PyAV failed" if reference is None else f"PyAV gives {reference.shape}"
            print(f"| {name} | {read_as} | {other} | |")
            continue
        diff = np.abs(frames - reference)
        encoded = ""
        if frames.shape == source.shape:
            encoded = f"{np.abs(frames - source).mean():.2f}, {np.abs(reference - source).mean():.2f}"
        print(f"| {name} | {read_as} | {diff.max()}, {diff.mean():.3f} | {encoded} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--make", action="store_true")
    what.add_argument("--read", action="store_true")
    args = parser.parse_args()
    make(args.folder) if args.make else read(args.folder)


if __name__ == "__main__":
    main()
