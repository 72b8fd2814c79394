"""What a video costs the engines beyond its network time: local vs `--engine ray`, many tiny videos.

    python bench/ray_overhead.py --videos 100,1000,10000 [--engines local,ray,ray-1] [--out bench/results.md]

Every video is the same real 16-frame 64x48 H.264 file (one Res3D clip), linked under its own name,
so each is a real open, decode, clip and write. The network is a stand-in that averages the clip (3
values per video): the point is the engine's per-video cost, not the network's. The sink is
`api.Arrays` (no HDF5 journal fsync, which both engines pay alike). Each (engine, count) runs in a
fresh process; it reports the wall time of `extract`/`extract_ray` (Ray's start included) and the
process's peak RSS (the driver's memory; Ray's own processes are not counted). The per-video cost
is the slope between the two largest counts, so fixed start-up costs drop out.

Engines: local (one decoder process, `--workers 1`), ray (this engine: a local Ray on all CPUs,
blocks of up to 64 videos, one decoder process per block), ray-1 (the same with one video per block,
which is what one Ray block per video costs).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))


def make_folder(base: str, count: int) -> str:
    """`count` links to one tiny real video, each under its own name."""
    from bench.support.videos import moving_frames, write_video

    source = os.path.join(base, "tiny.mp4")
    if not os.path.exists(source):
        write_video(source, moving_frames(16, 48, 64, seed=1))
    folder = os.path.join(base, f"n{count}")
    if not os.path.isdir(folder):
        os.makedirs(folder)
        for i in range(count):
            os.symlink(source, os.path.join(folder, f"v{i:06d}.mp4"))
    return folder


def child(engine: str, folder: str) -> dict:
    """One measurement in this (fresh) process."""
    import torch
    from torch import nn

    from c3d_extract import api
    from c3d_extract.models.registry import get_spec
    from c3d_extract.models.net import StagedNet
    from c3d_extract.extraction.pipeline import BatchRunner, extract
    from c3d_extract.options import ExtractOptions
    from c3d_extract.extraction.runtime import Runtime

    spec = get_spec("res3d").input
    net = StagedNet([("mean", nn.AdaptiveAvgPool3d(1)), ("flat", nn.Flatten())])
    network = BatchRunner(net, ["flat"], spec, Runtime(torch.device("cpu"), "fp32"), 4)
    jobs = api.find_jobs([folder])
    sink = api.Arrays(["flat"])
    started = time.perf_counter()
    if engine == "local":
        summary = extract(jobs, network, sink, ExtractOptions(workers=1))  # type: ignore[arg-type]
    else:
        from c3d_extract.extraction.engine_ray import extract_ray

        summary = extract_ray(jobs, network, sink, per_block=1 if engine == "ray-1" else None)  # type: ignore[arg-type]
    seconds = time.perf_counter() - started
    assert summary.written == len(jobs) and not sink.failed, (summary, list(sink.failed.items())[:3])
    return {"engine": engine, "videos": len(jobs), "seconds": seconds,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", default="100,1000", help="comma-separated video counts")
    parser.add_argument("--engines", default="local,ray,ray-1")
    parser.add_argument("--max-ray-1", type=int, default=1000, help="largest count for ray-1 (it is slow)")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results.md"))
    parser.add_argument("--child", nargs=2, metavar=("ENGINE", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    from throughput import machine, report

    counts = sorted(int(c) for c in args.videos.split(","))
    results: dict[str, dict[int, dict]] = {}
    with tempfile.TemporaryDirectory() as base:
        for engine in args.engines.split(","):
            for count in counts:
                if engine == "ray-1" and count > args.max_ray_1:
                    continue
                folder = make_folder(base, count)
                run = subprocess.run([sys.executable, __file__, "--child", engine, folder], capture_output=True,
                                     text=True)
                if run.returncode:
                    sys.exit(f"{engine} on {count} videos failed:\n{run.stderr[-3000:]}")
                result = json.loads(run.stdout.strip().splitlines()[-1])
                print(result, flush=True)
                results.setdefault(engine, {})[count] = result
    lines = [f"\n### {datetime.date.today()} — per-video cost, local vs --engine ray — {machine()}\n\n",
             "Tiny real videos (one 16-frame 64x48 H.264 file linked N times: one Res3D clip each), a stand-in "
             "network (mean of the clip), arrays in memory; fresh process per row; Ray started by the engine "
             "on this machine (decoders = CPUs - 1). `python bench/ray_overhead.py`.\n\n",
             "| engine | videos | seconds | videos/s | driver peak RSS | per video (slope) |\n|---|---|---|---|---|---|\n"]
    for engine, by_count in results.items():
        known = sorted(by_count)
        slope = ""
        if len(known) >= 2:
            a, b = by_count[known[-2]], by_count[known[-1]]
            slope = f"{1000 * (b['seconds'] - a['seconds']) / (b['videos'] - a['videos']):.1f} ms"
        for count in known:
            r = by_count[count]
            lines.append(f"| {engine} | {count} | {r['seconds']:.1f} | {count / r['seconds']:.1f} | "
                         f"{r['peak_rss_mib']:.0f} MiB | {slope if count == known[-1] else ''} |\n")
    report("".join(lines), args.out)


if __name__ == "__main__":
    main()
