"""Device and precision: where the network runs and in which number format."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from c3d_extract.errors import UsageError
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """`auto` -> the first CUDA device when there is one, else the CPU; `cuda:N` is checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {name} asked for, but torch sees no CUDA device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"device {name} asked for, but only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise UsageError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return device


def cpu_has_fast_bf16() -> bool:
    """True when oneDNN has bf16 kernels here (AVX512-BF16 / AMX): only then is bf16 faster than fp32
    on the CPU (elsewhere oneDNN emulates it, far slower)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(name: str, device: torch.device) -> str:
    """The precision to run in. `auto`: bf16 where it is fast, i.e. on CUDA devices with bf16 support
    and on CPUs with bf16 units (features keep cosine >= 0.999 to fp32: tests/test_precision.py,
    tests/test_cuda.py), else fp32 (on CUDA with TF32 off). `name` is one of --precision's choices
    (ExtractOptions checked it); here only whether the device runs it."""
    if name == "auto":
        fast = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_fast_bf16()
        return "bf16" if fast else "fp32"
    if name == "fp16" and device.type == "cpu":
        raise UsageError("fp16 is for CUDA devices; on the CPU use bf16 or fp32")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UsageError("this CUDA device has no bf16 support; use fp16 or fp32")
    return name


@dataclass(frozen=True)
class Runtime:
    """The resolved device, precision and tensor layout the network runs with."""

    device: torch.device
    precision: str

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.precision]

    @property
    def memory_format(self) -> torch.memory_format:
        # channels_last_3d makes oneDNN pick its fast blocked kernels on CPU (faster in fp32, and
        # needed for the bf16 speed-up); on CUDA cuDNN prefers it for fp16/bf16 tensor cores.
        return torch.channels_last_3d

    @property
    def searches(self) -> bool:
        """Whether cuDNN times its algorithms on the first batch of each shape (`cudnn.benchmark`).
        It pays in bf16/fp16 (a short search once, then faster batches); in fp32 with TF32 off the 3D
        convolutions' search is long and grows with the batch, for little or nothing, so fp32 takes
        cuDNN's heuristic choice at once (the figures: bench/results.md, README "Speed and precision")."""
        return self.device.type == "cuda" and self.precision != "fp32"

    def prepare(self, net: nn.Module) -> nn.Module:
        """Move the whole network to the device and dtype (casting, not autocast: autocast re-casts
        the 80M weights every call) in eval mode."""
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = self.searches
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        return net.to(device=self.device, dtype=self.dtype, memory_format=self.memory_format).eval()
