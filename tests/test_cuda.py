"""The CUDA path: runs only where torch sees a CUDA device, and is skipped elsewhere with that reason.

fp32 on CUDA (TF32 off) equals the CPU within 1e-4; fp16 and bf16 keep cosine >= 0.999 to fp32;
replicas write what one device writes; the resize on the device agrees with the workers' resize;
the defaults on CUDA (batch size, precision) are what the README says; NVDEC (--decode-on gpu) gives
the CPU readers' frames where the codec decodes exactly, and the same features.
"""

import os

import h5py
import numpy as np
import pytest
import torch

from c3d_extract import api
from c3d_extract.extraction.batches import Batches
from c3d_extract.extraction.pipeline import BatchRunner
from c3d_extract.extraction.runtime import Runtime
from c3d_extract.models.registry import C3D_SPORTS1M
from c3d_extract.weights.load import load_weights
from tests.helpers import assert_same_file, run
from bench.support.videos import moving_frames, write_video

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device here (torch.cuda.is_available() is False)")

MODELS = [("c3d", "fc6,pool5"), ("res3d", "res5b,pool5")]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cuda_videos")
    write_video(folder / "a.mp4", moving_frames(24, seed=31))
    write_video(folder / "b.mp4", moving_frames(40, 120, 160, seed=32))
    return folder


def features(folder, out, *args) -> tuple[dict, h5py.AttributeManager]:
    result = run(folder, out, "--weights", "random", "--seed", "7", "-q", *args)
    assert result.exit_code == 0, result.stderr
    with h5py.File(out, "r") as f:
        return {layer: f[f"features/{layer}"][:] for layer in f["features"]}, dict(f.attrs)


@pytest.mark.parametrize("model, layers", MODELS)
def test_fp32_on_cuda_equals_the_cpu_within_1e_4(videos, tmp_path, model, layers):
    args = ("--model", model, "--layers", layers, "--precision", "fp32")
    cpu, _ = features(videos, tmp_path / "cpu.h5", *args, "--device", "cpu")
    gpu, attrs = features(videos, tmp_path / "gpu.h5", *args, "--device", "cuda")
    assert attrs["device"].startswith("cuda") and attrs["precision"] == "fp32"
    for layer in cpu:
        np.testing.assert_allclose(gpu[layer], cpu[layer], atol=1e-4, err_msg=layer)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("model, layers", MODELS)
