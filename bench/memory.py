"""Peak memory of reading a video into clips, for a short and a long video of the same kind.

    python bench/memory.py [--minutes 1,60] [--out bench/results.md]

Writes low-resolution (64x48, 25 fps) H.264 videos with PyAV, then in a fresh process per video runs
the decode -> resize/crop -> clip path of c3d-extract (the part whose cost could grow with length;
the network and the store are bounded by the batch) and reports the process's peak RSS.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time

import av
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from throughput import machine, report  # noqa: E402

PROBE = """
import resource, sys, time
from c3d_extract.extraction.inputs import VideoJob
from c3d_extract.models.registry import C3D_SPORTS1M
from c3d_extract.extraction.assemble import Clip
from bench.support.decoding import decode_video
started = time.perf_counter()
clips = sum(isinstance(item, Clip) for item in decode_video(VideoJob("v", sys.argv[1]), C3D_SPORTS1M.input, "loop"))
print(clips, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, round(time.perf_counter() - started, 1))
"""


def write_long_video(path: str, frames: int, width: int = 64, height: int = 48, fps: int = 25) -> None:
    """A moving gradient, cheap to encode at any length."""
    container = av.open(path, "w")
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    x = np.arange(width)[None, :, None]
    for t in range(frames):
        frame = np.broadcast_to(((x + 3 * t) % 256).astype(np.uint8), (height, width, 3))
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()


def peak(path: str) -> tuple[int, int, float]:
    """(clips, peak RSS in MiB, seconds) of the decode-to-clips path in a fresh process."""
    out = subprocess.run([sys.executable, "-c", PROBE, path], capture_output=True, text=True, check=True)
    clips, rss, seconds = out.stdout.split()
    return int(clips), int(rss), float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", default="1,60")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results.md"))
    args = parser.parse_args()
    rows = ["| video | frames | clips | peak RSS | seconds |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in (float(m) for m in args.minutes.split(",")):
            path = os.path.join(tmp, f"{minutes:g}min.mp4")
            frames = int(minutes * 60 * 25)
            started = time.perf_counter()
            write_long_video(path, frames)
            print(f"wrote {path} ({frames} frames) in {time.perf_counter() - started:.0f} s", flush=True)
            clips, rss, seconds = peak(path)
            rows.append(f"| {minutes:g} min, 64x48, 25 fps | {frames} | {clips} | {rss} MiB | {seconds} |")
            print(rows[-1], flush=True)
    whole = frames * 112 * 112 * 3 / 2**20
    table = (f"### {datetime.date.today()} — memory of decode -> clips — {machine()}\n\n" + "\n".join(rows) +
             f"\n\nHolding the last video's cropped frames at once would take {whole:.0f} MiB.\n\n")
    report(table, args.out)


if __name__ == "__main__":
    main()
