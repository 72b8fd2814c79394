"""Reading Caffe C3D files without Caffe: .caffemodel nets of C3D v1.0 and v1.1, .binaryproto blobs.

The messages are described at run time for the `protobuf` library with the field numbers of the
two C3D forks (reference/peers.md 1.5-1.6); only the fields needed for weights are declared:

    v1.0  NetParameter.layers = 2 -> LayerParameter{name = 4, type = 5 (enum), blobs = 6}
          BlobProto{num = 1, channels = 2, length = 3, height = 4, width = 5, data = 6, diff = 7}
    v1.1  NetParameter.layer = 100 -> LayerParameter{name = 1, type = 2 (string), blobs = 7}
          BlobProto{num = 1, channels = 2, height = 3, width = 4, data = 5, diff = 6,
                    shape = 7 (BlobShape{dim = 1}), double_data = 8}

Stock BVLC numbering would read v1.0 weights into `diff`: the two versions are told apart by what
parses into a consistent blob (data length = product of the shape).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from c3d_extract.errors import UsageError

_F = descriptor_pb2.FieldDescriptorProto


class CaffeError(UsageError):
    """A Caffe file that cannot be read: names the file and, for a cut file, the byte offset.
    `not_caffe` is True when nothing in the file looked like Caffe at all."""

    def __init__(self, message: str, not_caffe: bool = False):
        super().__init__(message)
        self.not_caffe = not_caffe


@lru_cache(maxsize=1)
def _messages() -> dict[str, type]:
    proto = descriptor_pb2.FileDescriptorProto(name="c3d_extract_caffe.proto", package="c3dx", syntax="proto2")

    def message(name: str, fields: list[tuple]) -> None:
        msg = proto.message_type.add(name=name)
        for field_name, number, kind, repeated, type_name in fields:
            field = msg.field.add(name=field_name, number=number, type=kind,
                                  label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
            if type_name:
                field.type_name = f".c3dx.{type_name}"
            if repeated and kind in (_F.TYPE_FLOAT, _F.TYPE_DOUBLE, _F.TYPE_INT64):
                field.options.packed = True  # the parser takes packed and unpacked alike

    message("BlobShape", [("dim", 1, _F.TYPE_INT64, True, None)])
    message("Blob10", [("num", 1, _F.TYPE_INT32, False, None), ("channels", 2, _F.TYPE_INT32, False, None),
                       ("length", 3, _F.TYPE_INT32, False, None), ("height", 4, _F.TYPE_INT32, False, None),
                       ("width", 5, _F.TYPE_INT32, False, None), ("data", 6, _F.TYPE_FLOAT, True, None)])
    message("Blob11", [("num", 1, _F.TYPE_INT32, False, None), ("channels", 2, _F.TYPE_INT32, False, None),
                       ("height", 3, _F.TYPE_INT32, False, None), ("width", 4, _F.TYPE_INT32, False, None),
                       ("data", 5, _F.TYPE_FLOAT, True, None), ("shape", 7, _F.TYPE_MESSAGE, False, "BlobShape"),
                       ("double_data", 8, _F.TYPE_DOUBLE, True, None)])
    message("Layer10", [("name", 4, _F.TYPE_STRING, False, None), ("type", 5, _F.TYPE_INT32, False, None),
                        ("blobs", 6, _F.TYPE_MESSAGE, True, "Blob10")])
    message("Layer11", [("name", 1, _F.TYPE_STRING, False, None), ("type", 2, _F.TYPE_STRING, False, None),
                        ("blobs", 7, _F.TYPE_MESSAGE, True, "Blob11")])
    message("Net", [("name", 1, _F.TYPE_STRING, False, None), ("layers", 2, _F.TYPE_MESSAGE, True, "Layer10"),
                    ("layer", 100, _F.TYPE_MESSAGE, True, "Layer11")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"c3dx.{name}"))
            for name in ("Blob10", "Blob11", "Net")}


@dataclass
class CaffeLayer:
    name: str
    type: str
    blobs: list[np.ndarray]


@dataclass
class CaffeNet:
    version: str  # "v1.0" or "v1.1"
    name: str
    layers: list[CaffeLayer]


# v1.0 LayerParameter.type enum values that C3D nets use (C3D-v1.0 caffe.proto)
_V10_TYPES = {4: "CONVOLUTION", 14: "INNER_PRODUCT", 18: "RELU", 20: "SOFTMAX", 30: "CONVOLUTION3D",
              31: "POOLING3D", 33: "VIDEO_DATA", 6: "DROPOUT"}


def _blob10(blob) -> np.ndarray:
    shape = (blob.num, blob.channels, blob.length, blob.height, blob.width)
    data = np.asarray(blob.data, dtype=np.float32)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"blob of shape {shape} holds {data.size} values")
    return data.reshape(shape)


def _blob11(blob) -> np.ndarray:
    if blob.HasField("shape"):
        shape = tuple(int(d) for d in blob.shape.dim)
    else:
        shape = (blob.num, blob.channels, blob.height, blob.width)
    values = blob.data if len(blob.data) else blob.double_data
    data = np.asarray(values, dtype=np.float32)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"blob of shape {shape} holds {data.size} values")
    return data.reshape(shape)


def _truncation(data: bytes) -> tuple[int, str] | None:
    """Where a cut file breaks: (byte, 'field N at byte B needs L bytes, but the file ends at S')."""
    pos, size = 0, len(data)

    def varint() -> int:
        nonlocal pos
        shift = value = 0
        while True:
            if pos >= size:
                raise EOFError
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    try:
        while pos < size:
            start = pos
            key = varint()
            number, wire = key >> 3, key & 7
            if wire == 0:
                varint()
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            elif wire == 2:
                length = varint()
                if pos + length > size:
                    return start, (f"field {number} at byte {start} needs {length} bytes from byte {pos}, "
                                   f"but the file ends at byte {size}")
                pos += length
            else:
                return start, f"unknown wire type {wire} at byte {start}"
            if pos > size:
                return start, f"field {number} at byte {start} runs past the end of the file (byte {size})"
    except EOFError:
        return size, f"the file ends inside a field header at byte {size}"
    return None


def _parse(message_type: type, data: bytes, path: str):
    try:
        return message_type.FromString(data)
    except DecodeError as exc:
        offset, where = _truncation(data) or (0, str(exc))
        raise CaffeError(f"{path}: not a readable Caffe protobuf file ({where})", not_caffe=offset == 0) from None


def read_net(path: str) -> CaffeNet:
    """All layers that carry blobs, in file order, from a C3D v1.0 or v1.1 .caffemodel."""
    with open(path, "rb") as handle:
        data = handle.read()
    net = _parse(_messages()["Net"], data, path)
    if len(net.layer):
        version, layers, convert = "v1.1", net.layer, _blob11
        typename = (lambda layer: layer.type)
    elif len(net.layers):
        version, layers, convert = "v1.0", net.layers, _blob10
        typename = (lambda layer: _V10_TYPES.get(layer.type, str(layer.type)))
    else:
        raise CaffeError(f"{path}: holds no Caffe layers (not a .caffemodel, or an empty net)", not_caffe=True)
    out = []
    for layer in layers:
        if not len(layer.blobs):
            continue
        try:
            blobs = [convert(blob) for blob in layer.blobs]
        except ValueError as exc:
            raise CaffeError(f"{path}: layer {layer.name}: {exc}") from None
        out.append(CaffeLayer(layer.name, typename(layer), blobs))
    if not out:
        raise CaffeError(f"{path}: a Caffe net without weights (a .prototxt saved as binary?)")
    return CaffeNet(version, net.name, out)


def read_blob(path: str) -> tuple[str, np.ndarray]:
    """A .binaryproto blob (the mean cube) of either version: (version, array)."""
    with open(path, "rb") as handle:
        data = handle.read()
    for version, name, convert in (("v1.1", "Blob11", _blob11), ("v1.0", "Blob10", _blob10)):
        blob = _parse(_messages()[name], data, path)
        try:
            array = convert(blob)
        except ValueError:
            continue
        if array.size:
            return version, array
    raise CaffeError(f"{path}: not a Caffe .binaryproto blob of either C3D version")
