"""Weights in this package's own layout: a PyTorch state dict keyed by the Caffe layer names.

Converters from the published formats (.caffemodel, c3d.pickle, torchvision) and downloads belong
to `c3d-weights`; this module loads what they produce, safely (weights_only=True) and strictly.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Mapping, Optional

import torch

from c3d_extract.models.net import StagedNet, init_random
from c3d_extract.models.spec import ModelSpec

CACHE_ENV = "C3D_EXTRACT_HOME"
RANDOM = "random"


class WeightsError(Exception):
    """A weights file that is missing, unreadable or does not fit the network; names the layer."""


def cache_dir() -> Path:
    """Where installed weights live: $C3D_EXTRACT_HOME/weights, else ~/.cache/c3d_extract/weights."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "c3d_extract")
    return Path(root) / "weights"


def installed_weights(spec: ModelSpec) -> Optional[Path]:
    """The installed weights file of a spec, if there is one."""
    path = cache_dir() / f"{spec.weights_name}.pt"
    return path if path.is_file() else None


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a state dict (or {"state_dict": ...}) without executing code from the file."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such weights file") from None
    except Exception as exc:  # pickle errors, zip errors, unsafe globals: all mean "not loadable"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{path}: not a loadable PyTorch weights file ({first})") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: does not hold a state dict of tensors")
    return dict(obj)


def build_network(spec: ModelSpec, weights: str, seed: int = 0) -> tuple[StagedNet, str]:
    """Build the spec's network with `weights` (a file in this package's layout, or "random").

    Returns the network in eval mode and the weights' identity: the file's sha256, or
    "random:<seed>". The class count is taken from the file's fc8 so fine-tuned heads load too.
    """
    if weights == RANDOM:
        net = spec.build()
        init_random(net, seed)
        return net.eval(), f"random:{seed}"
    state = read_state_dict(weights)
    fc8 = state.get("fc8.weight")
    net = spec.build(num_classes=fc8.shape[0]) if fc8 is not None else spec.build()
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {list(state[k].shape)} (expected {list(v.shape)})"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = []
    if missing:
        problems.append("missing " + ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else ""))
    if unexpected:
        problems.append("unexpected " + ", ".join(unexpected[:8]) + (" ..." if len(unexpected) > 8 else ""))
    if wrong:
        problems.append("wrong shape " + ", ".join(wrong[:8]))
    if problems:
        raise WeightsError(f"{weights}: does not fit {spec.name} ({'; '.join(problems)}); "
                           f"`c3d-weights convert` turns published checkpoints into this layout")
    net.load_state_dict(state, strict=True)
    return net.eval(), file_sha256(weights)
