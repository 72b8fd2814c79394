"""Checkpoint readers: each real format, written by the test, loads into a network whose layers equal
a forward computed here from the raw arrays; bad files fail with the layer or byte offset."""

import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from c3d_extract.weights.convert import WeightsError, read_checkpoint, read_mean, save_checkpoint
from c3d_extract.models.registry import SPECS
from c3d_extract.weights.load import file_sha256, load_weights
from c3d_extract.cli.weights import main as weights_main
from tests import checkpoints as ck


def t(a):
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


@pytest.fixture(scope="session")
def c3d_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("c3d")
    raw = ck.c3d_raw(seed=1)
    (root / "conv3d_deepnetA_sport1m_iter_1900000").write_bytes(ck.c3d_caffemodel_v10(raw))
    return root / "conv3d_deepnetA_sport1m_iter_1900000", raw


@pytest.fixture(scope="session")
def res3d_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("res3d")
    raw = ck.res3d_raw(seed=2)
    (root / "c3d_resnet18_sports1m_r2_iter_2800000.caffemodel").write_bytes(ck.res3d_caffemodel_v11(raw))
    return root / "c3d_resnet18_sports1m_r2_iter_2800000.caffemodel", raw


def assert_layer_close(ours, ref, layer):
    """Equal up to float32 rounding: max difference within 1e-5 of the layer's largest value."""
    assert ours.shape == ref.shape, layer
    assert float((ours - ref).abs().max()) <= 1e-5 * float(ref.abs().max()) + 1e-7, layer


def assert_layers_close(ours, ref, layers):
    """assert_layer_close for each of `layers`; `prob` (the softmax of fc8) within half the largest
    difference of the two fc8s: no probability moves by more (softmax's Jacobian has row sums of
    absolute values 2p(1-p) <= 1/2), and with large logits their float32 rounding (1e-5 of the largest
    logit) moves probabilities by more than 1e-5 of 1, by how much depending on the CPU's kernels."""
    for layer in layers:
        if layer == "prob":
            bound = 0.5 * float((ours["fc8"] - ref["fc8"]).abs().max()) + 1e-6
            assert float((ours["prob"] - ref["prob"]).abs().max()) <= bound, "prob"
        else:
            assert_layer_close(ours[layer], ref[layer], layer)


def c3d_reference(raw, x):
    """C3D written out from the Caffe blobs: conv+ReLU, max pools (pool5 with Caffe's ceil windows)."""
    out, pools = {}, {"conv1a": (1, 2, 2), "conv2a": 2, "conv3b": 2, "conv4b": 2, "conv5b": 2}
    for name, _, _ in ck.C3D_LAYERS:
        x = out[name] = F.relu(F.conv3d(x, t(raw[name][0]), t(raw[name][1]), padding=1))
        if name in pools:
            if name == "conv5b":
                x = F.pad(x, (0, 1, 0, 1))  # 7 -> windows [0,2),[2,4),[4,6),[6,7): exact since x >= 0
            x = F.max_pool3d(x, pools[name], pools[name])
    out["pool5"] = x
    x = x.flatten(1)
    out["fc6"] = x = F.relu(x @ t(raw["fc6"][0]).T + t(raw["fc6"][1]))
    out["fc7"] = x = F.relu(x @ t(raw["fc7"][0]).T + t(raw["fc7"][1]))
    out["fc8"] = x = x @ t(raw["fc8"][0]).T + t(raw["fc8"][1])
    out["prob"] = torch.softmax(x, 1)
    return out


