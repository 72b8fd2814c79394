"""The networks: published parameter counts, layer shapes, Caffe pooling and names, early stop."""

import pytest
import torch
import torch.nn.functional as F

from c3d_extract.errors import UsageError
from c3d_extract.models.registry import C3D_SPORTS1M, RES3D_SPORTS1M, c3d, get_spec, res3d
from c3d_extract.models.net import init_random


def n_params(net):
    return sum(p.numel() for p in net.parameters())


def test_c3d_parameter_count_matches_the_caffe_model():
    # conv 27,655,936 + fc6 33,558,528 + fc7 16,781,312 + fc8 1,995,239 (reference/peers.md 1.4)
    assert n_params(c3d()) == 79_991_015


def test_res3d_parameter_count_matches_caffe_and_torchvision():
    # torchvision r3d_18 (no res2a projection, 400 classes) has 33,371,472 parameters
    assert n_params(res3d(num_classes=400, res2a_projection=False)) == 33_371_472
    # The Caffe model adds res2a_branch1 (64x64 conv + BN: 4,224) and 87 more classes (87 x 513)
    assert n_params(res3d()) == 33_371_472 + 4_224 + 87 * 513


def test_layer_shapes_of_the_published_models():
    c3d_shapes = C3D_SPORTS1M.layer_shapes(["pool5", "fc6", "fc7", "fc8", "prob"])
    assert c3d_shapes == {"pool5": (512, 1, 4, 4), "fc6": (4096,), "fc7": (4096,), "fc8": (487,), "prob": (487,)}
    res_shapes = RES3D_SPORTS1M.layer_shapes(["res5b", "pool5", "prob"])
    assert res_shapes == {"res5b": (512, 1, 7, 7), "pool5": (512,), "prob": (487,)}
    assert RES3D_SPORTS1M.input.frames == 8 and C3D_SPORTS1M.input.frames == 16


def test_module_names_are_the_caffe_layer_names():
    keys = set(c3d().state_dict())
    for name in ["conv1a", "conv2a", "conv3a", "conv3b", "conv4a", "conv4b", "conv5a", "conv5b", "fc6", "fc7", "fc8"]:
        assert f"{name}.weight" in keys and f"{name}.bias" in keys
    res_keys = set(res3d().state_dict())
    assert {"conv1.conv.weight", "conv1.bn.running_var", "res2a.branch1.weight", "res2a.bn_branch1.weight",
            "res3a.branch2a.weight", "res5b.bn_branch2b.running_mean", "fc8.weight"} <= res_keys
    assert "res2b.branch1.weight" not in res_keys


def test_pool5_uses_caffe_ceil_windows_not_the_pytorch_ports_padding():
    net = c3d()
    x = torch.rand(2, 512, 2, 7, 7)  # post-ReLU conv5b values are >= 0
    caffe = F.max_pool3d(F.pad(x, (0, 1, 0, 1)), 2, 2)  # windows [0,2),[2,4),[4,6),[6,7)
    assert torch.equal(net.pool5(x), caffe)
    ports = F.max_pool3d(x, 2, 2, padding=(0, 1, 1))  # DavideA/mmaction2: windows [-1,1),[1,3),...
    assert ports.shape == caffe.shape and not torch.equal(ports, caffe)


def test_forward_returns_requested_layers_and_stops_after_the_last():
    net = c3d()
    init_random(net, 0)
    called = []
    net.fc6.register_forward_hook(lambda *a: called.append("fc6"))
    x = torch.randn(1, 3, 16, 112, 112)
    out = net(x, ["pool5", "conv5b"])
    assert list(out) == ["conv5b", "pool5"] and called == []
    out = net(x, ["fc6", "prob"])
    assert called == ["fc6"] and (out["fc6"] >= 0).all() and out["fc6"].gt(0).any()
    assert torch.allclose(out["prob"].sum(1), torch.ones(1))


def test_unknown_layer_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown layer.*fc9.*valid layers: conv1a, pool1"):
        c3d().check_layers(["fc6", "fc9"])
    with pytest.raises(ValueError, match="res5b"):
        RES3D_SPORTS1M.layer_shapes(["fc6"])


def test_clip_settings_that_do_not_fit_fc6_are_refused():
    with pytest.raises(ValueError, match="do not fit"):
        C3D_SPORTS1M.with_input(clip_len=32).layer_shapes(["fc6"])
    # convolutional layers take any clip length
    assert C3D_SPORTS1M.with_input(clip_len=32).layer_shapes(["pool5"])["pool5"] == (512, 2, 4, 4)


def test_res3d_block_downsamples_time_and_space_at_res3a_res4a_res5a():
    net = res3d()
    init_random(net, 1)
    out = net(torch.randn(1, 3, 8, 112, 112), ["res2b", "res3a", "res4a", "res5b", "pool5"])
    assert out["res2b"].shape[1:] == (64, 8, 56, 56)
    assert out["res3a"].shape[1:] == (128, 4, 28, 28)
    assert out["res4a"].shape[1:] == (256, 2, 14, 14)
    assert (out["res5b"] >= 0).all()
    assert torch.allclose(out["pool5"], out["res5b"].mean(dim=(2, 3, 4)))


def test_random_init_is_deterministic_and_input_dependent():
    a, b = c3d(), c3d()
    init_random(a, 7)
    init_random(b, 7)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    x1, x2 = torch.randn(1, 3, 16, 112, 112), torch.randn(1, 3, 16, 112, 112)
    with torch.no_grad():
        f1, f2 = (F.normalize(a(x, ["fc6"])["fc6"]) for x in (x1, x2))
    # Deep random ReLU nets map inputs to correlated vectors (cosine ~0.995), but the distance is
    # still ~0.1: four orders of magnitude above the 1e-5 the end-to-end tests compare at.
    assert float((f1 - f2).norm()) > 0.02


def test_get_spec_accepts_model_and_spec_names():
    assert get_spec("c3d") is C3D_SPORTS1M and get_spec("res3d-sports1m") is RES3D_SPORTS1M
    with pytest.raises(UsageError, match="known: c3d, res3d, densenet3d-121, t3d-121"):
        get_spec("i3d")


@pytest.mark.parametrize("spec", [C3D_SPORTS1M, RES3D_SPORTS1M.with_input(clip_len=32)], ids=lambda s: s.name)
def test_layer_shapes_from_an_empty_batch_equal_those_of_a_real_clip(spec):
    # layer_shapes runs no clip (an empty batch: shapes only); a real one-clip forward must agree on every layer
    net = spec.build()
    init_random(net, 0)
    layers = list(net.stage_names)
    with torch.inference_mode():
        real = net.eval()(torch.rand(1, 3, spec.input.frames, *spec.input.crop), layers)
    assert spec.layer_shapes(layers, net=net) == {name: tuple(t.shape[1:]) for name, t in real.items()}
