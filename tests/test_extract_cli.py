"""`c3d-extract` end to end: features equal an independent recomputation, bad input, resume, refusal."""

import hashlib
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from c3d_extract.extraction.pyav_reader import PYAV
from c3d_extract.models.registry import c3d, res3d
from c3d_extract.models.net import init_random
from tests.helpers import recompute, rows, run
from bench.support.videos import CORRUPT, UCF_LIKE, moving_frames, shared_video, write_audio_only, write_video

C3D_BGR_MEAN = (90.2516, 97.6570, 101.4083)


@pytest.mark.slow
def test_c3d_rows_equal_an_independent_recomputation(video_dir, tmp_path):
    net = c3d()
    init_random(net, 3)
    weights = tmp_path / "c3d.pt"
    torch.save(net.state_dict(), weights)
    out = tmp_path / "out.h5"
    result = run(video_dir, out, "--weights", weights, "--precision", "fp32", "--layers", "prob,fc6,pool5",
                 "--batch-size", 3, "--workers", 2)
    assert result.exit_code == 0, result.stderr
    with h5py.File(out, "r") as f:
        assert sorted(k.decode() for k in f["videos"][:]) == ["h264.mp4", "sub/h264.mkv", "sub/xvid.avi"]
        assert f.attrs["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
        assert f.attrs["precision"] == "fp32" and f.attrs["decoder"] == f"{PYAV}, then decord 0.6.0"
        assert set(f["decoder"].asstr()[()]) == {PYAV}  # PyAV reads first (issue #32)
        assert list(f["features"]) == ["fc6", "pool5", "prob"] and f["features/pool5"].shape[1] == 8192
        clips = dict(zip((k.decode() for k in f["videos"][:]), f["num_clips"][:]))
        assert clips == {"h264.mp4": 4, "sub/xvid.avi": 2, "sub/h264.mkv": 1}
    for layer in ("fc6", "pool5", "prob"):
        for key, row in rows(out, layer).items():
            expected = recompute(video_dir / key, net.eval(), ["fc6", "pool5", "prob"], C3D_BGR_MEAN, 1)[layer]
            np.testing.assert_allclose(row, expected, atol=1e-5, err_msg=f"{key} {layer}")
            assert np.linalg.norm(row) == pytest.approx(1.0, abs=1e-6)
    assert all((row >= 0).all() for row in rows(out, "fc6").values())


@pytest.mark.slow
def test_res3d_rows_equal_an_independent_recomputation(video_dir, tmp_path):
    out = tmp_path / "res.h5"
    result = run(video_dir, out, "--model", "res3d", "--layers", "res5b,pool5,prob", "--weights", "random",
                 "--seed", 5, "--precision", "fp32")
    assert result.exit_code == 0, result.stderr
    assert "random weights" in result.stderr
    net = res3d()
    init_random(net, 5)
    for key, row in rows(out, "res5b").items():
        expected = recompute(video_dir / key, net.eval(), ["res5b", "pool5"], (128.0, 128.0, 128.0), 2)
        np.testing.assert_allclose(row, expected["res5b"], atol=1e-5, err_msg=key)
        np.testing.assert_allclose(rows(out, "pool5")[key], expected["pool5"], atol=1e-5, err_msg=key)
    with h5py.File(out, "r") as f:
        assert f["features/res5b"].shape == (3, 25088) and f.attrs["weights_sha256"] == "random:5"
        assert list(f["features/res5b"].attrs["clip_shape"]) == [512, 1, 7, 7]


@pytest.mark.slow
def test_corrupt_real_video_among_good_ones(tmp_path):
    folder = tmp_path / "real"
    folder.mkdir()
    names = [CORRUPT, UCF_LIKE, "mmaction2__tests_data_rawvideo_dataset_part_0.mp4", "decord__tests_test_data_video_90.mov"]
    for name in names:
        (folder / name).symlink_to(shared_video(name))
    out = tmp_path / "out.h5"
    result = run(folder, out, "--model", "res3d", "--weights", "random")
    assert result.exit_code == 1
    line = next(line for line in result.stderr.splitlines() if CORRUPT in line)
    # one line that names both decoders and where each broke (frame 28 of 50), PyAV's try first
    assert line.startswith(f"c3d-extract: {folder / CORRUPT}: decode: {PYAV}: decoding failed after frame 28")
    assert "; decord 0.6.0: decoding failed in frames " in line
    with h5py.File(out, "r") as f:
        assert [v.decode() for v in f["failures/video"][:]] == [CORRUPT]
        assert f["failures/stage"][0] == b"decode"
        done = {k.decode(): (n, c, s.decode()) for k, n, c, s in
                zip(f["videos"][:], f["num_frames"][:], f["num_clips"][:], f["status"][:])}
        assert done == {UCF_LIKE: (164, 19, "ok"), names[2]: (32, 3, "ok"),
                        names[3]: (3, 1, "short:loop")}
        assert np.allclose(np.linalg.norm(f["features/res5b"][:], axis=1), 1.0, atol=1e-5)
    # --keep-partial keeps the 28 frames before the damage (3 clips) instead: a row that says so
    kept = tmp_path / "kept.h5"
    assert run(folder, kept, "--model", "res3d", "--layers", "pool5", "--weights", "random",
               "--keep-partial", "-q").exit_code == 0
    with h5py.File(kept, "r") as f:
        row = f["videos"].asstr()[()].tolist().index(CORRUPT)
        assert f["status"].asstr()[row] == "partial:28" and f["num_frames"][row] == 28
        assert f["num_clips"][row] == 2 and f["decoder"].asstr()[row].startswith("pyav ")
        assert "keep_partial" in f.attrs["settings"] and f["failures/video"].shape == (0,)


def test_every_kind_of_bad_input_is_one_line_and_a_failure_row(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_video(folder / "good.mp4", moving_frames(16))
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "garbage.avi").write_bytes(os.urandom(5000))
    write_audio_only(folder / "sound.mp4")  # audio-only .mp4 (the .m4a extension is not a video one)
    good = (folder / "good.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(good[: len(good) // 3])
    out = tmp_path / "out.h5"
    result = run(folder, tmp_path / "missing.mp4", out, "--model", "res3d", "--weights", "random", "-q")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    problems = [line for line in lines if "warning" not in line]
    assert len(problems) == 5
    for name, text in [("empty.mp4", "empty file"), ("garbage.avi", "not a readable video"),
                       ("sound.mp4", "no video stream"), ("truncated.mp4", "open:"), ("missing.mp4", "no such file")]:
        assert any(name in line and text in line for line in problems), (name, problems)
    with h5py.File(out, "r") as f:
        assert [k.decode() for k in f["videos"][:]] == ["in/good.mp4"]
        assert sorted(v.decode() for v in f["failures/video"][:]) == [
            "in/empty.mp4", "in/garbage.avi", "in/sound.mp4", "in/truncated.mp4", "missing.mp4"]


def test_rerun_resumes_adds_new_videos_and_retries_failures(video_dir, tmp_path):
    folder = tmp_path / "in"
    shutil.copytree(video_dir, folder)
    (folder / "broken.mp4").write_bytes(b"")
    out = tmp_path / "out.h5"
    args = [folder, out, "--model", "res3d", "--weights", "random", "--layers", "pool5"]
    assert run(*args).exit_code == 1
    first = rows(out, "pool5")
    assert len(first) == 3

    write_video(folder / "new.mp4", moving_frames(20, seed=9))
    result = run(*args)
    assert result.exit_code == 1  # broken.mp4 is still failed
    assert "3 video(s) already done, 1 failed before" in result.stderr and "wrote 1 video(s)" in result.stderr
    second = rows(out, "pool5")
    assert set(second) == set(first) | {"new.mp4"}
    assert all(np.array_equal(first[k], second[k]) for k in first)  # untouched, bit for bit

    write_video(folder / "broken.mp4", moving_frames(16, seed=10))
    result = run(*args, "--retry-failed")
    assert result.exit_code == 0, result.stderr
    assert "wrote 1 video(s)" in result.stderr
    with h5py.File(out, "r") as f:
        assert f["failures/video"].shape == (0,) and f["videos"].shape == (5,)
    assert run(*args).exit_code == 0


def test_other_settings_into_an_existing_file_are_refused(video_dir, tmp_path):
    out = tmp_path / "out.h5"
    assert run(video_dir, out, "--model", "res3d", "--weights", "random", "--layers", "pool5").exit_code == 0
    before = out.read_bytes()
    for extra in (["--layers", "prob"], ["--stride", "4", "--layers", "pool5"], ["--seed", "1", "--layers", "pool5"]):
        result = run(video_dir, out, "--model", "res3d", "--weights", "random", *extra)
        assert result.exit_code == 2 and "exists with other settings" in result.stderr, extra
    assert out.read_bytes() == before
    result = run(video_dir, out, "--model", "res3d", "--weights", "random", "--layers", "prob", "--overwrite")
    assert result.exit_code == 0
    assert list(rows(out, "prob")) and h5py.File(out, "r").attrs["layers"] == '["prob"]'


def test_usage_errors_exit_2_and_say_what_to_do(video_dir, tmp_path):
    result = run(video_dir, tmp_path / "o.h5", "--weights", "random", "--layers", "fc6,fc9")
    assert result.exit_code == 2 and "fc9" in result.stderr and "conv1a, pool1" in result.stderr
    result = run(video_dir, tmp_path / "o.h5", "--weights", "random", "--precision", "fp16", "--device", "cpu")
    assert result.exit_code == 2 and "fp16 is for CUDA" in result.stderr
    (tmp_path / "empty").mkdir()
    result = run(tmp_path / "empty", tmp_path / "o.h5", "--weights", "random")
    assert result.exit_code == 2 and "no video found" in result.stderr
    assert not (tmp_path / "o.h5").exists()


def test_a_folder_without_an_output_is_told_that_output_is_missing(tmp_path):
    # INPUTS... OUTPUT: click fills OUTPUT with the one path given and used to report INPUTS missing
    (tmp_path / "videos").mkdir()
    before = sorted(tmp_path.rglob("*"))
    videos = tmp_path / "videos"
    for args in ([videos], [videos, "--layers", "fc6"], ["--weights", "random", videos]):
        result = run(*args)
        assert result.exit_code == 2, result.output
        assert "Missing argument 'OUTPUT'" in result.stderr and "'INPUTS" not in result.stderr
        assert f"{videos} is read as INPUTS" in result.stderr
    assert "Missing argument 'INPUTS...'" in run("--layers", "fc6").stderr  # nothing given: INPUTS first
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_installed_and_mismatched_weights(video_dir, tmp_path):
    home = tmp_path / "home"
    (home / "weights").mkdir(parents=True)
    net = res3d()
    init_random(net, 2)
    torch.save(net.state_dict(), home / "weights" / "res3d-sports1m.pt")
    result = run(video_dir, tmp_path / "o.h5", "--model", "res3d", "--layers", "pool5", "-q",
                 env={"C3D_EXTRACT_HOME": str(home)})
    assert result.exit_code == 0, result.stderr
    result = run(video_dir, tmp_path / "c.h5", "--model", "c3d", "--weights", home / "weights" / "res3d-sports1m.pt")
    assert result.exit_code == 2 and "weights of a res3d network" in result.stderr and "--model c3d" in result.stderr
    state = c3d().state_dict()
    state["fc6.weight"] = state["fc6.weight"][:, :4000].clone()
    torch.save(state, tmp_path / "c3d_bad.pt")
    result = run(video_dir, tmp_path / "c.h5", "--weights", tmp_path / "c3d_bad.pt")
    assert result.exit_code == 2 and "does not fit c3d-sports1m" in result.stderr
    assert "fc6.weight: [4096, 4000], expected [4096, 8192]" in result.stderr
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    result = run(video_dir, tmp_path / "c.h5", "--weights", tmp_path / "junk.pt")
    assert result.exit_code == 2 and "not a known weights format" in result.stderr
    assert not (tmp_path / "c.h5").exists()


def test_keys_are_unique_relative_paths(tmp_path):
    for folder in ("a", "b", "with space", "ünïcode"):
        (tmp_path / "in" / folder).mkdir(parents=True)
        write_video(tmp_path / "in" / folder / "same name.mp4", moving_frames(16, seed=len(folder)))
    (tmp_path / "in" / "notes.txt").write_text("not a video")
    out = tmp_path / "o.h5"
    assert run(tmp_path / "in", out, "--model", "res3d", "--weights", "random", "--layers", "pool5").exit_code == 0
    assert sorted(rows(out, "pool5")) == ["a/same name.mp4", "b/same name.mp4", "with space/same name.mp4",
                                          "ünïcode/same name.mp4"]


def test_python_dash_m_version_and_help(tmp_path):
    version = subprocess.run([sys.executable, "-m", "c3d_extract", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and "c3d-extract, version" in version.stdout
    helptext = subprocess.run([sys.executable, "-m", "c3d_extract", "extract", "--help"], capture_output=True, text=True)
    for flag in ("--model", "--layers", "--weights", "--precision", "--device", "--overwrite", "--short", "--quiet"):
        assert flag in helptext.stdout


@pytest.mark.slow
@pytest.mark.parametrize("model, layers, name", [
    ("c3d", ["fc6"], "mmaction2__tests_data_rawvideo_dataset_part_0.mp4"),
    ("res3d", ["res5b", "pool5"], UCF_LIKE),
])
def test_real_video_features_equal_the_caffe_faithful_reference(tmp_path, model, layers, name):
    # the reference decodes with decord, resizes with cv2 INTER_LINEAR as Caffe did, crops (8, 29),
    # BGR minus the mean, one forward per clip: cosine >= 0.99999 on real video (fp32)
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / name).symlink_to(shared_video(name))
    out = tmp_path / "out.h5"
    result = run(folder, out, "--model", model, "--layers", ",".join(layers), "--weights", "random",
                 "--seed", "13", "--precision", "fp32", "-q")
    assert result.exit_code == 0, result.stderr
    net = c3d() if model == "c3d" else res3d()
    init_random(net, 13)
    mean, step = (C3D_BGR_MEAN, 1) if model == "c3d" else ((128.0, 128.0, 128.0), 2)
    expected = recompute(folder / name, net.eval(), layers, mean, step)
    for layer in layers:
        row = rows(out, layer)[name]
        assert float(np.dot(row, expected[layer])) >= 0.99999, layer
        np.testing.assert_allclose(row, expected[layer], atol=1e-5, err_msg=layer)
