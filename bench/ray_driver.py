"""How many videos a second one `--engine ray` driver absorbs: the engine's real driver loop
(engine_ray.Driver) and store (FeatureStore: journal, group commit), fed the rows the forward actors
would return, with decode and forward replaced by precomputed activations.

    python bench/ray_driver.py [--videos 10000] [--clips 20] [--layers fc6,res5b] [--scale 100000,1000000]

For each layer (fc6: 4,096 values, res5b: 25,088) and each driver mode:
- parts (this engine): the forward actors' `part` rows (engine_ray.partial_sums over batches of 64 clips,
  so a 20-clip video arrives as one or two rows) and group commit (one fsync per 0.1 s);
- per-clip, fsync per video (the engine before: one row per clip, one fsync per video).
Rows are made first (a Ray Data pipeline of actors on a local Ray, materialised), then the driver loop
runs over them alone: its wall time and CPU time per video are the driver's ceiling, whatever the
cluster. Then, with --scale, what else grows with the number of videos on the driver: listing a
folder (find_videos), Ray Data's from_items of the job rows, and the driver's memory per pending video.
Appends a markdown table naming the machine to --out.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import resource
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from c3d_extract.extraction.engine_ray import Driver, partial_sums  # noqa: E402
from c3d_extract.extraction.inputs import VideoJob, find_videos  # noqa: E402
from c3d_extract.extraction.pipeline import Collector  # noqa: E402
from c3d_extract.featurefile.writer import FeatureStore  # noqa: E402
from throughput import machine, report  # noqa: E402

DIMS = {"fc6": 4096, "res5b": 25088}
FACTS = {"num_frames": 168, "fps": 25.0, "height": 240, "width": 320, "status": "ok"}
BATCH = 64  # clips per forward batch (CUDA's default)


def decode_batches(videos: int, clips: int) -> list[dict]:
    """The decode actors' output shape: clip rows of consecutive videos, cut into forward batches."""
    rows = []
    done = json.dumps({"num_clips": clips, "facts": FACTS, "attempt": 0})
    for v in range(videos):
        for c in range(clips):
            rows.append((f"v{v:07d}.mp4", "last" if c == clips - 1 else "clip", 8 * c, done if c == clips - 1 else "0"))
    batches = []
    for at in range(0, len(rows), BATCH):
        part = rows[at:at + BATCH]
        batches.append({"key": np.array([r[0] for r in part], object), "kind": np.array([r[1] for r in part], object),
                        "start": np.array([r[2] for r in part], np.int64), "meta": np.array([r[3] for r in part], object),
                        "nonce": np.array(["n"] * len(part), object)})
    return batches


def forward_rows(batches: list[dict], layer: str, per_clip: bool) -> list[dict]:
    """What the forward actors return for `batches`: part rows, or per-clip rows."""
    rng = np.random.RandomState(0)
    clip_values = rng.uniform(0, 1, (BATCH, DIMS[layer])).astype(np.float32)  # the same activations each batch
    out = []
    for batch in batches:
        clips = np.arange(len(batch["key"]))
        values = {layer: clip_values[:len(clips)]}
        if per_clip:
            out.append({**batch, f"out_{layer}": values[layer]})
        else:
            out.append(partial_sums(batch, clips, values, [layer]))
    return out