def res3d_reference(raw, x):
    """Res3D written out from the Caffe blobs with Caffe's BatchNorm: stats / scale factor, eps 1e-5."""
    def bn(x, suffix):
        mean_s, var_s, s = raw[f"bn{suffix}"]
        gamma, beta = raw[f"scale{suffix}"]
        view = (1, -1, 1, 1, 1)
        return ((x - t(mean_s / s[0]).view(view)) / torch.sqrt(t(var_s / s[0]).view(view) + 1e-5)
                * t(gamma).view(view) + t(beta).view(view))

    out = {}
    x = out["conv1"] = F.relu(bn(F.conv3d(x, t(raw["conv1"][0]), stride=(1, 2, 2), padding=(1, 3, 3)), "_conv1"))
    for level in (2, 3, 4, 5):
        for block in "ab":
            name, stride = f"res{level}{block}", 2 if (block == "a" and level > 2) else 1
            y = F.relu(bn(F.conv3d(x, t(raw[f"{name}_branch2a"][0]), stride=stride, padding=1), f"{level}{block}_branch2a"))
            y = bn(F.conv3d(y, t(raw[f"{name}_branch2b"][0]), padding=1), f"{level}{block}_branch2b")
            shortcut = x
            if f"{name}_branch1" in raw:
                shortcut = bn(F.conv3d(x, t(raw[f"{name}_branch1"][0]), stride=stride), f"{level}{block}_branch1")
            x = out[name] = F.relu(y + shortcut)
    out["pool5"] = x.mean(dim=(2, 3, 4))
    out["fc8"] = out["pool5"] @ t(raw["fc8"][0]).T + t(raw["fc8"][1])
    out["prob"] = torch.softmax(out["fc8"], 1)
    return out


def test_c3d_v10_caffemodel_loads_and_every_layer_equals_the_raw_forward(c3d_files):
    path, raw = c3d_files
    converted = read_checkpoint(str(path))
    assert converted.source_format == "caffemodel-v1.0" and converted.spec.name == "c3d-sports1m"
    net = converted.spec.build()
    net.load_state_dict(converted.state_dict)
    x = torch.randn(1, 3, 16, 112, 112, generator=torch.Generator().manual_seed(5)) * 50
    with torch.no_grad():
        ours, ref = net.eval()(x, list(net.stage_names)), c3d_reference(raw, x)
    assert_layers_close(ours, ref, list(ref))
    assert ours["pool5"].shape == (1, 512, 1, 4, 4) and ours["fc6"].gt(0).any()


@pytest.mark.slow
def test_c3d_layers_match_by_order_when_names_differ(tmp_path):
    raw = ck.c3d_raw(seed=3, classes=101)  # a UCF101 fine-tuned head
    renamed = {f"layer{i}": v for i, v in enumerate(raw.values())}
    path = tmp_path / "finetuned.caffemodel"
    path.write_bytes(ck.c3d_caffemodel_v10(renamed, fc_suffix="", extra_layers=False))
    state = read_checkpoint(str(path)).state_dict
    assert torch.equal(state["conv3b.weight"], t(raw["conv3b"][0])) and state["fc8.weight"].shape == (101, 4096)
    bad = dict(raw, fc6=(raw["fc6"][0][:, :4096], raw["fc6"][1]))
    (tmp_path / "bad.caffemodel").write_bytes(ck.c3d_caffemodel_v10(bad))
    with pytest.raises(WeightsError, match=r"fc6-1 -> fc6.weight: \[4096, 4096\], expected \[4096, 8192\]"):
        read_checkpoint(str(tmp_path / "bad.caffemodel"))


def test_res3d_v11_caffemodel_loads_with_caffe_batchnorm(res3d_files):
    path, raw = res3d_files
    converted = read_checkpoint(str(path))
    assert converted.source_format == "caffemodel-v1.1" and converted.spec.name == "res3d-sports1m"
    net = converted.spec.build()
    net.load_state_dict(converted.state_dict)
    x = torch.randn(2, 3, 8, 112, 112, generator=torch.Generator().manual_seed(6)) * 50
    with torch.no_grad():
        ours, ref = net.eval()(x, list(net.stage_names)), res3d_reference(raw, x)
    assert_layers_close(ours, ref, ("conv1", "res2a", "res3a", "res4b", "res5b", "pool5", "fc8", "prob"))
    assert ours["res5b"].shape == (2, 512, 1, 7, 7)


