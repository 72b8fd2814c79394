"""DenseNet3D and T3D against Table 1 of Diba et al. 2017, and end to end on real videos."""

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from c3d_extract.cli.extract import main
from c3d_extract.models.registry import get_spec
from c3d_extract.models.densenet3d import avg_pool2, densenet3d
from c3d_extract.models.net import init_random
from bench.support.videos import UCF_LIKE, moving_frames, shared_video, write_video


def table1_parameters(blocks, ttl, classes=400, k=32):
    """Parameters of Table 1's network, derived by hand from the table:
    stem conv 7x7x3 (3 -> 64 channels, no bias) + its BN (2 x 64);
    each dense layer with c inputs: BN (2c) + 1x1x1 conv (c x 4k) + BN (2 x 4k) + 3x3x3 conv (4k x k x 27);
    a block of n layers adds n x k channels;
    transition: BN (2c) + 1x1x1 conv (c x c/2);
    TTL with depth d: three BN-ReLU-Conv branches on the same c inputs, together c/2 outputs split in
    thirds (w1, w2, w3): 3 x 2c + c x (w1 x 1 + w2 x 27 + w3 x 9d);
    head: BN (2c) + fc (c x classes + classes)."""
    total, c = 3 * 64 * 7 * 7 * 3 + 2 * 64, 64
    for index, layers in enumerate(blocks):
        for i in range(layers):
            ci = c + k * i
            total += 2 * ci + ci * 4 * k + 2 * 4 * k + 4 * k * k * 27
        c += layers * k
        if index == len(blocks) - 1:
            break
        half = c // 2
        if ttl:
            w1 = w2 = half // 3
            w3 = half - w1 - w2
            total += 3 * 2 * c + c * (w1 + 27 * w2 + 9 * (6, 4, 4)[index] * w3)
        else:
            total += 2 * c + c * half
        c = half
    return total + 2 * c + c * classes + classes


@pytest.mark.parametrize("name, blocks, ttl", [("densenet3d-121", (6, 12, 24, 16), False),
                                               ("t3d-121", (6, 12, 24, 16), True),
                                               ("t3d-169", (6, 12, 32, 32), True)])
def test_parameter_counts_follow_table_1(name, blocks, ttl):
    net = get_spec(name).build()
    assert sum(p.numel() for p in net.parameters()) == table1_parameters(blocks, ttl)


def test_output_sizes_are_table_1s_for_32_frames_at_224():
    # Table 1, "Output Size" (H x W x T): 112x112x16, 56x56x16, then /2 at each transition
    shapes = get_spec("t3d-121").layer_shapes(list(get_spec("t3d-121").build().stage_names))
    sizes = {name: tuple(shape[1:]) for name, shape in shapes.items() if len(shape) == 4}
    assert sizes == {"conv1": (16, 112, 112), "pool1": (16, 56, 56), "block1": (16, 56, 56),
                     "ttl1": (8, 28, 28), "block2": (8, 28, 28), "ttl2": (4, 14, 14), "block3": (4, 14, 14),
                     "ttl3": (2, 7, 7), "block4": (2, 7, 7)}
    # growth 32: 64 + 6 x 32 = 256 -> 128, + 12 x 32 = 512 -> 256, + 24 x 32 = 1024 -> 512, + 16 x 32 = 1024
    assert [shapes[n][0] for n in ("block1", "ttl1", "block2", "ttl2", "block3", "ttl3", "block4")] == \
        [256, 128, 512, 256, 1024, 512, 1024]
    assert shapes["pool5"] == (1024,) and shapes["fc"] == (400,)
    assert get_spec("t3d-169").layer_shapes(["pool5"])["pool5"] == (1664,)  # DenseNet-169's width
    small = get_spec("t3d-121-16x112")
    assert small.layer_shapes(["block4", "pool5"]) == {"block4": (1024, 1, 3, 3), "pool5": (1024,)}
    assert (small.input.frames, small.input.crop, get_spec("t3d-121").input.frames) == (16, (112, 112), 32)


def test_ttl_kernels_and_same_padding():
    net = get_spec("t3d-121").build()
    assert [tuple(getattr(net, f"ttl{i}").branchd.conv.kernel_size) for i in (1, 2, 3)] == [(6, 3, 3), (4, 3, 3), (4, 3, 3)]
    assert tuple(net.ttl1.branch3.conv.kernel_size) == (3, 3, 3) and tuple(net.ttl1.branch1.conv.kernel_size) == (1, 1, 1)
    x = torch.randn(1, 256, 16, 12, 12)
    assert net.ttl1.branchd(x).shape[2:] == (16, 12, 12)  # even depth 6 keeps 16 frames


