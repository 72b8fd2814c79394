"""Published checkpoints -> state dicts in this package's layout, and mean cubes -> arrays.

Formats are recognised from the bytes, never from the file name:
    caffemodel-v1.0    C3D Sports-1M (Caffe C3D v1.0, 5-D blobs)        -> spec c3d-sports1m
    caffemodel-v1.1    Res3D Sports-1M (Caffe C3D v1.1, BN + Scale)     -> spec res3d-sports1m
    c3d-pickle         DavideA/c3d-pytorch `c3d.pickle`                 -> spec c3d-sports1m
    mmaction2          OpenMMLab's C3D backbone (conv1a.conv.weight ... fc7, no fc8; bare, or under
                       `state_dict` with `backbone.` prefixes)         -> spec c3d-sports1m
    torchvision-r3d18  torchvision `r3d_18` state dict                  -> spec r3d18-kinetics400
    c3d_extract        a file this package wrote (or a plain state dict under the Caffe names)
    binaryproto, npy   mean cubes (3 x 16 x 128 x 171)
"""

from __future__ import annotations

import bz2
import io
import os
import re
from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np
import torch

from c3d_extract.errors import UsageError
from c3d_extract.weights.caffe import CaffeError, CaffeNet, read_blob, read_net
from c3d_extract.models.registry import SPECS, ModelSpec
from c3d_extract.storage import StorageError, is_storage_error, temp_name, write_atomically

LAYOUT = "c3d_extract.weights"
C3D_PARAM_LAYERS = ("conv1a", "conv2a", "conv3a", "conv3b", "conv4a", "conv4b", "conv5a", "conv5b",
                    "fc6", "fc7", "fc8")


class WeightsError(UsageError):
    """A weights or mean file that is unreadable, unsafe or does not fit; names the layer or offset."""


@dataclass
class Converted:
    """A checkpoint in this package's layout: which spec it is for and where it came from."""

    spec: ModelSpec
    state_dict: dict[str, torch.Tensor]
    source_format: str
    source_sha256: Optional[str] = None  # recorded in files this package converted


def _strip(array: np.ndarray) -> np.ndarray:
    """Drop Caffe's leading singleton axes: fc (1,1,1,out,in) -> (out,in), bias (1,1,1,1,n) -> (n,)."""
    shape = list(array.shape)
    while len(shape) > 1 and shape[0] == 1:
        shape.pop(0)
    return array.reshape(shape)


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _c3d_from_caffe(net: CaffeNet, path: str) -> tuple[dict, dict]:
    """Match the 11 weighted layers by name (fc6-1 = fc6) where the names agree, else by order."""
    by_name = {layer.name.split("-")[0]: layer for layer in net.layers}
    if len(net.layers) == len(C3D_PARAM_LAYERS) and all(n in by_name for n in C3D_PARAM_LAYERS):
        chosen = [by_name[n] for n in C3D_PARAM_LAYERS]
    elif len(net.layers) == len(C3D_PARAM_LAYERS):
        chosen = net.layers  # other names: the order of the weighted layers is C3D's
    else:
        raise WeightsError(f"{path}: has {len(net.layers)} layers with weights "
                           f"({', '.join(l.name for l in net.layers)}); C3D has 11 ({', '.join(C3D_PARAM_LAYERS)})")
    state, origin = {}, {}
    for ours, layer in zip(C3D_PARAM_LAYERS, chosen):
        if len(layer.blobs) != 2:
            raise WeightsError(f"{path}: layer {layer.name} has {len(layer.blobs)} blobs, expected weight and bias")
        state[f"{ours}.weight"], state[f"{ours}.bias"] = _tensor(_strip(layer.blobs[0])), _tensor(layer.blobs[1].reshape(-1))
        origin[f"{ours}.weight"] = origin[f"{ours}.bias"] = layer.name
    return state, origin


