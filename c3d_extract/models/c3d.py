"""C3D (Tran et al., ICCV 2015) as released in Caffe C3D v1.0, trained on Sports-1M."""

from __future__ import annotations

from torch import nn

from c3d_extract.models.defaults import DEFAULT_LAYERS
from c3d_extract.models.net import Conv3dReLU, FlattenLinear, Softmax, StagedNet
from c3d_extract.models.spec import ModelSpec
from c3d_extract.models.inputs import INPUTS


def _pool(kernel) -> nn.MaxPool3d:
    # Caffe rounds pooled sizes up: pool5 maps 2x7x7 to 1x4x4 with windows [0,2),[2,4),[4,6),[6,7).
    return nn.MaxPool3d(kernel, kernel, ceil_mode=True)


HEADLESS = ("the checkpoint holds no classifier (fc8): OpenMMLab's C3D backbone ends at fc7; for fc8 and "
            "prob use the Caffe model (c3d-weights convert conv3d_deepnetA_sport1m_iter_1900000)")


def c3d(num_classes: int = 487) -> StagedNet:
    """The 8-conv C3D network; stages carry the Caffe blob names (conv1a ... fc6, fc7, fc8, prob).

    convN and fc6/fc7 are read after their in-place ReLU, like the blobs the original tool wrote.
    Dropout is omitted: it is the identity at test time. num_classes=0 builds the network without
    its classifier (fc8, prob), for weights that end at fc7 (OpenMMLab's C3D backbone).
    """
    def conv(cin: int, cout: int) -> Conv3dReLU:
        return Conv3dReLU(cin, cout, kernel_size=3, padding=1)

    stages = [
        ("conv1a", conv(3, 64)), ("pool1", _pool((1, 2, 2))),
        ("conv2a", conv(64, 128)), ("pool2", _pool(2)),
        ("conv3a", conv(128, 256)), ("conv3b", conv(256, 256)), ("pool3", _pool(2)),
        ("conv4a", conv(256, 512)), ("conv4b", conv(512, 512)), ("pool4", _pool(2)),
        ("conv5a", conv(512, 512)), ("conv5b", conv(512, 512)), ("pool5", _pool(2)),
        ("fc6", FlattenLinear(512 * 1 * 4 * 4, 4096, relu=True)),
        ("fc7", FlattenLinear(4096, 4096, relu=True)),
    ]
    if num_classes == 0:
        return StagedNet(stages, absent={name: HEADLESS for name in ("fc8", "prob")})
    return StagedNet(stages + [("fc8", FlattenLinear(4096, num_classes, relu=False)), ("prob", Softmax())])


C3D_SPORTS1M = ModelSpec(
    name="c3d-sports1m",
    model="c3d",
    build=c3d,
    input=INPUTS["c3d-sports1m"],
    default_layers=DEFAULT_LAYERS["c3d-sports1m"],
    weights_name="c3d-sports1m",
    description="C3D, Caffe v1.0 Sports-1M (conv3d_deepnetA_sport1m_iter_1900000); fc6 = 4096-d",
)