def test_avg_pool2_equals_avg_pool3d_and_runs_in_bf16():
    x = torch.randn(2, 3, 5, 7, 9)
    torch.testing.assert_close(avg_pool2(x), F.avg_pool3d(x, 2))
    assert avg_pool2(x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last_3d)).shape == (2, 3, 2, 3, 4)


def recompute(path, net, spec):
    """Decode all, resize the short side, centre crop, RGB - mean, every 2nd frame of non-overlapping
    windows, forward per clip, mean, L2: written out without the pipeline."""
    import decord

    import cv2

    reader = decord.VideoReader(str(path), num_threads=1)
    frames = reader.get_batch(list(range(len(reader)))).asnumpy()
    h, w = frames.shape[1:3]
    scale = spec.short_side / min(h, w)
    size = (max(spec.short_side, round(h * scale)), max(spec.short_side, round(w * scale)))
    frames = np.stack([cv2.resize(f, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for f in frames])
    frames = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    top, left = (size[0] - spec.crop[0]) // 2, (size[1] - spec.crop[1]) // 2
    frames = frames[:, :, top: top + spec.crop[0], left: left + spec.crop[1]] - torch.tensor(spec.mean).view(1, 3, 1, 1)
    total, count = 0, 0
    with torch.no_grad():
        for start in range(0, len(frames) - spec.clip_len + 1, spec.stride):
            clip = frames[start: start + spec.clip_len: spec.frame_step].permute(1, 0, 2, 3)[None]
            total, count = total + net(clip, ["pool5"])["pool5"][0].double(), count + 1
    mean = total / count
    return (mean / mean.norm()).numpy()


@pytest.mark.slow
def test_t3d_small_rows_equal_an_independent_recomputation(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "real.avi").symlink_to(shared_video(UCF_LIKE))
    write_video(folder / "made.mp4", moving_frames(70, 180, 240, seed=3))
    out = tmp_path / "o.h5"
    result = CliRunner().invoke(main, [str(folder), str(out), "--model", "t3d-121-16x112", "--weights", "random",
                                       "--seed", "4", "--precision", "fp32", "-q"])
    assert result.exit_code == 0, result.stderr
    spec = get_spec("t3d-121-16x112")
    net = densenet3d((6, 12, 24, 16), ttl=True)
    init_random(net, 4)
    with h5py.File(out) as f:
        rows = dict(zip(f["videos"].asstr()[()], f["features/pool5"][()]))
        clips = dict(zip(f["videos"].asstr()[()], f["num_clips"][()]))
        assert f.attrs["spec"] == "t3d-121-16x112" and "short side 128" in f.attrs["settings"]
    assert clips == {"real.avi": 164 // 32, "made.mp4": 70 // 32}
    for key, row in rows.items():
        np.testing.assert_allclose(row, recompute(folder / key, net.eval(), spec.input), atol=1e-5, err_msg=key)


@pytest.mark.slow
def test_t3d_121_at_the_papers_input_runs_on_the_real_videos(tmp_path):
    folder = tmp_path / "real"
    folder.mkdir()
    for name in (UCF_LIKE, "opencv_Megamind.avi", "mmaction2__tests_data_rawvideo_dataset_part_0.mp4",
                 "decord__tests_test_data_corrupted.mp4"):
        (folder / name).symlink_to(shared_video(name))
    out = tmp_path / "t3d.h5"
    result = CliRunner().invoke(main, [str(folder), str(out), "--model", "t3d-121", "--weights", "random", "-q"])
    assert result.exit_code == 1  # the corrupt video, as for C3D and Res3D
    with h5py.File(out) as f:
        assert f["features/pool5"].shape == (3, 1024) and f.attrs["model"] == "t3d-121"
        assert np.allclose(np.linalg.norm(f["features/pool5"][()], axis=1), 1, atol=1e-5)
        counts = dict(zip(f["videos"].asstr()[()], f["num_clips"][()], strict=True))
        assert counts == {UCF_LIKE: 2, "opencv_Megamind.avi": 4, "mmaction2__tests_data_rawvideo_dataset_part_0.mp4": 1}
        assert f["failures/video"].asstr()[()].tolist() == ["decord__tests_test_data_corrupted.mp4"]


def test_no_published_weights_is_said_plainly(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_video(folder / "a.mp4", moving_frames(40, 64, 96))
    result = CliRunner().invoke(main, [str(folder), str(tmp_path / "o.h5"), "--model", "t3d-121"])
    assert result.exit_code == 2 and "no published weights" in result.stderr and "--weights random" in result.stderr
