"""The input stage per decoder core: frames/s of decode -> cv2 resize -> crop -> clips, next to the raw
sequential decode of the same files.

    python bench/decode.py VIDEO [VIDEO ...] [--out bench/results.md] [--reps 3]

For each video, best of --reps runs of 20 consecutive reads each (sustained rates), one thread
for every decoder:
- raw decord: `get_batch` over 64-frame chunks or the reader's ~2 MiB chunks, whichever is faster,
  nothing else (the decoder's own speed);
- raw PyAV: `decode()` + `to_ndarray("rgb24")`;
- stage, in process: decode.decode_frames + ClipAssembler (decord, resize, crop, clips), C3D spec;
- stage, 1 decoder process: workers.DecodePool with one worker, the parent cutting the clips and
  dropping them (what the network's side receives), after the process's start-up (sustained rate).
On a machine with 2+ cores the first three run on core 0 and the decoder process is kept on core 0
(the batching process on core 1), so every column is one core's rate.
Appends a markdown table naming the machine to --out.
"""

from __future__ import annotations

import argparse
import datetime
import os
import time

import av
import cv2
import decord

from c3d_extract.extraction.assemble import ClipAssembler, Clip
from c3d_extract.extraction.decode import DecoderSettings, decode_frames
from c3d_extract.extraction.inputs import VideoJob
from c3d_extract.models.registry import C3D_SPORTS1M
from c3d_extract.extraction.video import _chunk_frames
from c3d_extract.extraction.workers import DecodePool
from throughput import machine, report  # bench/ is on the path when run as a script

cv2.setNumThreads(1)  # one thread per decoder, as in the decoder processes


def raw_decord(path: str, chunk: int = 64) -> int:
    reader = decord.VideoReader(path, num_threads=1)
    n = len(reader)
    for start in range(0, n, chunk):
        reader.get_batch(list(range(start, min(start + chunk, n)))).asnumpy()
    return n


def raw_pyav(path: str) -> int:
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        return sum(1 for frame in container.decode(stream) if frame.to_ndarray(format="rgb24") is not None)


def stage_in_process(path: str) -> int:
    assembler, frames = ClipAssembler(C3D_SPORTS1M.input, "loop"), 0
    for item in decode_frames(VideoJob("v", path), C3D_SPORTS1M.input):
        for out in assembler.push(item):
            if not isinstance(out, Clip):
                frames = out.facts["num_frames"]
    return frames


def stage_one_process(path: str, copies: int = 4, pin: bool = False) -> float:
    """Frames/s one decoder process sustains: a warm-up video first (the process's start-up: imports),
    then `copies` times the video, timed from the warm-up's end to the last clip. With `pin`, the
    decoder process runs on core 0 and this process on core 1: the decoder's rate per core,
    comparable to raw decode pinned to core 0 (decord decodes in a thread of its own, so unpinned
    raw rates use more than one core)."""
    if pin:
        os.sched_setaffinity(0, {0})  # the decoder process inherits it
    pool = DecodePool([VideoJob(f"v{i}", path) for i in range(copies + 1)], DecoderSettings(C3D_SPORTS1M.input), "loop",
                      workers=1)
    frames, started = 0, None
    try:
        for item in pool:
            if pin and started is None:
                os.sched_setaffinity(0, {1})
            if not isinstance(item, Clip):
                if started is None:
                    started = time.perf_counter()
                else:
                    frames += item.facts["num_frames"]
        return frames / (time.perf_counter() - started)
    finally:
        pool.close()
        if pin:
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))


def best(fn, path: str, reps: int, copies: int = 20) -> float:
    """Frames per second of the fastest of `reps` runs, each `copies` consecutive reads of the video:
    a sustained rate, measured the way the decoder-process column is (20 videos in a row), so the
    columns compare like with like."""
    rates = []
    fn(path)  # warm: files in the page cache, libraries' first calls
    for _ in range(reps):
        started = time.perf_counter()
        frames = sum(fn(path) for _ in range(copies))
        rates.append(frames / (time.perf_counter() - started))
    return max(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("videos", nargs="+")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results.md"))
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    rows = []
    pin = (os.cpu_count() or 1) >= 2
    for path in args.videos:
        reader = decord.VideoReader(path, num_threads=1)
        height, width = reader[0].shape[:2]
        size = f"{width}x{height}, {len(reader)} frames"
        if pin:
            os.sched_setaffinity(0, {0})
        # decord's own best: 64-frame reads or the reader's cache-sized chunks, whichever is faster
        chunk = _chunk_frames(height, width)
        raw = max(best(raw_decord, path, args.reps), best(lambda p: raw_decord(p, chunk), path, args.reps))
        pyav = best(raw_pyav, path, args.reps)
        stage = best(stage_in_process, path, args.reps)
        if pin:
            os.sched_setaffinity(0, set(range(os.cpu_count())))
        process = max(stage_one_process(path, copies=20, pin=pin) for _ in range(args.reps))
        rows.append(f"| {os.path.basename(path)} ({size}) | {raw:.0f} | {pyav:.0f} | {stage:.0f} ({stage / raw:.0%}) "
                    f"| {process:.0f} ({process / raw:.0%}) |")
    day = datetime.date.today().isoformat()
    report(f"\n### {day} — input stage per decoder core — {machine()}\n\n"
           f"Frames/s, best of {args.reps} runs of 20 consecutive reads; {'everything on core 0 but the batching process (core 1)' if pin else 'unpinned'}; "
           "C3D spec (cv2 resize to 171x128, crop 112x112, 16-frame clips every 8). In brackets: share of the "
           "raw decord rate.\n\n"
           "| video | raw decord | raw PyAV | decode stage, in process | decode stage, 1 decoder process |\n"
           "|---|---|---|---|---|\n" + "\n".join(rows) + "\n", args.out)


if __name__ == "__main__":
    main()
