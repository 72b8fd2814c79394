"""bf16 (what `--precision auto` picks on CPUs with bf16 units) keeps features faithful to fp32.

A precision is checked only where it runs at speed: on a CPU without bf16 units oneDNN emulates bf16
(one C3D clip: 221 s against 1.3 s in fp32), `auto` never picks it there, and the bf16 checks skip
with a reason that names the hardware. What `auto` picks on the machine running the suite is always
checked. CUDA precisions are in tests/test_cuda.py.
"""

import h5py
import numpy as np
import pytest
import torch

from c3d_extract.extraction.runtime import Runtime, cpu_has_fast_bf16, resolve_precision
from tests.helpers import needs_fast_bf16, run
from bench.support.videos import UCF_LIKE, moving_frames, shared_video, write_video


def extract(folder, out, *args):
    result = run(folder, out, "--weights", "random", "--seed", "11", "--device", "cpu", *args)
    assert result.exit_code == 0, result.stderr
    with h5py.File(out, "r") as f:
        return {layer: f[f"features/{layer}"][:] for layer in f["features"]}, f.attrs["precision"]


def assert_parity(folder, tmp_path, model, layers, precision):
    """`precision` against fp32 on every video of `folder`: cosine >= 0.999 per row."""
    args = ("--model", model, "--layers", layers)
    full, p32 = extract(folder, tmp_path / "fp32.h5", *args, "--precision", "fp32")
    low, used = extract(folder, tmp_path / "low.h5", *args, "--precision", precision)
    expected = resolve_precision(precision, torch.device("cpu"))
    assert (p32, used) == ("fp32", expected)
    for layer in full:
        cosine = np.sum(full[layer] * low[layer], axis=1)  # rows are unit vectors
        assert cosine.min() >= 0.999, (layer, cosine)
        if expected == "bf16":
            assert not np.array_equal(full[layer], low[layer])  # bf16 really ran
        else:
            np.testing.assert_array_equal(full[layer], low[layer])


@pytest.fixture(scope="module")
def two_clips(tmp_path_factory):
    """The smallest input that proves the point: one encoded video of two C3D / Res3D clips."""
    folder = tmp_path_factory.mktemp("two_clips")
    write_video(folder / "moving.mp4", moving_frames(24, seed=21))
    return folder


@pytest.mark.parametrize("model, layers", [pytest.param("c3d", "fc6", marks=pytest.mark.slow), ("res3d", "res5b")])
def test_what_auto_picks_here_keeps_cosine_0999_to_fp32(two_clips, tmp_path, model, layers):
    # runs on every machine: bf16 where the CPU has bf16 units, else fp32 (then equal bit for bit)
    assert_parity(two_clips, tmp_path, model, layers, "auto")


@needs_fast_bf16
@pytest.mark.slow
@pytest.mark.parametrize("model, layers", [("c3d", "fc6,fc7,pool5"), ("res3d", "res5b,pool5")])
def test_bf16_features_have_cosine_at_least_0999_to_fp32_on_real_videos(tmp_path, model, layers):
    folder = tmp_path / "real"
    folder.mkdir()
    for name in (UCF_LIKE, "mmaction2__tests_data_rawvideo_dataset_part_0.mp4"):
        (folder / name).symlink_to(shared_video(name))
    assert_parity(folder, tmp_path, model, layers, "bf16")


def test_auto_precision_follows_the_hardware():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if cpu_has_fast_bf16() else "fp32")
    assert resolve_precision("fp32", cpu) == "fp32"
    with pytest.raises(ValueError, match="fp16 is for CUDA"):
        resolve_precision("fp16", cpu)
    assert Runtime(cpu, "bf16").dtype == torch.bfloat16