def test_res3d_missing_layer_is_named(tmp_path, res3d_files):
    _, raw = res3d_files
    partial = {k: v for k, v in raw.items() if k != "res4b_branch2b"}
    (tmp_path / "partial.caffemodel").write_bytes(ck.res3d_caffemodel_v11(partial))
    with pytest.raises(WeightsError, match="layer res4b_branch2b is missing"):
        read_checkpoint(str(tmp_path / "partial.caffemodel"))


def test_truncated_caffemodel_names_the_byte_offset(tmp_path):
    data = ck.net_v11([ck.layer_v11("conv1", "Convolution3D", [np.ones((64, 3, 3, 7, 7), np.float32)])])
    (tmp_path / "cut.caffemodel").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"field 100 at byte \d+ needs \d+ bytes .* ends at byte \d+"):
        read_checkpoint(str(tmp_path / "cut.caffemodel"))


@pytest.mark.slow
def test_c3d_pickle_of_the_pytorch_port(tmp_path):
    raw = ck.c3d_raw(seed=4)
    port = OrderedDict()
    for name, (w, b) in raw.items():
        key = {"conv1a": "conv1", "conv2a": "conv2"}.get(name, name)
        port[f"{key}.weight"], port[f"{key}.bias"] = t(w), t(b)
    torch.save(port, tmp_path / "c3d.pickle", _use_new_zipfile_serialization=False)  # 2017's format
    converted = read_checkpoint(str(tmp_path / "c3d.pickle"))
    assert converted.source_format == "c3d-pickle" and converted.spec.name == "c3d-sports1m"
    assert torch.equal(converted.state_dict["conv1a.weight"], port["conv1.weight"])
    assert torch.equal(converted.state_dict["fc6.weight"], port["fc6.weight"])
    net = converted.spec.build()
    net.load_state_dict(converted.state_dict)
    x = torch.randn(1, 3, 16, 112, 112, generator=torch.Generator().manual_seed(7)) * 50
    with torch.no_grad():
        ours, ref = net.eval()(x, ["pool5", "fc6", "fc8", "prob"]), c3d_reference(raw, x)
    assert_layers_close(ours, ref, ("pool5", "fc6", "fc8", "prob"))  # Caffe's pool5 windows, not the port's padding


