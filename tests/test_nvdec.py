"""The GPU decoding path (extraction/nvdec.py) as far as a machine without a GPU can run it: the device
side from YUV planes to cropped frames, fed by PyAV's CPU decode (DeviceReader(hardware=False)), equals
the CPU readers' frames bit for bit; NVDEC's open fails here and the video goes to the CPU readers;
the threads and the decoder processes share one queue. tests/test_cuda.py runs NVDEC itself."""

from __future__ import annotations

import queue
import re
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from c3d_extract.extraction.decode import DecoderSettings, decode_frames
from c3d_extract.extraction.messages import End, Failed, Frames, GiveBack
from c3d_extract.extraction.inputs import VideoJob
from c3d_extract.extraction.nvdec import (NVDEC, DeviceDecoders, DeviceReader, device_items, resolve_decode_on,
                                          stream_refusal)
from c3d_extract.extraction.pyav_reader import PYAV, PyAVReader
from c3d_extract.extraction.workers import DecodePool, SharedJobs
from c3d_extract.models.registry import C3D_SPORTS1M, RES3D_SPORTS1M
from tests.helpers import run
from tests.test_device_pixels import BT709, JPEG, MPEG, encode
from bench.support.videos import SHARED_VIDEOS, moving_frames, shared_video, write_video


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The device code on the CPU with one thread: its small tensors gain nothing from two, and on a
    loaded 2-core machine the spinning of torch's second thread made them 7x slower (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

SPEC = C3D_SPORTS1M.input


def read(path: Path, reader, spec=SPEC) -> tuple[np.ndarray, object]:
    """Every cropped frame one reader gives a video (numpy), and how its stream ended."""
    frames, end = [], None
    for item in decode_frames(VideoJob(path.name, str(path)), DecoderSettings(spec), readers=(reader,)):
        if isinstance(item, Frames):
            frames.append(item.frames.cpu().numpy() if isinstance(item.frames, torch.Tensor) else item.frames)
        else:
            end = item
    return (np.concatenate(frames) if frames else np.zeros((0,))), end


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("nvdec")
    return [encode(root / "h264.mp4", "libx264", "yuv420p", None, None, (120, 160), frames=20),
            encode(root / "h264_709_full.mkv", "libx264", "yuv420p", BT709, JPEG, (96, 176), frames=18),
            encode(root / "vp9.webm", "libvpx-vp9", "yuv420p", BT709, MPEG, (90, 120), frames=17),
            write_video(root / "odd_width.avi", moving_frames(17, 100, 141, seed=3), codec="mpeg4")]


@pytest.mark.parametrize("spec,real", [(SPEC, "decord__tests_test_data_video_90.mov"),
                                       (RES3D_SPORTS1M.input, "mmaction2__tests_data_test.avi")], ids=["c3d", "res3d"])
def test_the_device_path_gives_the_cpu_readers_frames_bit_for_bit(videos, spec, real):
    device_reader = DeviceReader.bound(spec, "cpu", hardware=False)
    for path in videos + [shared_video(real)]:  # a rotated phone video; a UCF-like XVID
        cpu, cpu_end = read(path, PyAVReader, spec)
        device, device_end = read(path, device_reader, spec)
        assert isinstance(device_end, End) and isinstance(cpu_end, End), (path, device_end)
        assert device.shape == cpu.shape and len(cpu) == cpu_end.facts["num_frames"]
        assert np.abs(device.astype(int) - cpu).max() == 0, path.name  # unread frames are black in both
        assert device_end.facts == {**cpu_end.facts, "decoder": f"{PYAV} + device pixels"}


