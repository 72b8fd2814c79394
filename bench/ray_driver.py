"""How many videos a second one `--engine ray` driver absorbs: the engine's real driver loop (Ray
Data's iterator, ray_driver.Driver) and store (FeatureStore: journal, group commit), fed the rows the
forward actors would return, with decode and forward replaced by an actor that emits precomputed rows.

    python bench/ray_driver.py [--videos 10000] [--clips 20] [--layers fc6,res5b] [--scale 100000,1000000]

For each layer (fc6: 4,096 values, res5b: 25,088) and each driver mode:
- now: forward calls of engine_ray.clips_per_call clips (several network batches of 64, CUDA's
  default), whose rows are ray_actors.partial_sums: a `video` row (its journal record made on the actor,
  appended as it is) for a video whole in the call, `part` rows for the videos cut by the call's edges; group commit (one
  write and one fsync per 0.1 s, in a background thread);
- before: forward calls of 64 clips, one row per clip, one fsync per video (the engine before #26).
The emitting actor's output is materialised in Ray's object store first; then the driver loop runs
over it alone: `iter_batches` (Ray Data's threads deserialise and join each call's chunk in the driver
process) and Driver.absorb. Its wall time and CPU time (the whole driver process: every thread) per
video are the driver's ceiling, whatever the cluster. Then, with --scale, what else grows with the
number of videos on the driver: listing a folder (find_videos), Ray Data's from_items of the job rows,
and the driver's memory per pending video. Appends a markdown table naming the machine to --out.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from c3d_extract.extraction.engine_ray import clips_per_call  # noqa: E402
from c3d_extract.extraction.ray_actors import partial_sums  # noqa: E402
from c3d_extract.extraction.ray_driver import Driver  # noqa: E402
from c3d_extract.extraction.inputs import VideoJob, find_videos  # noqa: E402
from c3d_extract.extraction.collector import Collector  # noqa: E402
from c3d_extract.featurefile.writer import FeatureStore, video_record  # noqa: E402
from c3d_extract.models.registry import SPECS  # noqa: E402
from throughput import machine, report  # noqa: E402

DIMS = {"fc6": 4096, "res5b": 25088}
MODELS = {"fc6": "c3d-sports1m", "res5b": "res3d-sports1m"}
FACTS = {"num_frames": 168, "fps": 25.0, "height": 240, "width": 320, "status": "ok"}
BATCH = 64  # clips per network batch (CUDA's default)


def call_clips(layer: str, before: bool, videos: int) -> int:
    return BATCH if before else clips_per_call(SPECS[MODELS[layer]].input, BATCH, videos)


def decode_batches(videos: int, clips: int, per_call: int) -> list[dict]:
    """The decode actors' output shape: clip rows of consecutive videos, cut into forward calls."""
    rows = []
    done = json.dumps({"num_clips": clips, "facts": FACTS, "attempt": 0})
    for v in range(videos):
        for c in range(clips):
            rows.append((f"v{v:07d}.mp4", "last" if c == clips - 1 else "clip", 8 * c, done if c == clips - 1 else "0"))
    batches = []
    for at in range(0, len(rows), per_call):
        part = rows[at:at + per_call]
        batches.append({"key": np.array([r[0] for r in part], object), "kind": np.array([r[1] for r in part], object),
                        "start": np.array([r[2] for r in part], np.int64), "meta": np.array([r[3] for r in part], object),
                        "nonce": np.array(["n"] * len(part), object)})
    return batches


def forward_rows(batches: list[dict], layer: str, per_clip: bool) -> list[dict]:
    """What the forward actors return for `batches`: partial_sums rows, or per-clip rows."""
    rng = np.random.RandomState(0)
    clip_values = rng.uniform(0, 1, (max(len(b["key"]) for b in batches), DIMS[layer])).astype(np.float32)
    out = []
    for batch in batches:
        clips = np.arange(len(batch["key"]))
        values = {layer: clip_values[:len(clips)]}  # the same activations each call
        if per_clip:
            out.append({**batch, f"out_{layer}": values[layer]})
        else:
            out.append(partial_sums(batch, clips, values, [layer]))
    return out


def through_ray(batches: list[dict], layer: str, per_clip: bool):
    """The rows made by a Ray Data actor on a local Ray, one output per forward call, materialised in
    the object store (so iterating them is what the driver's loop does, minus waiting for the cluster)."""
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
    return dataset.materialize()