def _res3d_from_caffe(net: CaffeNet, path: str) -> tuple[dict, dict]:
    """Caffe names -> modules; BatchNorm stats divided by the stored scale factor, Scale folded."""
    layers = {layer.name: layer for layer in net.layers}
    used: set[str] = set()
    state, origin = {}, {}

    def take(name: str):
        if name not in layers:
            raise WeightsError(f"{path}: layer {name} is missing (a Res3D v1.1 model has it)")
        used.add(name)
        return layers[name].blobs

    def conv(name: str, ours: str) -> None:
        blobs = take(name)
        state[f"{ours}.weight"] = _tensor(blobs[0])
        origin[f"{ours}.weight"] = name

    def batchnorm(bn: str, scale: str, ours: str) -> None:
        mean, var, factor = take(bn)[:3]
        s = float(factor.reshape(-1)[0])
        s = 0.0 if s == 0 else 1.0 / s  # Caffe: stats are stored multiplied by this factor
        gamma_beta = take(scale) if scale in layers else [np.ones(mean.size), np.zeros(mean.size)]
        values = {"running_mean": mean.reshape(-1) * s, "running_var": var.reshape(-1) * s,
                  "weight": gamma_beta[0].reshape(-1),
                  "bias": gamma_beta[1].reshape(-1) if len(gamma_beta) > 1 else np.zeros(mean.size)}
        for key, value in values.items():
            state[f"{ours}.{key}"] = _tensor(value)
            origin[f"{ours}.{key}"] = f"{bn}/{scale}"
        state[f"{ours}.num_batches_tracked"] = torch.tensor(0)

    conv("conv1", "conv1.conv")
    batchnorm("bn_conv1", "scale_conv1", "conv1.bn")
    for level in (2, 3, 4, 5):
        for block in "ab":
            for branch in ("branch2a", "branch2b", "branch1"):
                name = f"res{level}{block}_{branch}"
                if branch == "branch1" and name not in layers:
                    continue
                conv(name, f"res{level}{block}.{branch}")
                batchnorm(f"bn{level}{block}_{branch}", f"scale{level}{block}_{branch}",
                          f"res{level}{block}.bn_{branch}")
    fc8 = take("fc8")
    state["fc8.weight"], state["fc8.bias"] = _tensor(_strip(fc8[0])), _tensor(fc8[1].reshape(-1))
    origin["fc8.weight"] = origin["fc8.bias"] = "fc8"
    unknown = [name for name in layers if name not in used]
    if unknown:
        raise WeightsError(f"{path}: layers with weights that Res3D does not have: {', '.join(unknown)}")
    return state, origin


_TV_PARTS = {("conv1", "0"): "branch2a", ("conv1", "1"): "bn_branch2a", ("conv2", "0"): "branch2b",
             ("conv2", "1"): "bn_branch2b", ("downsample", "0"): "branch1", ("downsample", "1"): "bn_branch1"}


def _from_torchvision(state: Mapping[str, torch.Tensor], path: str) -> dict:
    out = {}
    for key, value in state.items():
        if key.startswith(("stem.0.", "stem.1.")):
            new = ("conv1.conv." if key[5] == "0" else "conv1.bn.") + key[7:]
        elif key.startswith("fc."):
            new = "fc8." + key[3:]
        else:
            match = re.fullmatch(r"layer(\d)\.(\d)\.(conv1|conv2|downsample)\.(\d)\.(\w+)", key)
            if not match or (match[3], match[4]) not in _TV_PARTS:
                raise WeightsError(f"{path}: key {key} is not part of torchvision's r3d_18")
            new = f"res{int(match[1]) + 1}{'ab'[int(match[2])]}.{_TV_PARTS[match[3], match[4]]}.{match[5]}"
        out[new] = value
    return out


def _from_c3d_pickle(state: Mapping[str, torch.Tensor]) -> dict:
    rename = {"conv1": "conv1a", "conv2": "conv2a"}
    return {rename.get(key.split(".")[0], key.split(".")[0]) + key[key.index("."):]: value
            for key, value in state.items()}


