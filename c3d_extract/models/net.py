"""A network as an ordered chain of named stages, so any published layer can be read by its name."""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterable, Mapping, Optional, Sequence

import torch
from torch import nn
import torch.nn.functional as F

from c3d_extract.errors import UsageError


class StagedNet(nn.Module):
    """Runs named stages in order and returns the outputs of the requested ones.

    Stage names are the Caffe layer (blob) names of the published model, so `forward(x, ["fc6"])`
    gives what the original tool wrote to `<prefix>.fc6-1`. The forward stops after the last
    requested stage: asking only for pool5 never computes fc6.
    """

    def __init__(self, stages: Sequence[tuple[str, nn.Module]], absent: Optional[Mapping[str, str]] = None):
        super().__init__()
        for name, module in stages:
            self.add_module(name, module)
        self.stage_names: tuple[str, ...] = tuple(name for name, _ in stages)
        # published layers these weights do not have, and why (C3D from OpenMMLab's file ends at fc7)
        self.absent: dict[str, str] = dict(absent or {})

    def check_layers(self, layers: Iterable[str]) -> list[str]:
        """Return the layers in network order; raise ValueError naming any unknown one."""
        layers = list(layers)
        missing = [name for name in layers if name in self.absent]
        if missing:
            raise UsageError(f"layer(s) {', '.join(missing)} not in these weights: {self.absent[missing[0]]}; "
                             f"valid layers: {', '.join(self.stage_names)}")
        unknown = [name for name in layers if name not in self.stage_names]
        if unknown:
            raise UsageError(
                f"unknown layer(s) {', '.join(unknown)}; valid layers: {', '.join(self.stage_names)}")
        if not layers:
            raise UsageError(f"no layer requested; valid layers: {', '.join(self.stage_names)}")
        return sorted(set(layers), key=self.stage_names.index)

    def forward(self, x: torch.Tensor, layers: Sequence[str]) -> "OrderedDict[str, torch.Tensor]":
        wanted = set(layers)
        last = max(self.stage_names.index(name) for name in wanted)
        out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        for name in self.stage_names[: last + 1]:
            x = getattr(self, name)(x)
            if name in wanted:
                out[name] = x
        return out


class Conv3dReLU(nn.Conv3d):
    """Convolution followed by Caffe's in-place ReLU: the blob of that name is post-ReLU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(super().forward(x))


class FlattenLinear(nn.Linear):
    """Fully connected layer over the flattened C x T x H x W input (Caffe's InnerProduct)."""

    def __init__(self, in_features: int, out_features: int, relu: bool):
        super().__init__(in_features, out_features)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(torch.flatten(x, 1))
        return F.relu(x) if self.relu else x

    def extra_repr(self) -> str:
        return super().extra_repr() + f", relu={self.relu}"


class Softmax(nn.Module):
    """Caffe's SOFTMAX `prob` layer over class scores, computed in float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x.float(), dim=1).to(x.dtype)


def init_random(model: nn.Module, seed: int) -> None:
    """Deterministic He initialisation for smoke runs: activations keep their scale through depth,
    so random features still depend on the input (PyTorch's default init fades to the biases)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv3d, nn.Linear)):
                fan_in = module.weight[0].numel()
                std = (2.0 / fan_in) ** 0.5
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.BatchNorm3d):
                module.reset_parameters()
            elif any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
                # the network may have been built without initialisation (meta device): nothing may be left unset
                raise TypeError(f"init_random does not know how to initialise {type(module).__name__}")