def drive(dataset, videos: int, layer: str, per_clip: bool, folder: str) -> dict:
    """The driver loop alone over materialised rows: wall, process and main-thread CPU seconds, the fsyncs."""
    out = os.path.join(folder, f"{layer}-{'clips' if per_clip else 'parts'}.h5")
    settings = {"model": "c3d", "layers": [layer], "clip_len": 16, "precision": "fp32"}
    store = FeatureStore.open(out, settings, {layer: (DIMS[layer],)}, {"command_line": "bench"}, overwrite=True)
    collector = Collector(store, None, grouped=not per_clip)
    driver = Driver([VideoJob(f"v{v:07d}.mp4", "") for v in range(videos)], collector, [layer])
    syncs, rows = [0], 0
    real_fsync = os.fsync

    def counted(fd):
        syncs[0] += 1
        real_fsync(fd)

    os.fsync = counted
    try:
        gc.collect()
        wall, cpu, own = time.perf_counter(), time.process_time(), time.thread_time()
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            rows += len(batch["key"])
            driver.absorb(batch)
        driver.commit()
        wall, cpu, own = time.perf_counter() - wall, time.process_time() - cpu, time.thread_time() - own
    finally:
        os.fsync = real_fsync
    assert collector.summary.written == videos, collector.summary
    fold = time.perf_counter()
    store.close()
    fold = time.perf_counter() - fold
    return {"wall": wall, "cpu": cpu, "own": own, "rate": videos / wall, "syncs": syncs[0], "rows": rows,
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


def store_state(count: int, folder: str) -> tuple[float, float]:
    """The store's memory per written video (journal records, the set of written keys), grouped as the
    driver writes, and the fold's seconds per video, with 4-value rows (the bookkeeping alone: the
    features' bytes add their disk time)."""
    import tracemalloc

    store = FeatureStore.open(os.path.join(folder, f"state{count}.h5"),
                              {"model": "c3d", "layers": ["fc6"], "clip_len": 16, "precision": "fp32"},
                              {"fc6": (4,)}, {"command_line": "bench"}, overwrite=True)
    row = np.ones(4, np.float32)
    keys = [f"d{i // 1000:04d}/v{i:07d}.mp4" for i in range(count)]
    records = [video_record(key, {"fc6": row}, {**FACTS, "num_clips": 20}, ["fc6"]) for key in keys]
    gc.collect()
    tracemalloc.start()
    for i, key in enumerate(keys):  # as the driver adds a `video` row's record
        store.add_record(key, records[i], sync=False)
        records[i] = None
        if i % 1000 == 999:
            store.commit()
    store.commit()
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    started = time.perf_counter()
    store.close()
    return held / count, (time.perf_counter() - started) / count


def writers(count: int, videos: int, clips: int, folder: str) -> dict:
    """K fc6 drivers at once (the `--shard I/K` path), each its own process, journal and rows (its
    videos' share, materialised on the one local Ray): their aggregate videos/s from the first start to
    the last end, and each one's rate."""
    import ray

    address = ray.get_runtime_context().gcs_address
    go = os.path.join(folder, "go")
    children = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--writer", f"{i}/{count}",
                                  "--videos", str(videos // count), "--clips", str(clips), "--ray", address,
                                  "--folder", folder], stdout=subprocess.PIPE, text=True) for i in range(count)]
    for i in range(count):  # each has its rows ready
        while not os.path.exists(os.path.join(folder, f"ready{i}")):
            assert children[i].poll() is None, children[i].communicate()
            time.sleep(0.2)
    open(go, "w").close()
    results = [json.loads(child.communicate()[0].strip().splitlines()[-1]) for child in children]
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    return {"rate": sum(r["videos"] for r in results) / span, "each": [r["videos"] / (r["end"] - r["start"]) for r in results],
            "cpu": [r["cpu"] / r["videos"] for r in results]}


def one_writer(index: str, videos: int, clips: int, address: str, folder: str) -> None:
    """A child of writers(): rows ready, then the driver loop when the parent says go; prints its times."""
    import ray

    ray.init(address=address, log_to_driver=False)
    i = int(index.split("/")[0])
    dataset = through_ray(decode_batches(videos, clips, call_clips("fc6", False, videos)), "fc6", False)
    open(os.path.join(folder, f"ready{i}"), "w").close()
    while not os.path.exists(os.path.join(folder, "go")):
        time.sleep(0.01)
    start = time.time()
    mine = os.path.join(folder, f"writer{i}")
    os.makedirs(mine, exist_ok=True)
    result = drive(dataset, videos, "fc6", False, mine)
    print(json.dumps({"videos": videos, "start": start, "end": start + result["wall"], "cpu": result["cpu"]}))


