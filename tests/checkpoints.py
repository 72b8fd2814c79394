"""Real-format checkpoint files written by the tests, with a protobuf wire encoder of their own.

The field numbers are those of the C3D forks (reference/peers.md 1.5-1.6), written here by hand so
the package's runtime-described schema is checked against an independent encoding.
"""

from __future__ import annotations

import numpy as np


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field_varint(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def field_bytes(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def packed_floats(number: int, array: np.ndarray) -> bytes:
    return field_bytes(number, np.ascontiguousarray(array, dtype="<f4").tobytes())


def blob_v10(array: np.ndarray) -> bytes:
    """C3D v1.0 BlobProto: num=1 channels=2 length=3 height=4 width=5 data=6 (5-D, leading 1s)."""
    shape = (1,) * (5 - array.ndim) + tuple(array.shape)
    return b"".join(field_varint(i + 1, n) for i, n in enumerate(shape)) + packed_floats(6, array.ravel())


def blob_v11(array: np.ndarray) -> bytes:
    """C3D v1.1 BlobProto: shape=7 (BlobShape dim=1, packed int64), data=5."""
    dims = field_bytes(1, b"".join(varint(int(n)) for n in array.shape))
    return field_bytes(7, dims) + packed_floats(5, array.ravel())


def layer_v10(name: str, type_enum: int, blobs: list[np.ndarray]) -> bytes:
    """v1.0 LayerParameter: name=4, type=5 (enum), blobs=6."""
    return (field_bytes(4, name.encode()) + field_varint(5, type_enum)
            + b"".join(field_bytes(6, blob_v10(b)) for b in blobs))


def layer_v11(name: str, type_name: str, blobs: list[np.ndarray]) -> bytes:
    """v1.1 LayerParameter: name=1, type=2 (string), blobs=7."""
    return (field_bytes(1, name.encode()) + field_bytes(2, type_name.encode())
            + b"".join(field_bytes(7, blob_v11(b)) for b in blobs))


def net_v10(layers: list[bytes]) -> bytes:
    """v1.0 NetParameter: name=1, layers=2."""
    return field_bytes(1, b"conv3d_deepnetA_sport1m") + b"".join(field_bytes(2, layer) for layer in layers)


def net_v11(layers: list[bytes]) -> bytes:
    """v1.1 NetParameter: name=1, layer=100."""
    return field_bytes(1, b"c3d_resnet18_sports1m") + b"".join(field_bytes(100, layer) for layer in layers)


C3D_LAYERS = [("conv1a", 3, 64), ("conv2a", 64, 128), ("conv3a", 128, 256), ("conv3b", 256, 256),
              ("conv4a", 256, 512), ("conv4b", 512, 512), ("conv5a", 512, 512), ("conv5b", 512, 512)]


def c3d_raw(seed: int = 0, classes: int = 487) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Random C3D weights as Caffe holds them: name -> (weight, bias); He-scaled so activations live."""
    rng = np.random.default_rng(seed)
    raw = {}
    for name, cin, cout in C3D_LAYERS:
        raw[name] = (rng.standard_normal((cout, cin, 3, 3, 3), np.float32) * np.sqrt(2 / (cin * 27)),
                     rng.standard_normal(cout, np.float32) * 0.01)
    for name, cin, cout in (("fc6", 8192, 4096), ("fc7", 4096, 4096), ("fc8", 4096, classes)):
        raw[name] = (rng.standard_normal((cout, cin), np.float32) * np.sqrt(2 / cin),
                     rng.standard_normal(cout, np.float32) * 0.01)
    return raw


def c3d_caffemodel_v10(raw: dict, fc_suffix: str = "-1", extra_layers: bool = True) -> bytes:
    """The extractor net: conv layers (CONVOLUTION3D = 30), fc6-1/fc7-1/fc8-1 (INNER_PRODUCT = 14)."""
    layers = [layer_v10("data", 33, [])] if extra_layers else []
    for name, (w, b) in raw.items():
        fc = name.startswith("fc")
        weight = w.reshape(1, 1, 1, *w.shape) if fc else w  # Caffe's 5-D fc blob (1,1,1,out,in)
        layers.append(layer_v10(name + (fc_suffix if fc else ""), 14 if fc else 30, [weight, b.reshape(1, 1, 1, 1, -1)]))
        if extra_layers:
            layers.append(layer_v10(f"relu_{name}", 18, []))
    return net_v10(layers)


def res3d_raw(seed: int = 0, classes: int = 487) -> dict[str, list[np.ndarray]]:
    """Random Res3D weights as Caffe holds them: conv weights, BatchNorm (mean*s, var*s, s) with a
    non-trivial scale factor s, Scale (gamma, beta), fc8."""
    rng = np.random.default_rng(seed)
    raw: dict[str, list[np.ndarray]] = {}

    def conv(name, cin, cout, k):
        raw[name] = [rng.standard_normal((cout, cin, *k), np.float32) * np.sqrt(2 / (cin * np.prod(k)))]

    def bn(suffix, c):
        s = np.float32(rng.uniform(0.5, 2.0))
        raw[f"bn{suffix}"] = [rng.standard_normal(c).astype(np.float32) * 0.1 * s,
                              rng.uniform(0.5, 1.5, c).astype(np.float32) * s, np.array([s], np.float32)]
        raw[f"scale{suffix}"] = [rng.uniform(0.8, 1.2, c).astype(np.float32),
                                 rng.standard_normal(c).astype(np.float32) * 0.1]

    conv("conv1", 3, 64, (3, 7, 7))
    bn("_conv1", 64)
    cin = 64
    for level, cout in zip((2, 3, 4, 5), (64, 128, 256, 512)):
        for block in "ab":
            first = block == "a"
            conv(f"res{level}{block}_branch2a", cin if first else cout, cout, (3, 3, 3))
            bn(f"{level}{block}_branch2a", cout)
            conv(f"res{level}{block}_branch2b", cout, cout, (3, 3, 3))
            bn(f"{level}{block}_branch2b", cout)
            if first:
                conv(f"res{level}{block}_branch1", cin, cout, (1, 1, 1))
                bn(f"{level}{block}_branch1", cout)
        cin = cout
    raw["fc8"] = [rng.standard_normal((classes, 512), np.float32) * np.sqrt(2 / 512),
                  rng.standard_normal(classes, np.float32) * 0.01]
    return raw


def res3d_caffemodel_v11(raw: dict) -> bytes:
    layers = [layer_v11("data", "VideoData", [])]
    for name, blobs in raw.items():
        kind = ("BatchNorm" if name.startswith("bn") else "Scale" if name.startswith("scale")
                else "InnerProduct" if name == "fc8" else "Convolution3D")
        layers.append(layer_v11(name, kind, blobs))
    layers.append(layer_v11("prob", "Softmax", []))
    return net_v11(layers)
