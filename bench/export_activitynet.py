"""Time and peak memory of `c3d-extract export --format activitynet --pca K` on a large synthetic file.

    python bench/export_activitynet.py [--videos 100000] [--clips 2] [--dim 4096] [--pca 500]
                                       [--tmp DIR] [--out bench/results.md]

The per-clip file is written in the tool's real layout (featurefile/schema.create_layout, the
datasets a fold writes), straight, without the journal: `videos` videos of `clips` clips each, fc7
rows of `dim` non-negative float32 values (ReLU of Gaussian noise around a random mean). The
export runs as its own process (`python -m c3d_extract export ...`): its wall time and its peak RSS
(getrusage of the child) are reported, with the input's and the output's sizes.
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

import h5py
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from c3d_extract.featurefile.schema import create_layout  # noqa: E402

SETTINGS = {"model": "c3d", "spec": "c3d-sports1m", "weights_sha256": "synthetic", "layers": ["fc7"],
            "clip_len": 16, "stride": 8, "frame_step": 1, "per_clip": True}


def write(path: str, videos: int, clips: int, dim: int, seed: int = 0, block: int = 8192) -> int:
    """A per-clip file of `videos` x `clips` fc7 rows in the tool's layout; returns the rows."""
    rng = np.random.default_rng(seed)
    centre = rng.random(dim, dtype=np.float32)
    rows = videos * clips
    block = max(1, block // clips) * clips  # whole videos per block
    with h5py.File(path, "w") as h5:
        create_layout(h5, SETTINGS, {"fc7": (dim,)}, {"command_line": "bench/export_activitynet.py"}, rows=videos)
        h5["videos"][:] = [f"v_{i:07d}.mp4" for i in range(videos)]
        h5["num_clips"][:] = clips
        h5["num_frames"][:] = 8 * clips + 8
        h5["fps"][:] = 25.0
        h5["status"][:] = ["ok"] * videos
        h5["decoder"][:] = ["synthetic"] * videos
        h5["clip_offset"][:] = np.arange(videos, dtype=np.int64) * clips
        group = h5["clips"]
        for name in ("fc7", "first_frame", "last_frame", "time"):
            group[name].resize(rows, axis=0)
        starts = np.tile(np.arange(clips, dtype=np.int64) * 8, videos)
        group["first_frame"][:] = starts
        group["last_frame"][:] = starts + 15
        group["time"][:] = starts / 25.0
        for at in range(0, rows, block):
            n = min(block, rows - at)
            values = rng.standard_normal((n, dim), dtype=np.float32)
            values += centre
            np.maximum(values, 0, out=values)
            group["fc7"][at: at + n] = values
            h5["features/fc7"][at // clips: (at + n) // clips] = values.reshape(-1, clips, dim).mean(1)
    return rows


def export(source: str, output: str, pca: int) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, stdout) of the export in a process of its own."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "c3d_extract", "export", source, output, "--format", "activitynet",
                          "--pca", str(pca)], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})
    seconds = time.perf_counter() - started
    if run.returncode:
        raise SystemExit(run.stderr)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, max(peak, before) / 1024, run.stdout.strip()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=100_000)
    parser.add_argument("--clips", type=int, default=2)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--pca", type=int, default=500)
    parser.add_argument("--tmp", default=None, help="folder for the two files (default: a temporary one)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.md"))
    args = parser.parse_args(argv)
    from throughput import machine, report

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        source, output = os.path.join(tmp, "clips.h5"), os.path.join(tmp, "anet.hdf5")
        started = time.perf_counter()
        rows = write(source, args.videos, args.clips, args.dim)
        writing = time.perf_counter() - started
        seconds, peak, stdout = export(source, output, args.pca)
        sizes = {name: os.path.getsize(p) / 1e9 for name, p in (("in", source), ("out", output))}
        with h5py.File(output, "r") as f:
            groups = len(f.keys())
            pca_file = json.loads(f.attrs["pca_provenance"]).get("method", "")
    text = (f"### {datetime.date.today()} — export --format activitynet --pca {args.pca} — {machine()}\n\n"
            f"`python bench/export_activitynet.py --videos {args.videos} --clips {args.clips} --dim {args.dim} "
            f"--pca {args.pca}`: a synthetic per-clip file in the tool's layout ({args.videos:,} videos x "
            f"{args.clips} clips = {rows:,} fc7 rows of {args.dim} float32, {sizes['in']:.2f} GB, written in "
            f"{writing:.0f} s), exported in a process of its own (PCA fit on every row: {pca_file}; then the "
            f"projection and one group per video; {groups:,} groups, {sizes['out']:.2f} GB).\n\n"
            f"| videos | clip rows | D | K | export wall, s | peak RSS, MiB |\n|---|---|---|---|---|---|\n"
            f"| {args.videos:,} | {rows:,} | {args.dim} | {args.pca} | {seconds:.1f} | {peak:.0f} |\n\n"
            f"    {stdout.replace(chr(10), chr(10) + '    ')}\n\n")
    report(text, args.out)


if __name__ == "__main__":
    main()