def test_torchvision_r3d18_state_dict_is_its_own_spec(tmp_path):
    rng = torch.Generator().manual_seed(5)
    sd = OrderedDict()

    def conv(key, cout, cin, k):
        sd[key] = torch.randn((cout, cin, *k), generator=rng)

    def bn(key, c):
        sd.update({f"{key}.weight": torch.rand(c, generator=rng), f"{key}.bias": torch.randn(c, generator=rng),
                   f"{key}.running_mean": torch.randn(c, generator=rng), f"{key}.running_var": torch.rand(c, generator=rng) + 0.5,
                   f"{key}.num_batches_tracked": torch.tensor(0)})

    conv("stem.0.weight", 64, 3, (3, 7, 7))
    bn("stem.1", 64)
    cin = 64
    for layer, cout in zip((1, 2, 3, 4), (64, 128, 256, 512)):
        for block in (0, 1):
            conv(f"layer{layer}.{block}.conv1.0.weight", cout, cin if block == 0 else cout, (3, 3, 3))
            bn(f"layer{layer}.{block}.conv1.1", cout)
            conv(f"layer{layer}.{block}.conv2.0.weight", cout, cout, (3, 3, 3))
            bn(f"layer{layer}.{block}.conv2.1", cout)
            if block == 0 and layer > 1:
                conv(f"layer{layer}.{block}.downsample.0.weight", cout, cin, (1, 1, 1))
                bn(f"layer{layer}.{block}.downsample.1", cout)
        cin = cout
    sd["fc.weight"], sd["fc.bias"] = torch.randn(400, 512, generator=rng), torch.randn(400, generator=rng)
    torch.save(sd, tmp_path / "r3d_18-b3b3357e.pth")
    converted = read_checkpoint(str(tmp_path / "r3d_18-b3b3357e.pth"))
    assert converted.spec.name == "r3d18-kinetics400" and converted.source_format == "torchvision-r3d18"
    state = converted.state_dict
    assert sum(v.numel() for k, v in state.items() if not k.endswith(("running_mean", "running_var", "tracked"))) == 33_371_472
    assert torch.equal(state["res3a.bn_branch1.running_var"], sd["layer2.0.downsample.1.running_var"])
    assert torch.equal(state["res5b.branch2b.weight"], sd["layer4.1.conv2.0.weight"])
    assert torch.equal(state["conv1.conv.weight"], sd["stem.0.weight"]) and torch.equal(state["fc8.bias"], sd["fc.bias"])
    spec = SPECS["r3d18-kinetics400"].input
    assert (spec.channels, spec.frame_step, spec.crop_offset, spec.value_scale) == ("RGB", 1, (8, 30), 1 / 255)
    # the forward equals the reference written from the raw torchvision tensors (BN with scale factor 1)
    raw = {"conv1": [sd["stem.0.weight"].numpy()], "bn_conv1": [sd["stem.1.running_mean"].numpy(),
           sd["stem.1.running_var"].numpy(), np.ones(1, np.float32)],
           "scale_conv1": [sd["stem.1.weight"].numpy(), sd["stem.1.bias"].numpy()],
           "fc8": [sd["fc.weight"].numpy(), sd["fc.bias"].numpy()]}
    for layer in (1, 2, 3, 4):
        for block in (0, 1):
            name = f"{layer + 1}{'ab'[block]}"
            for part, (conv, bn) in {"branch2a": ("conv1.0", "conv1.1"), "branch2b": ("conv2.0", "conv2.1"),
                                     "branch1": ("downsample.0", "downsample.1")}.items():
                prefix = f"layer{layer}.{block}."
                if prefix + conv + ".weight" not in sd:
                    continue
                raw[f"res{name}_{part}"] = [sd[prefix + conv + ".weight"].numpy()]
                raw[f"bn{name}_{part}"] = [sd[prefix + bn + ".running_mean"].numpy(),
                                           sd[prefix + bn + ".running_var"].numpy(), np.ones(1, np.float32)]
                raw[f"scale{name}_{part}"] = [sd[prefix + bn + ".weight"].numpy(), sd[prefix + bn + ".bias"].numpy()]
    net = converted.spec.build()
    net.load_state_dict(state)
    x = torch.randn(1, 3, 16, 112, 112, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        ours, ref = net.eval()(x, ["res3a", "res5b", "pool5", "fc8"]), res3d_reference(raw, x)
    assert_layers_close(ours, ref, ("res3a", "res5b", "pool5", "fc8"))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "evil.pt", "wb") as handle:
        pickle.dump({"conv1a.weight": Evil()}, handle, protocol=2)
    with pytest.raises(WeightsError, match="refused"):
        read_checkpoint(str(tmp_path / "evil.pt"))
    assert not marker.exists()


def test_unknown_and_missing_files(tmp_path):
    (tmp_path / "junk.bin").write_bytes(b"\x01\x02junk" * 100)
    with pytest.raises(WeightsError, match="not a known weights format|not a readable Caffe"):
        read_checkpoint(str(tmp_path / "junk.bin"))
    with pytest.raises(WeightsError, match="no such weights file"):
        read_checkpoint(str(tmp_path / "nope.pt"))


def test_mean_cubes_of_both_versions_and_npy_read_the_same(tmp_path):
    cube = np.random.default_rng(6).uniform(0, 255, (1, 3, 16, 128, 171)).astype(np.float32)
    (tmp_path / "v10.binaryproto").write_bytes(ck.blob_v10(cube))
    (tmp_path / "v11.binaryproto").write_bytes(ck.blob_v11(cube))
    np.save(tmp_path / "cube.npy", cube[0])
    for name in ("v10.binaryproto", "v11.binaryproto", "cube.npy"):
        np.testing.assert_array_equal(read_mean(str(tmp_path / name), (3, 16, 128, 171)), cube[0])
    (tmp_path / "fb.binaryproto").write_bytes(ck.blob_v10(cube[:, :, :, :, :128]))
    with pytest.raises(WeightsError, match=r"shape \(3, 16, 128, 128\), this spec needs \(3, 16, 128, 171\)"):
        read_mean(str(tmp_path / "fb.binaryproto"), (3, 16, 128, 171))