def test_damage_checks_apply_to_the_device_path_as_to_the_cpu_reader(tmp_path):
    device_reader = DeviceReader.bound(SPEC, "cpu", hardware=False)
    whole = write_video(tmp_path / "whole.mp4", moving_frames(40, 64, 96), codec="libx264")
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 2 // 3])  # moov at the end is gone: unreadable in both
    for path in (shared_video("decord__tests_test_data_corrupted.mp4"), cut):
        _, cpu_end = read(path, PyAVReader)
        _, device_end = read(path, device_reader)
        assert type(device_end) is type(cpu_end)
        if isinstance(cpu_end, Failed):
            assert device_end.stage == cpu_end.stage
            assert device_end.error.split(": ", 1)[1] == cpu_end.error.split(": ", 1)[1]
        else:
            assert device_end.facts["status"] == cpu_end.facts["status"]


def test_nvdec_without_a_driver_gives_the_video_back_to_the_cpu_readers(videos):
    reader = DeviceReader.bound(SPEC, torch.device("cuda", 0), hardware=True)
    items = list(device_items(VideoJob("a.mp4", str(videos[0])), reader))
    assert len(items) == 1 and isinstance(items[0], GiveBack)
    assert items[0].job.attempts == 1 and "NVDEC cannot open it" in items[0].reason


def test_what_nvdec_does_not_decode_goes_to_the_cpu():
    assert stream_refusal("h264", "yuv420p", 1080, 1440) == ""
    assert stream_refusal("mpeg4", "yuv420p", 240, 320) == ""
    assert "does not decode av1" in stream_refusal("av1", "yuv420p", 240, 320)
    assert "does not decode theora" in stream_refusal("theora", "yuv420p", 240, 320)
    assert "yuv420p10le" in stream_refusal("h264", "yuv420p10le", 240, 320)
    assert "yuv422p" in stream_refusal("h264", "yuv422p", 240, 320)
    assert "odd frame size 321x240" in stream_refusal("mpeg4", "yuv420p", 240, 321)


def test_a_10_bit_stream_declares_its_format_before_decoding(tmp_path):
    # what the reader checks at open, before NVDEC decodes anything: the container's declaration
    path = write_video(tmp_path / "ten.mp4", moving_frames(3, 64, 64), pix_fmt="yuv420p10le")
    with av.open(str(path)) as container:
        context = container.streams.video[0].codec_context
        assert "yuv420p10le" in stream_refusal(context.name, context.format.name, context.height, context.width)


def test_decode_on_gpu_without_cuda_is_refused_and_auto_is_cpu():
    assert resolve_decode_on("auto", torch.device("cpu")) == "cpu"
    assert resolve_decode_on("cpu", torch.device("cpu")) == "cpu"
    with pytest.raises(ValueError, match="not on a CUDA device"):
        resolve_decode_on("gpu", torch.device("cpu"))
    with pytest.raises(ValueError, match="Ray engine"):
        resolve_decode_on("gpu", torch.device("cuda", 0), engine="ray")


def test_decode_on_gpu_on_a_cpu_machine_is_a_usage_error(videos, tmp_path):
    result = run(videos[0].parent, tmp_path / "out.h5", "--weights", "random", "--device", "cpu",
                 "--decode-on", "gpu", "-q")
    assert result.exit_code == 2 and "--decode-on gpu" in result.stderr and not (tmp_path / "out.h5").exists()


def pool_run(jobs: list[VideoJob], reader) -> dict[str, tuple[np.ndarray, dict]]:
    """Every video's clips and facts through a DecodePool of 1 process plus device threads with `reader`."""
    shared = SharedJobs(jobs)
    gpu = DeviceDecoders(lambda: shared.take(DeviceDecoders.wants), reader, threads=1) if reader else None
    pool = DecodePool(shared, DecoderSettings(SPEC), "loop", 1, gpu=gpu)
    clips: dict[str, list] = {}
    facts: dict[str, dict] = {}
    try:
        for item in pool:
            if isinstance(item, Failed):
                facts[item.key] = {"failed": item.error}
            elif hasattr(item, "start"):
                frames = item.frames.cpu().clone().numpy() if isinstance(item.frames, torch.Tensor) else item.frames.copy()
                clips.setdefault(item.key, []).append((item.attempt, item.start, frames))
            else:
                facts[item.key] = {**item.facts, "attempt": item.attempt}
    finally:
        pool.close()
    out = {}
    for key, fact in facts.items():
        kept = sorted((s, f) for a, s, f in clips.get(key, []) if a == fact.get("attempt"))
        out[key] = (np.stack([f for _, f in kept]) if kept else None, fact)
    return out


