"""Whole-process extraction against the network alone: what the decoders, batching and writing cost.

    python bench/whole_process.py VIDEO [VIDEO ...] [--out bench/results.md] [--models c3d,res3d]

For each model and each precision that is fast here (fp32; bf16 where the CPU has bf16 units):
- whole process: `c3d-extract VIDEOS out.h5 --weights FILE --device cpu` in a fresh subprocess,
  wall time from its start (Python, torch and the decoders imported, the weights read and the
  network built, decoder processes started) to its exit (the file folded and closed). FILE holds
  random weights in this package's checkpoint layout, written beforehand: a real run reads its
  weights from such a file (`--weights random` would time the drawing of 30-80 M random numbers);
- network alone: the same prepared network (`pipeline.BatchRunner`: uint8 clips in, mean subtracted,
  channels_last, the CLI's default batch of 4) on as many random clips as the run had, after a warm-up.
The ratio is the run's clips/s over the network's: 1.0 would mean decoding and writing cost nothing.
The two alternate --reps times and each keeps its best: on a shared machine whose speed drifts by
10-20% from minute to minute, the best of interleaved runs compares like with like.
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

import h5py

from throughput import machine, network_only, report  # bench/ is on the path when run as a script
from c3d_extract.weights.convert import LAYOUT, Converted, save_checkpoint
from c3d_extract.extraction.runtime import cpu_has_fast_bf16
from c3d_extract.weights.load import load_weights


def weights_file(model: str, folder: str) -> str:
    """Random weights of `model` saved in this package's layout (as `c3d-weights` installs them)."""
    loaded = load_weights("random", model)
    path = os.path.join(folder, f"{model}.pt")
    save_checkpoint(Converted(loaded.spec, loaded.net.state_dict(), LAYOUT), path, "random", "0" * 64)
    return path


def whole_process(model: str, precision: str, videos: list[str], weights: str) -> tuple[float, int]:
    """Seconds of one `c3d-extract` process over `videos` with the checkpoint `weights`, and the
    clips it computed."""
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "out.h5")
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "c3d_extract", *videos, out, "--model", model, "--weights", weights,
                        "--device", "cpu", "--precision", precision, "--quiet"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
        with h5py.File(out, "r") as h5:
            clips = int(h5["num_clips"][:].sum())
    return seconds, clips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("videos", nargs="+")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results.md"))
    parser.add_argument("--models", default="c3d,res3d")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    precisions = ["fp32"] + (["bf16"] if cpu_has_fast_bf16() else [])
    rows = []
    for model in args.models.split(","):
        with tempfile.TemporaryDirectory() as folder:
            weights = weights_file(model, folder)  # once per model: every run reads the same file
            for precision in precisions:
                runs, alones = [], []
                for _ in range(args.reps):
                    runs.append(whole_process(model, precision, args.videos, weights))
                    alones.append(network_only(model, precision, batch=4, reps=max(1, runs[-1][1] // 4)))
                seconds, clips = min(runs)
                alone = max(alones)
                run = clips / seconds
                rows.append(f"| {model} | {precision} | {clips} | {seconds:.1f} | {run:.2f} | {alone:.2f} "
                            f"| {run / alone:.2f}x |")
                print(rows[-1], flush=True)
    names = ", ".join(os.path.basename(v) for v in args.videos)
    report("\n".join([f"### {datetime.date.today()} — whole process vs network alone — {machine()}", "",
                      f"Videos: {names}. `python bench/whole_process.py`; best of {args.reps} interleaved runs each; --device cpu, "
                      "default --workers and --batch-size; random weights read from a file in the package's layout.", "",
                      "| model | precision | clips | whole process, s | whole process, clips/s "
                      "| network alone, clips/s | ratio |", "|---|---|---|---|---|---|---|", *rows, ""]) + "\n",
           args.out)


if __name__ == "__main__":
    main()