def test_convert_and_info_commands_and_loading_by_path(tmp_path, res3d_files):
    path, _ = res3d_files
    runner = CliRunner()
    result = runner.invoke(weights_main, ["convert", str(path), str(tmp_path / "res3d.pt")])
    assert result.exit_code == 0, result.output
    info = runner.invoke(weights_main, ["info", str(tmp_path / "res3d.pt")])
    assert info.exit_code == 0 and "spec:    res3d-sports1m" in info.output
    assert "res2a.branch1.weight" in info.output and "[64, 64, 1, 1, 1]" in info.output
    assert f"source sha256: {file_sha256(path)}" in info.output
    # the .caffemodel and its conversion are the same weights: one identity
    direct, converted = load_weights(str(path), "res3d"), load_weights(str(tmp_path / "res3d.pt"), None)
    assert direct.identity == converted.identity == file_sha256(path)
    assert all(torch.equal(a, b) for a, b in zip(direct.net.state_dict().values(), converted.net.state_dict().values()))
    with pytest.raises(WeightsError, match="weights of a res3d network.*--model c3d"):
        load_weights(str(path), "c3d")


def test_saved_layout_refuses_an_unknown_spec(tmp_path, res3d_files):
    converted = read_checkpoint(str(res3d_files[0]))
    converted.spec = SPECS["res3d-sports1m"]
    save_checkpoint(converted, str(tmp_path / "w.pt"), "src", "abc")
    payload = torch.load(tmp_path / "w.pt", weights_only=True)
    payload["spec"] = "i3d-imagenet"
    torch.save(payload, tmp_path / "w.pt")
    with pytest.raises(WeightsError, match="spec 'i3d-imagenet'"):
        read_checkpoint(str(tmp_path / "w.pt"))


def test_extract_runs_end_to_end_on_a_caffemodel(tmp_path, res3d_files, video_dir):
    from c3d_extract.cli.extract import main as extract_main

    path, _ = res3d_files
    out = tmp_path / "out.h5"
    result = CliRunner().invoke(extract_main, [str(video_dir), str(out), "--weights", str(path), "-q"])
    assert result.exit_code == 0, result.stderr  # no --model: the file says it is Res3D
    import h5py
    with h5py.File(out) as f:
        assert f.attrs["spec"] == "res3d-sports1m" and f.attrs["weights_sha256"] == file_sha256(path)
        assert f["features/res5b"].shape == (3, 25088)
        assert np.allclose(np.linalg.norm(f["features/res5b"][:], axis=1), 1, atol=1e-5)


def test_convert_and_info_of_a_mean_cube(tmp_path):
    cube = np.random.default_rng(9).uniform(0, 255, (1, 3, 16, 128, 171)).astype(np.float32)
    (tmp_path / "mean.binaryproto").write_bytes(ck.blob_v11(cube))
    runner = CliRunner()
    result = runner.invoke(weights_main, ["convert", str(tmp_path / "mean.binaryproto"), str(tmp_path / "mean.npy")])
    assert result.exit_code == 0 and "mean cube (3, 16, 128, 171)" in result.output
    np.testing.assert_array_equal(np.load(tmp_path / "mean.npy"), cube[0])
    info = runner.invoke(weights_main, ["info", str(tmp_path / "mean.npy")])
    assert info.exit_code == 0 and "format:  mean cube" in info.output
    bad = runner.invoke(weights_main, ["convert", str(tmp_path / "mean.binaryproto"), str(tmp_path / "mean.pt")])
    assert bad.exit_code == 1 and "written as .npy" in bad.output
