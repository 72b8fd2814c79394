"""bf16 (what `--precision auto` picks on CPUs with bf16 units) keeps features faithful to fp32."""

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from c3d_extract.cli import main
from c3d_extract.runtime import Runtime, cpu_has_fast_bf16, resolve_precision
from tests.videos import UCF_LIKE, moving_frames, shared_video, write_video


def extract(folder, out, *args):
    result = CliRunner().invoke(main, [str(folder), str(out), "--weights", "random", "--seed", "11", *args])
    assert result.exit_code == 0, result.stderr
    with h5py.File(out, "r") as f:
        return {layer: f[f"features/{layer}"][:] for layer in f["features"]}, f.attrs["precision"]


def assert_bf16_parity(folder, tmp_path, model, layers):
    args = ("--model", model, "--layers", layers)
    full, p32 = extract(folder, tmp_path / "fp32.h5", *args, "--precision", "fp32")
    half, p16 = extract(folder, tmp_path / "bf16.h5", *args, "--precision", "bf16")
    assert (p32, p16) == ("fp32", "bf16")
    for layer in full:
        cosine = np.sum(full[layer] * half[layer], axis=1)  # rows are unit vectors
        assert cosine.min() >= 0.999, (layer, cosine)
        assert not np.array_equal(full[layer], half[layer])  # bf16 really ran


MODELS = [("c3d", "fc6,fc7,pool5"), ("res3d", "res5b,pool5")]


@pytest.mark.slow
@pytest.mark.parametrize("model, layers", MODELS)
def test_bf16_features_have_cosine_at_least_0999_to_fp32_on_real_videos(tmp_path, model, layers):
    folder = tmp_path / "real"
    folder.mkdir()
    for name in (UCF_LIKE, "mmaction2__tests_data_rawvideo_dataset_part_0.mp4"):
        (folder / name).symlink_to(shared_video(name))
    assert_bf16_parity(folder, tmp_path, model, layers)


@pytest.mark.parametrize("model, layers", MODELS)
def test_bf16_parity_on_an_encoded_video_runs_everywhere(tmp_path, model, layers):
    # the same check where shared/videos is absent, so `auto` is never left without one
    folder = tmp_path / "made"
    folder.mkdir()
    write_video(folder / "moving.mp4", moving_frames(40, seed=21))
    assert_bf16_parity(folder, tmp_path, model, layers)


def test_auto_precision_follows_the_hardware():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if cpu_has_fast_bf16() else "fp32")
    assert resolve_precision("fp32", cpu) == "fp32"
    with pytest.raises(ValueError, match="fp16 is for CUDA"):
        resolve_precision("fp16", cpu)
    assert Runtime(cpu, "bf16").dtype == torch.bfloat16
