"""Throughput of c3d_extract on this machine: network alone and end to end, per model and precision.

    python bench/throughput.py VIDEO_DIR [--out bench/results.md]

Network-only feeds random uint8 clips through the prepared network (batch 4, after 2 warm-up
batches); end to end runs the library's extract() over every video in VIDEO_DIR with random
weights. Prints a markdown table and appends it, with the machine's description, to --out.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
import time

import torch

from c3d_extract.inputs import find_videos
from c3d_extract.models import get_spec
from c3d_extract.pipeline import Network, extract
from c3d_extract.runtime import Runtime, cpu_has_fast_bf16
from c3d_extract.store import FeatureStore
from c3d_extract.weights import load_weights


def machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            name = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    amx = torch.cpu._is_amx_tile_supported() if hasattr(torch.cpu, "_is_amx_tile_supported") else False
    return (f"{name}, {os.cpu_count()} CPUs, bf16 kernels {'yes' if cpu_has_fast_bf16() else 'no'}, "
            f"AMX {'yes' if amx else 'no'}, torch {torch.__version__}, "
            f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}")


def network_only(model: str, precision: str, batch: int = 4, reps: int = 6) -> float:
    spec = get_spec(model)
    net = load_weights("random", model).net
    network = Network(net, list(spec.default_layers), spec.input, Runtime(torch.device("cpu"), precision), batch)
    clips = [torch.randint(0, 256, (spec.input.frames, *spec.input.crop, 3), dtype=torch.uint8)
             for _ in range(batch)]
    for _ in range(2):
        network(clips)
    started = time.perf_counter()
    for _ in range(reps):
        network(clips)
    return batch * reps / (time.perf_counter() - started)


def end_to_end(model: str, precision: str, video_dir: str, workers: int, batch: int = 4) -> tuple[float, int]:
    spec = get_spec(model)
    net = load_weights("random", model).net
    network = Network(net, list(spec.default_layers), spec.input, Runtime(torch.device("cpu"), precision), batch)
    jobs, _ = find_videos([video_dir])
    shapes = spec.layer_shapes(list(spec.default_layers))
    with tempfile.TemporaryDirectory() as tmp:
        with FeatureStore.open(os.path.join(tmp, "bench.h5"), {}, shapes, {}) as store:
            summary = extract(jobs, network, store, workers=workers)
    return summary.clips / summary.seconds, summary.clips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video_dir")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results.md"))
    parser.add_argument("--workers", default="1,2")
    args = parser.parse_args()
    precisions = ["fp32"] + (["bf16"] if cpu_has_fast_bf16() else [])
    workers = [int(w) for w in args.workers.split(",")]
    rows = ["| model | precision | network only, clips/s | " +
            " | ".join(f"end to end, {w} worker(s), clips/s" for w in workers) + " |",
            "|---|---|---|" + "---|" * len(workers)]
    for model in ("c3d", "res3d"):
        for precision in precisions:
            net = network_only(model, precision)
            e2e = [end_to_end(model, precision, args.video_dir, w) for w in workers]
            rows.append(f"| {model} | {precision} | {net:.1f} | " +
                        " | ".join(f"{rate:.1f} ({100 * rate / net:.0f}%)" for rate, _ in e2e) + " |")
            print(rows[-1], flush=True)
    clips = e2e[0][1]
    header = (f"### {datetime.date.today()} — {machine()}\n\n"
              f"Videos: {', '.join(job.key for job in find_videos([args.video_dir])[0])} ({clips} clips), "
              f"batch 4, random weights.\n\n")
    table = header + "\n".join(rows) + "\n\n"
    print(table)
    with open(args.out, "a") as handle:
        handle.write(table)


if __name__ == "__main__":
    main()
