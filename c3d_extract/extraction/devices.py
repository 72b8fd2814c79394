"""The defaults that follow from the kind of device the network runs on ("cpu" or "cuda"), without
torch: the command line shows them in --help, and a run starts its decoders from them before the
parent has imported torch (extraction/early.py). runtime.py resolves the real device."""

from __future__ import annotations

import glob
import os
from typing import Optional, Union

# The default of --device (and of the API's `device`) when none is given: lets a batch system, or a
# test suite that compares numbers with the CPU, pin the device without changing every command.
DEVICE_ENV = "C3D_EXTRACT_DEVICE"

Device = Union[str, "object"]  # "cpu" / "cuda", or a torch.device (its .type is read)


def _kind(device: Device) -> str:
    return getattr(device, "type", None) or str(device).split(":")[0]


def default_device() -> str:
    """$C3D_EXTRACT_DEVICE, else `auto`."""
    return os.environ.get(DEVICE_ENV) or "auto"


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, which a batch scheduler sets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers(device: Device) -> int:
    """Decoder processes when --workers is not given. With the network on CUDA the GPU does the
    arithmetic and the cores decode: every core but the one that batches. On the CPU the decoders
    share the cores with the network: half of them, at most 4."""
    cores = usable_cores()
    if _kind(device) == "cuda":
        return max(1, cores - 1)
    return max(1, min(4, cores // 2))


def decoder_count(requested: Optional[int], device: Device) -> int:
    """The local engine's decoder processes: `requested`, else the default for the network's device."""
    return requested or default_workers(device)


def default_batch_size(device: Device) -> int:
    """Clips per forward when --batch-size is not given (bench/results.md has the measurements)."""
    return 64 if _kind(device) == "cuda" else 4


def device_defaults(device: Device) -> dict[str, int]:
    """The defaults that depend on where the network runs (`--help` shows them): clips per batch and
    the local engine's decoder processes, for "cpu" or "cuda"."""
    return {"batch_size": default_batch_size(device), "workers": default_workers(device)}


def likely_device(name: Optional[str] = None) -> str:
    """The kind of device `name` (--device; None: $C3D_EXTRACT_DEVICE, else auto) will resolve to, told
    without importing torch: "auto" is "cuda" where the NVIDIA driver shows a GPU. A guess for a start
    made before torch is there (early.py); runtime.resolve_device decides."""
    name = name or default_device()
    if name == "auto":
        return "cuda" if glob.glob("/proc/driver/nvidia/gpus/*") or os.path.exists("/dev/nvidia0") else "cpu"
    return _kind(name.split(",")[0].strip())
