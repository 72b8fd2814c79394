"""DenseNet3D and T3D (Diba et al., 2017, "Temporal 3D ConvNets"), Table 1 of the paper.

DenseNet-BC with 3D kernels: a 7x7x3 stem with stride 2, a 3x3x3 max pool, four dense blocks of
BN-ReLU-Conv(1x1x1, 4k) -> BN-ReLU-Conv(3x3x3, k) layers with growth rate k = 32, and between them
transition layers (BN-ReLU-Conv 1x1x1 to half the channels, 2x2x2 average pool). T3D replaces each
transition by a Temporal Transition Layer: three BN-ReLU-Conv branches with kernels 1x1x1, 3x3x3
and 3x3xd (d = 6, 4, 4 in TTL 1, 2, 3), concatenated, then the 2x2x2 average pool.

What Table 1 leaves open, and what is chosen here (README "T3D"):
- the pool after the stem is written "stride 1" but halves the frame: stride 1 in time, 2 in space;
- the TTL branch widths: together they give what the transition gives (half the input channels),
  in thirds, so every later width, and the 1024-d (121) or 1664-d (169) feature, is DenseNet's;
  with this reading T3D-121 has 2.2x DenseNet3D-121's parameters where the text says 1.3x;
- even temporal kernels (6, 4) are padded like TensorFlow's "same": one more frame at the end;
- the classifier pools globally (the table's 7x7x2 average pool for 32x224 input), so other clip
  sizes work too.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
import torch.nn.functional as F

from c3d_extract.models.defaults import DEFAULT_LAYERS
from c3d_extract.models.net import Softmax, StagedNet
from c3d_extract.models.spec import ModelSpec
from c3d_extract.models.inputs import INPUTS

GROWTH = 32
BOTTLENECK = 4 * GROWTH
STEM = 64
TTL_DEPTHS = (6, 4, 4)


def avg_pool2(x: torch.Tensor) -> torch.Tensor:
    """2x2x2 average pool with stride 2 (odd sizes floored, as avg_pool3d), written as a reshape and
    a mean so it runs in every dtype: CPU avg_pool3d has no bf16 kernel for contiguous tensors."""
    b, c, t, h, w = x.shape
    x = x[:, :, : t - t % 2, : h - h % 2, : w - w % 2]
    return x.reshape(b, c, t // 2, 2, h // 2, 2, w // 2, 2).mean(dim=(3, 5, 7))


class BNReLUConv(nn.Module):
    """The paper's composite "conv": BatchNorm -> ReLU -> Conv3d (no bias), 'same' padding."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int, int]):
        super().__init__()
        self.norm = nn.BatchNorm3d(cin)
        self.conv = nn.Conv3d(cin, cout, kernel, bias=False)
        # (left, right) padding per dimension in F.pad's order: W, H, T; the extra pixel goes last
        self.padding = tuple(p for k in reversed(kernel) for p in ((k - 1) // 2, k // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(F.relu(self.norm(x)), self.padding))


class DenseLayer(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.bottleneck = BNReLUConv(cin, BOTTLENECK, (1, 1, 1))
        self.conv = BNReLUConv(BOTTLENECK, GROWTH, (3, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.bottleneck(x))


class DenseBlock(nn.Module):
    """n dense layers; each sees the block input and every earlier layer's output, concatenated."""

    def __init__(self, cin: int, layers: int):
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(cin + GROWTH * i) for i in range(layers))
        self.out_channels = cin + GROWTH * layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.cat([x, layer(x)], dim=1)
        return x


class Transition(nn.Module):
    """DenseNet3D's transition: BN-ReLU-Conv 1x1x1 to half the channels, 2x2x2 average pool."""

    def __init__(self, cin: int):
        super().__init__()
        self.conv = BNReLUConv(cin, cin // 2, (1, 1, 1))
        self.out_channels = cin // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return avg_pool2(self.conv(x))


class TemporalTransition(nn.Module):
    """T3D's TTL: 1x1x1, 3x3x3 and 3x3xd BN-ReLU-Conv branches, concatenated, 2x2x2 average pool."""

    def __init__(self, cin: int, depth: int):
        super().__init__()
        out = cin // 2
        widths = (out // 3, out // 3, out - 2 * (out // 3))
        self.branch1 = BNReLUConv(cin, widths[0], (1, 1, 1))
        self.branch3 = BNReLUConv(cin, widths[1], (3, 3, 3))
        self.branchd = BNReLUConv(cin, widths[2], (depth, 3, 3))
        self.out_channels = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return avg_pool2(torch.cat([self.branch1(x), self.branch3(x), self.branchd(x)], dim=1))


class Stem(nn.Module):
    """7x7x3 convolution with stride 2 (conv0 + norm0 + relu0 of DenseNet)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, STEM, (3, 7, 7), stride=2, padding=(1, 3, 3), bias=False)
        self.norm = nn.BatchNorm3d(STEM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)))


class Head(nn.Module):
    """pool5: the final BatchNorm and ReLU of DenseNet, then the global average (the feature)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.BatchNorm3d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(x)).mean(dim=(2, 3, 4))


def densenet3d(blocks: tuple[int, ...], ttl: bool, num_classes: int = 400) -> StagedNet:
    """Stages conv1, pool1, block1, ttl1|transition1, ..., block4, pool5, fc, prob."""
    stages: list[tuple[str, nn.Module]] = [("conv1", Stem()),
                                           ("pool1", nn.MaxPool3d(3, stride=(1, 2, 2), padding=1))]
    channels = STEM
    for i, layers in enumerate(blocks, start=1):
        block = DenseBlock(channels, layers)
        stages.append((f"block{i}", block))
        channels = block.out_channels
        if i < len(blocks):
            between = TemporalTransition(channels, TTL_DEPTHS[i - 1]) if ttl else Transition(channels)
            stages.append((f"{'ttl' if ttl else 'transition'}{i}", between))
            channels = between.out_channels
    stages += [("pool5", Head(channels)), ("fc", nn.Linear(channels, num_classes)), ("prob", Softmax())]
    return StagedNet(stages)


def _spec(name: str, blocks: tuple[int, ...], ttl: bool, small: bool) -> ModelSpec:
    frames, side = (16, 112) if small else (32, 224)
    full_name = name + ("-16x112" if small else "")
    return ModelSpec(
        name=full_name,
        model=name,
        build=partial(densenet3d, blocks, ttl),
        input=INPUTS[full_name],
        default_layers=DEFAULT_LAYERS[full_name],
        weights_name=name,
        classifier="fc",
        description=f"{'T3D' if ttl else 'DenseNet3D'}-{121 if blocks[2] == 24 else 169} (Diba et al. 2017), "
                    f"{frames} frames at {side}x{side}; no published weights",
    )


DENSENET3D_121 = _spec("densenet3d-121", (6, 12, 24, 16), ttl=False, small=False)
T3D_121 = _spec("t3d-121", (6, 12, 24, 16), ttl=True, small=False)
T3D_169 = _spec("t3d-169", (6, 12, 32, 32), ttl=True, small=False)
SMALL = [_spec(n, b, t, small=True) for n, b, t in (("densenet3d-121", (6, 12, 24, 16), False),
                                                    ("t3d-121", (6, 12, 24, 16), True),
                                                    ("t3d-169", (6, 12, 32, 32), True))]