class _NoStore:
    done: set = set()
    wants_clips = False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=10000)
    parser.add_argument("--clips", type=int, default=20)
    parser.add_argument("--layers", default="fc6,res5b")
    parser.add_argument("--scale", default="100000,1000000", help="counts for the growth table ('' to skip)")
    parser.add_argument("--writers", default="2", help="K for the K-drivers row ('' to skip)")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results.md"))
    parser.add_argument("--writer", help=argparse.SUPPRESS)  # a child of writers(): I/K
    parser.add_argument("--ray", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.writer:
        one_writer(args.writer, args.videos, args.clips, args.ray, args.folder)
        return
    folder = tempfile.mkdtemp(prefix="bench-ray-driver-")
    lines = []
    for layer in args.layers.split(","):
        for per_clip in (False, True):
            # per-clip rows hold every clip's activations: fewer videos keep them within memory
            videos = max(1, args.videos // (1 if layer == "fc6" else 5) // (5 if per_clip else 1))
            per_call = call_clips(layer, per_clip, videos)
            dataset = through_ray(decode_batches(videos, args.clips, per_call), layer, per_clip)
            result = drive(dataset, videos, layer, per_clip, folder)
            del dataset
            mode = ("before: per-clip rows, fsync per video" if per_clip else
                    "now: video/part rows, group commit")
            lines.append(f"| {layer} | {mode} | {per_call} | {videos:,} | {result['rows']:,} | {result['rate']:,.0f} | "
                         f"{result['cpu'] / videos * 1e3:.3f} | {result['own'] / videos * 1e3:.3f} | "
                         f"{result['wall'] / videos * 1e3:.3f} | {result['syncs']:,} | {result['fold']:.1f} |")
            print(lines[-1], flush=True)
    if args.writers:
        count = int(args.writers)
        result = writers(count, args.videos, args.clips, folder)
        lines.append(f"| fc6 | {count} drivers at once (`--shard I/{count}`), each its own journal | "
                     f"{call_clips('fc6', False, args.videos // count)} | {args.videos:,} | | {result['rate']:,.0f} "
                     f"(each: {', '.join(f'{r:,.0f}' for r in result['each'])}) | "
                     f"{', '.join(f'{c * 1e3:.3f}' for c in result['cpu'])} | | | | |")
        print(lines[-1], flush=True)
    table = [f"\n### {datetime.date.today()} — one Ray driver's ceiling (bench/ray_driver.py) — {machine()}\n",
             f"{args.clips}-clip videos; the driver loop (Ray Data's iter_batches + Driver.absorb) and the real store "
             f"(journal on this machine's disk) over rows an actor on a local Ray emitted, one output per forward "
             f"call, materialised first, so the numbers are the driver's alone. Driver CPU: the whole driver process "
             f"(Ray Data's threads, the fsync thread); main thread: the loop's own. Fold: the journal into the HDF5 "
             f"file at the end (not in the rate).\n",
             "| layer | driver | clips per forward call | videos | rows received | videos/s | driver CPU ms/video | "
             "main thread ms/video | wall ms/video | fsyncs | fold, s |",
             "|---|---|---|---|---|---|---|---|---|---|---|", *lines]
    if args.scale:
        table += ["", "What grows with the number of videos on the driver (fc6 driver state; empty files listed):", "",
                  "| videos | listing (find_videos), s | from_items of the jobs, s | driver state per pending video, bytes |",
                  "|---|---|---|---|"]
        counts = [int(c) for c in args.scale.split(",")]
        for count, listing, items, per_video, _ in growth(counts, folder):
            table.append(f"| {count:,} | {listing:.1f} | {items:.1f} | {per_video:.0f} |")
            print(table[-1], flush=True)
        per_video, fold = store_state(min(counts), folder)
        table += ["", f"The store, measured at {min(counts):,} written videos (it grows with the videos written, "
                      f"one journal record each): {per_video:.0f} bytes of driver memory per written video; the fold "
                      f"{fold * 1e6:.0f} us per video of bookkeeping (4-value rows), plus its disk time for the features."]
        print(table[-1], flush=True)
    report("\n".join(table) + "\n", args.out)


if __name__ == "__main__":
    main()