_MM_HEAD = "cls_head.fc_cls."  # a whole mmaction2 recognizer: its head is this network's fc8


def _is_mmaction2(state: Mapping[str, torch.Tensor]) -> bool:
    return any(key.removeprefix("backbone.") == "conv1a.conv.weight" for key in state)


def _from_mmaction2(state: Mapping[str, torch.Tensor], path: str) -> tuple[dict, dict]:
    """mmaction2's C3D: `convNx.conv.*` -> `convNx.*`, fc6/fc7 as they are (its forward reads them
    after ReLU, as here), fc8 where a conversion kept it, a recognizer's `cls_head.fc_cls` -> fc8;
    any other key is refused."""
    out, origin = {}, {}
    for key, value in state.items():
        name = key.removeprefix("backbone.")
        match = re.fullmatch(r"(conv\d[ab])\.conv\.(weight|bias)", name)
        if match:
            new = f"{match[1]}.{match[2]}"
        elif re.fullmatch(r"fc[678]\.(weight|bias)", name):
            new = name  # fc8: a conversion that kept the Sports-1M classifier (mmaction2 ignores it)
        elif key.startswith(_MM_HEAD):
            new = "fc8." + key[len(_MM_HEAD):]
        else:
            raise WeightsError(f"{path}: key {key} is not part of mmaction2's C3D (conv1a.conv ... conv5b.conv, "
                               f"fc6, fc7, and fc8 or a recognizer's cls_head.fc_cls)")
        if new in out:
            raise WeightsError(f"{path}: {origin[new]} and {key} both map to {new}")
        out[new], origin[new] = value, key
    return out, origin


def _torch_load(path: str):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and unsafe-global errors alike mean "refused"
        text = " ".join(str(exc).split())
        if "weights_only" in text or "Unsupported global" in text or "GLOBAL" in text:
            raise WeightsError(f"{path}: refused: the file holds Python objects other than tensors "
                               f"(loading it could run code); only plain state dicts are read") from None
        raise WeightsError(f"{path}: not a loadable PyTorch file ({text[:200]})") from None


def _fit(spec: ModelSpec, state: dict, origin: Mapping[str, str], path: str) -> dict:
    """Check every parameter against the spec's network; errors name the source layer."""
    head = state.get(f"{spec.classifier}.weight")
    with torch.device("meta"):  # no classifier in the file: the network without one (C3D builds it; others
        net = spec.build(num_classes=head.shape[0] if head is not None else 0)  # then report fc8 missing)
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{origin.get(k, k)} -> {k}: {list(state[k].shape)}, expected {list(v.shape)}"
             for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = ([f"missing {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}"] if missing else []) + \
               ([f"not in {spec.name}: {', '.join(unexpected[:6])}{' ...' if len(unexpected) > 6 else ''}"]
                if unexpected else []) + ([f"wrong shape {'; '.join(wrong[:4])}"] if wrong else [])
    if problems:
        raise WeightsError(f"{path}: does not fit {spec.name} ({'; '.join(problems)})")
    return {k: state[k].to(v.dtype) for k, v in expected.items()}


def _plain_spec(state: Mapping[str, torch.Tensor]) -> Optional[ModelSpec]:
    """The spec a plain state dict under this package's names belongs to (T3D files must be wrapped)."""
    if "conv1a.weight" in state:
        return SPECS["c3d-sports1m"]
    if "conv1.conv.weight" in state:
        return SPECS["res3d-sports1m" if "res2a.branch1.weight" in state else "r3d18-kinetics400"]
    return None


