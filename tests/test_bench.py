"""The benchmark scripts stay runnable: they import, and their cheapest step works."""

import pytest

from c3d_extract.extraction.inputs import find_videos
from tests.helpers import load_bench as load
from bench.support.videos import moving_frames, write_video



def test_throughput_script_measures_a_network(tmp_path):
    throughput = load("throughput")
    assert "CPUs" in throughput.machine()
    assert throughput.network_only("res3d", "fp32", batch=1, reps=1) > 0
    folder = tmp_path / "v"
    folder.mkdir()
    write_video(folder / "a.mp4", moving_frames(24, 64, 96))
    jobs, _ = find_videos([str(folder)])
    fps, clips = throughput.decode_only("res3d", jobs)
    rate, naive_clips = throughput.naive("res3d", jobs)
    assert clips == naive_clips == 2 and fps > 0 and rate > 0


def test_svm_benchmark_writes_a_ucf101_named_file(tmp_path):
    bench = load("svm_ucf101_size")
    import h5py

    assert bench.write(str(tmp_path / "f.h5"), dim=8, classes=3, videos=300) == 300
    with h5py.File(tmp_path / "f.h5") as f:
        assert f["features/fc6"].shape == (300, 8) and f["videos"][0].decode().startswith("Class000/v_Class000_g01")


def test_decode_script_times_the_input_stage_and_counts_every_frame(tmp_path):
    decode = load("decode")
    path = str(write_video(tmp_path / "v.mp4", moving_frames(20, 64, 96)))
    assert decode.raw_decord(path) == decode.raw_pyav(path) == decode.stage_in_process(path) == 20
    assert decode.stage_one_process(path, copies=1) > 0


@pytest.mark.slow
def test_whole_process_script_runs_the_command_and_counts_its_clips(tmp_path):
    bench = load("whole_process")
    video = str(write_video(tmp_path / "v.mp4", moving_frames(40, 64, 96)))  # windows at 0, 8, 16, 24
    seconds, clips = bench.whole_process("res3d", "fp32", [video], bench.weights_file("res3d", str(tmp_path)))
    assert clips == 4 and seconds > 0


def test_decoder_zoo_script_compares_decord_with_pyav_and_the_encoded_frames(tmp_path, capsys):
    import av
    import numpy as np

    zoo = load("decoder_zoo")
    source = moving_frames(24, 128, 160, seed=8)
    np.save(tmp_path / zoo.SOURCE, source)
    path = write_video(tmp_path / "h264.mp4", source)
    with av.open(str(path)) as container:  # PyAV's frames, read here independently of the tool
        np.save(str(path) + ".pyav.npy", np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]))
    (tmp_path / "text.mp4").write_text("not a video")
    zoo.read(str(tmp_path))
    rows = {line.split(" | ")[0].strip("| "): line for line in capsys.readouterr().out.splitlines()}
    assert "24 x 128x160 | 0, 0.000 |" in rows["h264.mp4"]  # decord 0.6.0 and PyAV agree bit for bit on 8-bit H.264
    by_decord, by_pyav = (float(x) for x in rows["h264.mp4"].split(" | ")[3].strip(" |").split(", "))
    expected = np.abs(np.load(str(path) + ".pyav.npy").astype(int) - source.astype(int)).mean()
    assert by_decord == by_pyav == round(expected, 2) and 0 < expected < 10  # a lossy codec moves the frames a little
    assert "Error" in rows["text.mp4"]


@pytest.mark.slow
def test_gpu_script_prints_every_figure_in_clips_per_second_on_the_cpu(tmp_path, capsys):
    bench = load("gpu")
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "a.mp4", moving_frames(40, 64, 96, seed=3))  # windows at 0, 8, 16, 24
    out = tmp_path / "results.md"
    bench.main(["--device", "cpu", "--videos", str(videos), "--links", "2", "--models", "res3d",
                "--precisions", "fp32", "--batch-sizes", "2", "--seconds", "0.1", "--whole-batch", "2",
                "--workers", "1", "--out", str(out)])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("res3d")]
    for figure in ("network alone, batch 2", "batching path", "whole process, 2 videos, 8 clips",
                   "batching process CPU per clip"):
        assert any(figure in line and " clips/s" in line for line in lines), (figure, lines)
    assert any("start-up of a fresh process" in line and "first batch" in line for line in lines), lines
    assert "bench/gpu.py" in out.read_text() and "whole process" in out.read_text()


def test_activitynet_export_benchmark_writes_a_per_clip_file_the_export_takes(tmp_path):
    from c3d_extract.featurefile.reader import FeatureFile

    bench = load("export_activitynet")
    assert bench.write(str(tmp_path / "c.h5"), videos=6, clips=3, dim=8, block=4) == 18
    features = FeatureFile(str(tmp_path / "c.h5"))
    assert features.keys[-1] == "v_0000005.mp4" and features.clips("v_0000005.mp4").features.shape == (3, 8)
    seconds, peak, stdout = bench.export(str(tmp_path / "c.h5"), str(tmp_path / "a.hdf5"), 4)
    assert "6 video(s), 18 clip(s) of 4 values" in stdout and peak > 0


def test_nvdec_script_refuses_a_machine_without_nvdec_and_times_the_device_pixels(tmp_path, monkeypatch):
    import sys

    import torch

    nvdec = load("nvdec")
    if not torch.cuda.is_available():
        monkeypatch.setattr(sys, "argv", ["nvdec.py", "--out", str(tmp_path / "r.md")])
        with pytest.raises(SystemExit) as stopped:
            nvdec.main()
        assert stopped.value.code == 2 and not (tmp_path / "r.md").exists()
    nvdec.pixels(str(tmp_path / "r.md"), "cpu", frames=2)
    text = (tmp_path / "r.md").read_text()
    assert "CPU path" in text and "yuv_resize_crop" in text and "ms/frame" in text
