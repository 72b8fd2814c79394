"""Helpers shared by the test modules: running the commands, reading rows back, an independent
recomputation of the paper's descriptor, exact file comparison, and the hardware the suite runs on."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import cv2
import decord
import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from c3d_extract.cli.extract import main as extract_main
from c3d_extract.extraction.runtime import cpu_has_fast_bf16
from c3d_extract.featurefile.reader import FeatureFile
from c3d_extract.featurefile.writer import FeatureStore

REPO = Path(__file__).resolve().parents[1]

# the store's unit-test settings: two C3D layers, one video's facts
SETTINGS = {"model": "c3d", "layers": ["fc6", "pool5"], "clip_len": 16, "precision": "fp32"}
SHAPES = {"fc6": (4096,), "pool5": (512, 1, 4, 4)}
FACTS = {"num_frames": 40, "num_clips": 4, "fps": 25.0, "height": 240, "width": 320, "status": "ok"}

# the per-CPU reason a bf16 check does not run (one C3D clip: 221 s emulated against 1.3 s in fp32)
needs_fast_bf16 = pytest.mark.skipif(
    not cpu_has_fast_bf16(),
    reason="this CPU has no bf16 units (AVX512-BF16/AMX) that oneDNN uses: bf16 would be emulated, "
           "~75-170x slower than fp32, and --precision auto never picks it here")


def run(*args, env=None, command=extract_main):
    """Invoke a click command in-process; exceptions other than SystemExit propagate."""
    result = CliRunner().invoke(command, [str(a) for a in args], env=env)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def extract_process(folder, out, *args, **popen) -> subprocess.Popen:
    """`python -m c3d_extract FOLDER OUT ARGS...` in a subprocess (stderr piped), for signals."""
    return subprocess.Popen([sys.executable, "-m", "c3d_extract", str(folder), str(out), *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **popen)


def make_store(path, settings=SETTINGS, overwrite=False) -> FeatureStore:
    """A FeatureStore with the unit-test settings and shapes."""
    return FeatureStore.open(str(path), settings, SHAPES, {"command_line": "test"}, overwrite=overwrite)


def rows(path, layer) -> dict[str, np.ndarray]:
    """key -> the stored row of `layer`."""
    with h5py.File(path, "r") as f:
        return {k.decode(): f[f"features/{layer}"][i] for i, k in enumerate(f["videos"][:])}


def recompute(path, net, layers, mean, frame_step) -> dict[str, np.ndarray]:
    """The paper's descriptor written out plainly: decode all, cv2 INTER_LINEAR resize, crop, BGR - mean (three values or a
    3x16x128x171 cube cropped at the same offsets), one forward per clip, mean over clips, L2.
    Shares no code with the pipeline but the network."""
    frames = decord.VideoReader(str(path), num_threads=1)
    return recompute_frames(frames.get_batch(list(range(len(frames)))).asnumpy(), net, layers, mean, frame_step)


def recompute_frames(frames: np.ndarray, net, layers, mean, frame_step) -> dict[str, np.ndarray]:
    """recompute of decoded uint8 RGB frames (n, H, W, 3), n >= 16."""
    frames = np.stack([cv2.resize(f, (171, 128), interpolation=cv2.INTER_LINEAR) for f in frames])  # Caffe's call
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    x = x[:, :, 8:120, 29:141].flip(1)  # crop at (8, 29), RGB -> BGR
    if isinstance(mean, np.ndarray):
        subtract = torch.from_numpy(mean[:, :, 8:120, 29:141])  # (3, 16, 112, 112)
    else:
        subtract = torch.tensor(mean).view(3, 1, 1, 1)
    sums = {}
    starts = range(0, len(frames) - 16 + 1, 8)
    with torch.no_grad():
        for s in starts:
            clip = x[s: s + 16: frame_step].permute(1, 0, 2, 3) - subtract  # (3, T, 112, 112)
            for layer, value in net(clip[None], layers).items():
                sums[layer] = sums.get(layer, 0) + value.double().flatten()
    return {layer: (v / len(starts) / (v / len(starts)).norm()).numpy() for layer, v in sums.items()}


# attributes that legitimately differ between two runs of the same job
_RUN_ATTRS = {"created", "updated", "last_run", "command_line", "c3d_extract_version", "torch_version"}


def snapshot(path) -> dict:
    """Every dataset of a feature file (by path) and its root attributes but the per-run ones."""
    out: dict = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        out.update({f"@{k}": v for k, v in f.attrs.items() if k not in _RUN_ATTRS})
    return out


def assert_same_file(a, b, ignore_attrs: tuple[str, ...] = ()) -> None:
    """Two feature files hold the same datasets, bit for bit, and the same settings and provenance
    (but the attributes that change from run to run, and `ignore_attrs`)."""
    left, right = snapshot(a), snapshot(b)
    for name in ignore_attrs:
        left.pop(f"@{name}", None), right.pop(f"@{name}", None)
    assert left.keys() == right.keys(), sorted(set(left) ^ set(right))
    assert "@settings" in left and "videos" in left
    for name in left:
        np.testing.assert_array_equal(left[name], right[name], err_msg=name)


def load_bench(name: str):
    """A script of bench/ as a module (bench/ on the path while it loads, for its own imports)."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(REPO / "bench"))


def layers_of(path: str) -> list[str]:
    """The feature layers a file holds, in the order the network computes them."""
    return FeatureFile(path).layers


def default_layer(path: str) -> str:
    """The layer a reader of `path` takes when none is named (FeatureFile.default_layer)."""
    return FeatureFile(path).default_layer