def read_checkpoint(path: str) -> Converted:
    """Any supported checkpoint file -> the spec it belongs to and a checked state dict."""
    if not os.path.isfile(path):
        raise WeightsError(f"{path}: no such weights file")
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        obj = _torch_load(path)
        if isinstance(obj, Mapping) and obj.get("format") == LAYOUT:
            if obj.get("spec") not in SPECS:
                raise WeightsError(f"{path}: written for spec {obj.get('spec')!r}, which this version does not know")
            spec = SPECS[obj["spec"]]
            return Converted(spec, _fit(spec, dict(obj["state_dict"]), {}, path), LAYOUT, obj.get("source_sha256"))
        if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
            obj = obj["state_dict"]
        if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise WeightsError(f"{path}: a PyTorch file without a state dict of tensors")
        state = dict(obj)
        origin: dict = {}
        if "stem.0.weight" in state:
            spec, fmt, state = SPECS["r3d18-kinetics400"], "torchvision-r3d18", _from_torchvision(state, path)
        elif _is_mmaction2(state):
            spec, fmt, (state, origin) = SPECS["c3d-sports1m"], "mmaction2", _from_mmaction2(state, path)
        elif "conv1.weight" in state and "conv3a.weight" in state:
            spec, fmt, state = SPECS["c3d-sports1m"], "c3d-pickle", _from_c3d_pickle(state)
        else:
            spec, fmt = _plain_spec(state), LAYOUT
            if spec is None:
                raise WeightsError(f"{path}: a state dict of an unknown network (first keys: "
                                   f"{', '.join(list(state)[:4])})")
        return Converted(spec, _fit(spec, state, origin, path), fmt)
    try:
        net = read_net(path)
    except CaffeError as exc:
        if exc.not_caffe:
            raise WeightsError(f"{path}: not a known weights format (PyTorch, .caffemodel v1.0 or v1.1)") from None
        raise WeightsError(str(exc)) from None
    if net.version == "v1.0":
        spec, (state, origin) = SPECS["c3d-sports1m"], _c3d_from_caffe(net, path)
    else:
        spec, (state, origin) = SPECS["res3d-sports1m"], _res3d_from_caffe(net, path)
    return Converted(spec, _fit(spec, state, origin, path), f"caffemodel-{net.version}")


def save_checkpoint(converted: Converted, path: str, source: str, source_sha256: str) -> None:
    """Write this package's layout atomically: a temporary file, read back and compared, then renamed,
    so a full disk never leaves a half-written checkpoint under `path`. A storage fault raises
    StorageError (the temporary file removed)."""
    payload = {"format": LAYOUT, "format_version": 1, "spec": converted.spec.name,
               "source": source, "source_format": converted.source_format,
               "source_sha256": source_sha256, "state_dict": converted.state_dict}

    def check(tmp: str) -> None:  # what was written reads back whole and equal, before it gets its name
        written = read_checkpoint(tmp).state_dict
        if written.keys() != converted.state_dict.keys() or not all(
                torch.equal(written[k], converted.state_dict[k]) for k in written):
            raise WeightsError(f"{tmp}: the written weights do not read back equal; {path} was not written")

    try:
        write_atomically(path, lambda handle: torch.save(payload, handle), check)
    except OSError as exc:
        if is_storage_error(exc):
            raise StorageError(temp_name(path), exc, f"nothing was written ({path} is as it was)") from None
        raise


def read_mean(path: str, expected: tuple[int, ...]) -> np.ndarray:
    """A mean cube from .binaryproto (C3D v1.0 or v1.1), .npy or .npy.bz2, as float32 `expected`
    (channels, frames, height, width) in the file's own channel order (Caffe: BGR)."""
    if not os.path.isfile(path):
        raise WeightsError(f"{path}: no such mean file")
    with open(path, "rb") as handle:
        data = handle.read()
    if data.startswith(b"BZh"):
        data = bz2.decompress(data)
    if data.startswith(b"\x93NUMPY"):
        array = np.load(io.BytesIO(data), allow_pickle=False)
    else:
        try:
            array = read_blob(path)[1]
        except CaffeError as exc:
            raise WeightsError(str(exc)) from None
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == len(expected) + 1 and array.shape[0] == 1:
        array = array[0]
    if tuple(array.shape) != tuple(expected):
        raise WeightsError(f"{path}: mean of shape {tuple(array.shape)}, this spec needs {tuple(expected)}")
    return array

