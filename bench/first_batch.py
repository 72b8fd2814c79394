"""When a run's first batch reaches the network, with the early start (decoders handed their first
jobs before torch is imported, extraction/early.py) and without it, in fresh processes taken in turn.

    python bench/first_batch.py VIDEO_DIR [--reps 6] [--model res3d] [--out bench/results.md]

Each process runs `c3d-extract VIDEO_DIR new.h5 --weights random --model MODEL -q` in-process and prints
the seconds from its start to the first call of the network's forward (pipeline.BatchRunner.forward,
patched once that module is imported: the run imports it after the early start) and to its end.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = """
import importlib.abc, importlib.machinery, json, sys, time
started = time.perf_counter()
seen = {}
if sys.argv[1] == "off":
    import c3d_extract.extraction.early as early
    early.start = lambda options, jobs: None

class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "c3d_extract.extraction.pipeline":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        load = spec.loader.exec_module
        def exec_module(module):
            load(module)
            forward = module.BatchRunner.forward
            def first(self, *args, **kwargs):
                seen.setdefault("first_batch", time.perf_counter() - started)
                return forward(self, *args, **kwargs)
            module.BatchRunner.forward = first
        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, Watch())
from c3d_extract.cli.extract import main
try:
    main.main(sys.argv[2:], standalone_mode=False)
finally:
    seen["end"] = time.perf_counter() - started
    print(json.dumps(seen))
"""


def one(mode: str, folder: str, model: str) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        out = subprocess.run([sys.executable, "-c", CHILD, mode, folder, os.path.join(scratch, "new.h5"),
                              "--model", model, "--weights", "random", "-q"],
                             capture_output=True, text=True)  # status 1: a video failed (a corrupt one)
    if out.returncode not in (0, 1) or not out.stdout.strip():
        raise RuntimeError(f"the run ended with status {out.returncode}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--reps", type=int, default=6)
    parser.add_argument("--model", default="res3d")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"on": [], "off": []}
    for _ in range(args.reps):
        for mode in ("on", "off"):  # in turn: a drifting machine moves both
            runs[mode].append(one(mode, args.folder, args.model))
    lines = []
    for mode, label in (("on", "early start"), ("off", "no early start")):
        first = statistics.median(r["first_batch"] for r in runs[mode])
        end = statistics.median(r["end"] for r in runs[mode])
        lines.append(f"{label}: first batch at {first:.2f} s, run ended at {end:.2f} s (medians of {args.reps})")
    print("\n".join(lines))
    if args.out:
        with open(args.out, "a") as handle:
            handle.write(f"\n`python bench/first_batch.py {args.folder} --model {args.model}` "
                         f"({datetime.date.today()}, {os.cpu_count()} CPUs):\n\n" + "\n".join(f"- {l}" for l in lines) + "\n")


if __name__ == "__main__":
    main()
