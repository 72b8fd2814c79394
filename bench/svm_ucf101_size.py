"""Time `c3d-svm` on a UCF101-size problem: 13,320 videos x 4096-d, 101 classes, split 1.

    python bench/svm_ucf101_size.py [--out bench/results.md]

The features are synthetic (class centres plus noise, non-negative, L2-normalised, like fc6) and
named like UCF101 (v_<Class>_gGG_cCC), so the group-number rule gives split 1's 18/7 groups.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from throughput import machine, report  # noqa: E402

from c3d_extract.featurefile.writer import FeatureStore  # noqa: E402


def write(path: str, dim: int = 4096, classes: int = 101, videos: int = 13320, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    centres = rng.random((classes, dim), dtype=np.float32)
    keys, labels = [], []
    per_class = [videos // classes + (1 if c < videos % classes else 0) for c in range(classes)]
    for c, count in enumerate(per_class):
        for i in range(count):
            keys.append(f"Class{c:03d}/v_Class{c:03d}_g{i % 25 + 1:02d}_c{i // 25 + 1:02d}.avi")
            labels.append(c)
    facts = {"num_frames": 0, "num_clips": 0, "fps": 0.0, "height": 0, "width": 0, "status": "ok"}
    with FeatureStore.open(path, {"model": "c3d", "spec": "c3d-sports1m"}, {"fc6": (dim,)}, {}) as store:
        for key, label in zip(keys, labels):
            x = np.maximum(centres[label] * 0.3 + rng.standard_normal(dim, dtype=np.float32), 0)
            store.add_video(key, {"fc6": x / np.linalg.norm(x)}, facts)
    return len(keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results.md"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ucf101_size.h5")
        n = write(path)
        started = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "c3d_extract.cli.svm", path, "--split", "1"],
                             capture_output=True, text=True, check=True)
        seconds = time.perf_counter() - started
    line = run.stdout.strip().splitlines()[-1]
    table = (f"### {datetime.date.today()} — c3d-svm, UCF101 size — {machine()}\n\n"
             f"{n} videos x 4096-d, 101 classes, split 1 by group number (counts below), "
             f"one-vs-rest LinearSVC (dual, C=1), --jobs {os.cpu_count()}: **{seconds:.0f} s** end to end "
             f"(reading the file included).\n\n    {line}\n\n")
    report(table, args.out)


if __name__ == "__main__":
    main()