def test_device_threads_and_decoder_processes_share_the_queue(videos, tmp_path):
    corrupt = shared_video("decord__tests_test_data_corrupted.mp4")  # PyAV fails at frame 28, after frames
    jobs = [VideoJob(corrupt.name, str(corrupt))] + [VideoJob(p.name, str(p)) for p in videos] + [
        VideoJob("missing.mp4", str(tmp_path / "missing.mp4"))]
    cpu = pool_run(jobs, None)
    both = pool_run(jobs, DeviceReader.bound(SPEC, "cpu", hardware=False))
    given_back = pool_run(jobs, DeviceReader.bound(SPEC, torch.device("cuda", 0), hardware=True))
    assert sorted(both) == sorted(cpu) == sorted(given_back) == sorted(j.key for j in jobs)
    assert "no such file" in cpu["missing.mp4"][1]["failed"] and "no such file" in both["missing.mp4"][1]["failed"]
    # a video the thread gives up after sending frames ends as the processes alone end it (its frames dropped)
    assert "failed" in cpu[corrupt.name][1]
    # the same reasons; decord's threaded decode names other frame numbers from run to run
    assert re.sub(r"\d+", "N", both[corrupt.name][1]["failed"]) == re.sub(r"\d+", "N", cpu[corrupt.name][1]["failed"])
    readers = {fact.get("decoder") for _, fact in both.values()}
    assert f"{PYAV} + device pixels" in readers  # the thread read some videos, bit for bit the processes' clips
    for key, (frames, fact) in cpu.items():
        if frames is not None:
            np.testing.assert_array_equal(both[key][0], frames, err_msg=key)
            np.testing.assert_array_equal(given_back[key][0], frames, err_msg=key)
            assert given_back[key][1]["decoder"] == PYAV  # NVDEC could not open (no driver): all by the processes
    # the videos the thread took (it starts before the pool's processes exist) came back to the
    # processes, whose try is numbered after NVDEC's
    attempts = {fact.get("attempt") for _, fact in given_back.values() if "failed" not in fact}
    assert 1 in attempts and attempts <= {0, 1}
    assert NVDEC not in readers


def test_each_decoder_thread_counts_only_its_own_videos_ffmpeg_errors(videos):
    # FFmpeg's log is caught per thread (DeviceReader._LOCAL_LOG): a damaged video read beside healthy
    # ones is repaired, they stay ok (a process-wide capture would mark them all)
    damaged = SHARED_VIDEOS.parent / "damaged" / "flv1_damaged.flv"
    if not damaged.is_file():
        pytest.skip(f"{damaged} is absent")
    expected = read(damaged, PyAVReader)[1].facts["status"]
    assert expected.startswith("repaired")
    jobs = [VideoJob("damaged.flv", str(damaged))] + [VideoJob(f"{k}/{p.name}", str(p)) for k in range(3) for p in videos]
    shared = SharedJobs(jobs)
    threads = DeviceDecoders(lambda: shared.take(DeviceDecoders.wants), DeviceReader.bound(SPEC, "cpu", hardware=False),
                             threads=3)
    ends = {}
    try:
        while threads.busy:
            try:
                item = threads.items.get(timeout=0.2)
            except queue.Empty:
                continue
            if isinstance(item, End):
                ends[item.key] = item.facts["status"]
    finally:
        threads.close()
    assert ends.pop("damaged.flv") == expected
    assert len(ends) == 3 * len(videos) and set(ends.values()) == {"ok"}, ends
