"""Res3D (Tran et al., 2017): the 3D ResNet-18 of Caffe C3D v1.1, trained on Sports-1M."""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from c3d_extract.models.defaults import DEFAULT_LAYERS
from c3d_extract.models.net import FlattenLinear, Softmax, StagedNet
from c3d_extract.models.spec import ModelSpec
from c3d_extract.models.inputs import INPUTS


class Stem(nn.Module):
    """conv1 (3x7x7, stride 1x2x2, no bias) + BatchNorm (Caffe's bn_conv1 and scale_conv1) + ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 64, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False)
        self.bn = nn.BatchNorm3d(64, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    """Caffe's resXy block: branch2a (3x3x3) -> BN -> ReLU -> branch2b -> BN, plus the shortcut
    (identity, or the 1x1x1 branch1 projection + BN), then ReLU. The output is the resXy blob."""

    def __init__(self, cin: int, cout: int, stride: int, projection: bool):
        super().__init__()
        self.branch2a = nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn_branch2a = nn.BatchNorm3d(cout, eps=1e-5)
        self.branch2b = nn.Conv3d(cout, cout, 3, padding=1, bias=False)
        self.bn_branch2b = nn.BatchNorm3d(cout, eps=1e-5)
        self.branch1 = nn.Conv3d(cin, cout, 1, stride=stride, bias=False) if projection else None
        self.bn_branch1 = nn.BatchNorm3d(cout, eps=1e-5) if projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.branch1 is None else self.bn_branch1(self.branch1(x))
        y = F.relu(self.bn_branch2a(self.branch2a(x)))
        return F.relu(self.bn_branch2b(self.branch2b(y)) + shortcut)


class GlobalAvgPool(nn.Module):
    """pool5: average over time and space, 512 values. Caffe's AVE 1x7x7 pool on the 1x7x7 res5b
    of 8-frame clips is exactly this; torchvision's r3d_18 also averages over time."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3, 4))


def res3d(num_classes: int = 487, res2a_projection: bool = True) -> StagedNet:
    """3D ResNet-18 with Caffe names conv1, res2a ... res5b, pool5, fc8, prob.

    `res2a_projection`: the Caffe Sports-1M model has a 1x1x1 projection (res2a_branch1) even though
    res2a keeps 64 channels; torchvision's r3d_18 has none.
    """
    stages: list[tuple[str, nn.Module]] = [("conv1", Stem())]
    cin = 64
    for level, cout in zip((2, 3, 4, 5), (64, 128, 256, 512)):
        stride = 1 if level == 2 else 2
        projection = res2a_projection if level == 2 else True
        stages.append((f"res{level}a", BasicBlock(cin, cout, stride, projection)))
        stages.append((f"res{level}b", BasicBlock(cout, cout, 1, False)))
        cin = cout
    stages += [("pool5", GlobalAvgPool()), ("fc8", FlattenLinear(512, num_classes, relu=False)),
               ("prob", Softmax())]
    return StagedNet(stages)


RES3D_SPORTS1M = ModelSpec(
    name="res3d-sports1m",
    model="res3d",
    build=res3d,
    input=INPUTS["res3d-sports1m"],
    default_layers=DEFAULT_LAYERS["res3d-sports1m"],
    weights_name="res3d-sports1m",
    description="Res3D (3D ResNet-18), Caffe v1.1 Sports-1M (c3d_resnet18_sports1m_r2_iter_2800000); "
                "res5b = 512x1x7x7",
)


def r3d_18(num_classes: int = 400) -> StagedNet:
    """torchvision's r3d_18 layout under the Caffe names: no res2a projection, 400 Kinetics classes."""
    return res3d(num_classes=num_classes, res2a_projection=False)


R3D18_KINETICS400 = ModelSpec(
    name="r3d18-kinetics400",
    model="res3d",
    build=r3d_18,
    input=INPUTS["r3d18-kinetics400"],
    default_layers=DEFAULT_LAYERS["r3d18-kinetics400"],
    weights_name="r3d18-kinetics400",
    description="torchvision r3d_18, Kinetics-400 (r3d_18-b3b3357e.pth); pool5 = 512-d average of res5b",
)