def through_ray(batches: list[dict], layer: str, per_clip: bool) -> list[dict]:
    """The rows made by Ray Data actors on a local Ray (so they are what the driver's iterator gives)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    dataset = ray.data.from_items([{"i": i} for i in range(len(batches))], override_num_blocks=min(16, len(batches)))

    class Emit:
        def __init__(self, rows):
            self.rows = ray.get(rows[0])  # a list wrapped so Ray passes the reference, not its value

        def __call__(self, batch):
            for i in batch["i"]:
                yield self.rows[int(i)]

    rows = forward_rows(batches, layer, per_clip)
    dataset = dataset.map_batches(Emit, batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=1),
                                  fn_constructor_kwargs={"rows": [ray.put(rows)]})
    return list(dataset.iter_batches(batch_size=None, batch_format="numpy"))


def drive(rows: list[dict], videos: int, layer: str, per_clip: bool, folder: str) -> dict:
    """The driver loop alone over materialised rows: wall and CPU seconds, videos/s, the fsyncs."""
    out = os.path.join(folder, f"{layer}-{'clips' if per_clip else 'parts'}.h5")
    settings = {"model": "c3d", "layers": [layer], "clip_len": 16, "precision": "fp32"}
    store = FeatureStore.open(out, settings, {layer: (DIMS[layer],)}, {"command_line": "bench"}, overwrite=True)
    collector = Collector(store, None, grouped=not per_clip)
    driver = Driver([VideoJob(f"v{v:07d}.mp4", "") for v in range(videos)], collector, [layer])
    syncs = [0]
    real_fsync = os.fsync

    def counted(fd):
        syncs[0] += 1
        real_fsync(fd)

    os.fsync = counted
    try:
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        for batch in rows:
            driver.absorb(batch)
        driver.commit()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        os.fsync = real_fsync
    assert collector.summary.written == videos, collector.summary
    fold = time.perf_counter()
    store.close()
    fold = time.perf_counter() - fold
    return {"wall": wall, "cpu": cpu, "rate": videos / wall, "syncs": syncs[0], "rows": sum(len(r["key"]) for r in rows),
            "fold": fold}


def growth(counts: list[int], folder: str) -> list[tuple]:
    """Listing, from_items and the driver's memory per pending video at each count."""
    import ray

    out = []
    for count in counts:
        tree = os.path.join(folder, f"list{count}")
        os.makedirs(tree, exist_ok=True)
        for d in range(0, count, 1000):
            sub = os.path.join(tree, f"d{d // 1000:04d}")
            os.makedirs(sub, exist_ok=True)
            for i in range(d, min(d + 1000, count)):
                open(os.path.join(sub, f"v{i:07d}.mp4"), "wb").close()
        started = time.perf_counter()
        jobs, _ = find_videos([tree])
        listing = time.perf_counter() - started
        started = time.perf_counter()
        ray.data.from_items([{"key": job.key, "path": job.path, "members": "", "skip": "[]"} for job in jobs],
                            override_num_blocks=max(1, count // 64))
        items = time.perf_counter() - started
        gc.collect()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        import tracemalloc

        tracemalloc.start()
        driver = Driver(jobs, Collector(_NoStore(), None), ["fc6"])
        held = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        del driver, jobs
        out.append((count, listing, items, held / count, before))
        import shutil

        shutil.rmtree(tree)
    return out


class _NoStore:
    done: set = set()
    wants_clips = False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=10000)
    parser.add_argument("--clips", type=int, default=20)
    parser.add_argument("--layers", default="fc6,res5b")
    parser.add_argument("--scale", default="100000,1000000", help="counts for the growth table ('' to skip)")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results.md"))
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="bench-ray-driver-")
    lines = []
    for layer in args.layers.split(","):
        for per_clip in (False, True):
            # per-clip rows hold every clip's activations: fewer videos keep them within memory
            videos = max(1, args.videos // (1 if layer == "fc6" else 5) // (5 if per_clip else 1))
            batches = decode_batches(videos, args.clips)
            rows = through_ray(batches, layer, per_clip)
            result = drive(rows, videos, layer, per_clip, folder)
            del rows
            mode = "per-clip rows, fsync per video (before)" if per_clip else "part rows, group commit (now)"
            lines.append(f"| {layer} | {mode} | {videos:,} | {result['rows']:,} | {result['rate']:,.0f} | "
                         f"{result['cpu'] / videos * 1e3:.3f} | {result['wall'] / videos * 1e3:.3f} | "
                         f"{result['syncs']:,} | {result['fold']:.1f} |")
            print(lines[-1], flush=True)
    table = [f"\n### {datetime.date.today()} — one Ray driver's ceiling (bench/ray_driver.py) — {machine()}\n",
             f"{args.clips}-clip videos; the driver loop and the real store (journal on this machine's disk) over "
             f"rows made by Ray Data actors on a local Ray and materialised first, so the numbers are the driver's "
             f"alone. Fold: the journal into the HDF5 file at the end (not in the rate).\n",
             "| layer | driver | videos | rows received | videos/s | driver CPU ms/video | wall ms/video | fsyncs | "
             "fold, s |", "|---|---|---|---|---|---|---|---|---|", *lines]
    if args.scale:
        table += ["", "What grows with the number of videos on the driver (fc6 driver state; empty files listed):", "",
                  "| videos | listing (find_videos), s | from_items of the jobs, s | driver state per pending video, bytes |",
                  "|---|---|---|---|"]
        for count, listing, items, per_video, _ in growth([int(c) for c in args.scale.split(",")], folder):
            table.append(f"| {count:,} | {listing:.1f} | {items:.1f} | {per_video:.0f} |")
            print(table[-1], flush=True)
    report("\n".join(table) + "\n", args.out)


if __name__ == "__main__":
    main()