def test_half_precisions_keep_cosine_0999_to_fp32(videos, tmp_path, model, layers, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip(f"{torch.cuda.get_device_name(0)} has no bf16 support")
    args = ("--model", model, "--layers", layers, "--device", "cuda")
    full, _ = features(videos, tmp_path / "fp32.h5", *args, "--precision", "fp32")
    low, attrs = features(videos, tmp_path / "low.h5", *args, "--precision", precision)
    assert attrs["precision"] == precision
    for layer in full:
        cosine = np.sum(full[layer] * low[layer], axis=1)
        assert cosine.min() >= 0.999, (layer, cosine)
        assert not np.array_equal(full[layer], low[layer])


def test_two_replicas_write_what_one_device_writes(videos, tmp_path):
    args = ("--model", "res3d", "--layers", "pool5", "--precision", "fp32", "--batch-size", "2")
    features(videos, tmp_path / "one.h5", *args, "--device", "cuda:0")
    features(videos, tmp_path / "two.h5", *args, "--device", "cuda:0,cuda:0")
    assert_same_file(tmp_path / "two.h5", tmp_path / "one.h5", ignore_attrs=("device",))
    if torch.cuda.device_count() > 1:
        other, _ = features(videos, tmp_path / "pair.h5", *args, "--device", "cuda:0,cuda:1")
        one, _ = features(videos, tmp_path / "one_again.h5", *args, "--device", "cuda:0")
        np.testing.assert_allclose(other["pool5"], one["pool5"], atol=1e-5)


def test_resize_on_the_device_agrees_with_the_workers(videos, tmp_path):
    args = ("--model", "res3d", "--layers", "res5b", "--precision", "fp32", "--device", "cuda")
    workers, a = features(videos, tmp_path / "w.h5", *args, "--resize-on", "workers")
    device, b = features(videos, tmp_path / "d.h5", *args, "--resize-on", "device")
    assert (a["resize_on"], b["resize_on"]) == ("workers", "device")
    # the same input pixels (models/pixels.py, bit for bit): the features agree as any two CUDA runs do
    np.testing.assert_allclose(workers["res5b"], device["res5b"], atol=1e-4)


def test_defaults_on_cuda():
    extractor = api.build_extractor(model="res3d", weights="random", device="cuda")
    assert extractor.network.batch_size == 64
    # auto: bf16 where the device has it (the parity test above holds it to cosine >= 0.999)
    assert extractor.network.runtime.precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    assert extractor.network.runtime.device.type == "cuda"
    assert extractor.plan.workers == max(1, len(os.sched_getaffinity(0)) - 1)  # cores decode, the GPU computes
    assert torch.backends.cudnn.benchmark == (extractor.network.runtime.precision != "fp32")
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    fp32 = api.build_extractor(model="res3d", weights="random", device="cuda", precision="fp32")
    assert fp32.network.runtime.precision == "fp32" and not torch.backends.cudnn.benchmark  # no minute-long search


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_staging_ring_gives_the_plain_paths_features(precision):
    """Clips through pinned slots, the copy stream and pinned features back equal a plain upload of
    each batch (BatchRunner.__call__), in order, with rows of several videos and a partial batch."""
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip(f"{torch.cuda.get_device_name(0)} has no bf16 support")
    runner = BatchRunner(load_weights("random", "c3d", seed=4).net, ["fc6", "pool5"], C3D_SPORTS1M.input,
                         Runtime(torch.device("cuda"), precision), 4)
    clips = np.random.default_rng(9).integers(0, 256, (11, 16, 112, 112, 3), dtype=np.uint8)
    got, rows = {"fc6": [], "pool5": []}, []

    def on_result(outputs, batch_rows):
        rows.extend(batch_rows)
        for layer, value in outputs.items():
            got[layer].append(value.copy())

    batches = Batches([runner], on_result, slots=2)  # fewer slots than batches: each is reused
    try:
        for i, clip in enumerate(clips):
            batches.add(f"v{i % 3}", 8 * i, 0, clip)
            batches.take()
        batches.finish()
    finally:
        batches.close()
    assert rows == [(f"v{i % 3}", 8 * i, 0) for i in range(len(clips))]
    plain = runner(clips)
    for layer in got:
        np.testing.assert_allclose(np.concatenate(got[layer]), plain[layer], rtol=1e-3, atol=1e-4, err_msg=layer)


# NVDEC (--decode-on gpu, extraction/nvdec.py): needs PyAV's NVDEC build and the driver's decoder
NVDEC_CASES = [("h264", "libx264", ".mp4", True), ("hevc", "libx265", ".mp4", True),
               ("vp9", "libvpx-vp9", ".webm", True), ("mpeg4", "mpeg4", ".avi", False)]


def _needs_nvdec():
    from c3d_extract.extraction.nvdec import nvdec_available

    if not nvdec_available():
        pytest.skip("this PyAV's FFmpeg has no CUDA hardware decoding (see ../shared/gpu/README.md)")


@pytest.mark.parametrize("name, codec, ext, exact", NVDEC_CASES, ids=[c[0] for c in NVDEC_CASES])
def test_nvdec_gives_the_cpu_readers_frames(tmp_path, name, codec, ext, exact):
    _needs_nvdec()
    from c3d_extract.extraction.decode import DecoderSettings, decode_frames
    from c3d_extract.extraction.messages import End, Frames
    from c3d_extract.extraction.inputs import VideoJob
    from c3d_extract.extraction.nvdec import NVDEC, DeviceReader
    from c3d_extract.extraction.pyav_reader import PyAVReader

    path = write_video(tmp_path / f"v{ext}", moving_frames(40, 240, 320, seed=5), codec=codec)
    spec = C3D_SPORTS1M.input

    def read(reader):
        items = list(decode_frames(VideoJob(path.name, str(path)), DecoderSettings(spec), readers=(reader,)))
        frames = [i.frames.cpu().numpy() if isinstance(i.frames, torch.Tensor) else i.frames
                  for i in items if isinstance(i, Frames)]
        return np.concatenate(frames), items[-1]

    cpu, cpu_end = read(PyAVReader)
    gpu, gpu_end = read(DeviceReader.bound(spec, torch.device("cuda", 0)))
    assert isinstance(gpu_end, End) and gpu_end.facts["decoder"] == NVDEC, gpu_end
    assert gpu_end.facts["num_frames"] == cpu_end.facts["num_frames"] == 40
    if exact:  # decoded bit-exactly by the codec's specification: the same clips, bit for bit
        np.testing.assert_array_equal(gpu, cpu)
    else:  # MPEG-4 part 2: exact only to the IDCT's tolerance (measured by bench/nvdec.py)
        assert np.abs(gpu.astype(int) - cpu).mean() < 1.0


def test_decode_on_gpu_writes_the_cpu_decoders_features(videos, tmp_path):
    _needs_nvdec()
    args = ("--model", "res3d", "--layers", "res5b", "--precision", "fp32", "--device", "cuda")
    cpu, _ = features(videos, tmp_path / "cpu.h5", *args, "--decode-on", "cpu")
    gpu, attrs = features(videos, tmp_path / "gpu.h5", *args, "--decode-on", "gpu")
    np.testing.assert_allclose(gpu["res5b"], cpu["res5b"], atol=1e-4)
    with h5py.File(tmp_path / "gpu.h5") as f:
        readers = {d.decode() for d in f["decoder"][()]}
    assert any("nvdec" in r for r in readers), readers  # the threads read some of them


def test_a_batch_of_host_and_device_clips_computes_every_row():
    # NVDEC's clips (on the GPU) and the CPU decoders' (numpy) share batches: each row counts, in order
    runner = BatchRunner(load_weights("random", "c3d", seed=4).net, ["pool5"], C3D_SPORTS1M.input,
                         Runtime(torch.device("cuda"), "fp32"), 4)
    clips = np.random.default_rng(11).integers(0, 256, (11, 16, 112, 112, 3), dtype=np.uint8)
    got, rows = [], []

    def on_result(outputs, batch_rows):
        rows.extend(batch_rows)
        got.append(outputs["pool5"].copy())

    batches = Batches([runner], on_result, slots=2)
    try:
        for i, clip in enumerate(clips):  # host first, device first, and runs of each
            on_gpu = i in (1, 2, 4, 7, 8, 9)
            batches.add(f"v{i}", 0, 0, torch.from_numpy(clip).cuda() if on_gpu else clip)
            batches.take()
        batches.finish()
    finally:
        batches.close()
    assert rows == [(f"v{i}", 0, 0) for i in range(len(clips))]
    np.testing.assert_allclose(np.concatenate(got), runner(clips)["pool5"], rtol=1e-3, atol=1e-4)
