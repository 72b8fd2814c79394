"""Inputs at scale, sharding and merging."""

import os

import h5py
import numpy as np
import pytest

from c3d_extract.extraction.inputs import find_videos, read_list, shard_of
from c3d_extract.featurefile.journal_format import journal_path
from tests.helpers import assert_same_file, run
from bench.support.videos import moving_frames, write_video

BASE = ["--model", "res3d", "--layers", "pool5", "--weights", "random", "--precision", "fp32", "-q"]



@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("shardvids")
    for i in range(7):
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        write_video(sub / f"clip {i}.mp4", moving_frames(16 + 3 * i, 64, 96, seed=40 + i))
    (root / "empty.mp4").write_bytes(b"")
    return root


@pytest.mark.slow
def test_shards_merged_equal_a_single_run(folder, tmp_path):
    assert run(folder, tmp_path / "all.h5", *BASE).exit_code == 1  # empty.mp4 fails in both
    parts = []
    for i in range(3):
        part = tmp_path / f"part{i}.h5"
        run(folder, part, *BASE, "--shard", f"{i}/3")
        parts.append(part)
        with h5py.File(part) as f:
            assert all(shard_of(k.decode(), 3) == i for k in f["videos"][()])
    result = run("merge", tmp_path / "merged.h5", *parts)
    assert result.exit_code == 0, result.output
    assert_same_file(tmp_path / "merged.h5", tmp_path / "all.h5", ignore_attrs=("merged_from",))
    with h5py.File(tmp_path / "merged.h5") as f:
        assert "shard" not in f.attrs["settings"]
    # the merged file has the settings of an unsharded run: that run can resume into it
    assert run(folder, tmp_path / "merged.h5", *BASE).exit_code == 1


def test_merge_reports_gaps_duplicates_and_refuses_other_settings(folder, tmp_path):
    parts = [tmp_path / f"p{i}.h5" for i in range(3)]
    for i in (0, 1):
        run(folder, parts[i], *BASE, "--shard", f"{i}/3")
    result = run("merge", tmp_path / "m.h5", parts[0], parts[1])
    assert result.exit_code == 1 and "missing shard(s) 2" in result.stderr
    result = run("merge", tmp_path / "dup.h5", parts[0], parts[0], parts[1])
    assert "identical features (kept once)" in result.stderr
    run(folder, parts[2], *BASE[:-1], "--seed", "9", "-q", "--shard", "2/3")
    result = run("merge", tmp_path / "bad.h5", parts[0], parts[2])
    assert result.exit_code == 2 and "other settings" in result.stderr and "weights_sha256" in result.stderr
    assert not (tmp_path / "bad.h5").exists()
    assert run("merge", tmp_path / "m.h5", parts[0]).exit_code == 2  # exists: needs --overwrite
    open(journal_path(str(parts[1])), "wb").close()
    result = run("merge", tmp_path / "j.h5", parts[0], parts[1])
    assert result.exit_code == 2 and "did not finish" in result.stderr


def test_shards_are_stable_when_videos_are_added():
    keys = [f"class{i % 7}/video_{i}.mp4" for i in range(2000)]
    before = {k: shard_of(k, 8) for k in keys}
    more = keys + [f"new/video_{i}.mp4" for i in range(500)]
    assert all(shard_of(k, 8) == before[k] for k in keys)
    counts = [sum(shard_of(k, 8) == s for k in more) for s in range(8)]
    assert min(counts) > 2500 / 8 * 0.8  # balanced


def test_list_files_csv_and_odd_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "v").mkdir()
    names = ["plain.mp4", "with space.mp4", "ünïcode é.mp4", "comma,name.mp4", "new\nline.mp4"]
    for i, name in enumerate(names):
        write_video(tmp_path / "v" / name, moving_frames(16, 48, 64, seed=i))
    (tmp_path / "list.txt").write_text("v/plain.mp4\nv/with space.mp4\r\nv/ünïcode é.mp4\n")
    assert read_list("list.txt") == ["v/plain.mp4", "v/with space.mp4", "v/ünïcode é.mp4"]
    (tmp_path / "list.csv").write_text('label,path\n1,"v/comma,name.mp4"\n2,"v/new\nline.mp4"\n')
    jobs, _ = find_videos(["@list.txt", "@list.csv"], root=str(tmp_path / "v"))
    assert [j.key for j in jobs] == sorted(names)
    out = tmp_path / "o.h5"
    result = run("@list.csv", "@list.txt", out, "--root", tmp_path / "v", *BASE)
    assert result.exit_code == 0, result.stderr
    with h5py.File(out) as f:
        assert sorted(f["videos"].asstr()[()]) == sorted(names)


def test_symlink_loops_are_reported_not_fatal(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    write_video(tmp_path / "d" / "sub" / "x.mp4", moving_frames(16, 48, 64))
    os.symlink(tmp_path / "d", tmp_path / "d" / "sub" / "loop")
    jobs, problems = find_videos([str(tmp_path / "d")])
    assert [j.key for j in jobs] == ["sub/x.mp4"]
    assert problems and "symbolic link loop" in problems[0][1]


@pytest.mark.slow
def test_verify_reproduces_a_sample_and_catches_a_changed_row(folder, tmp_path):
    out = tmp_path / "v.h5"
    run(folder, out, *BASE)
    before = out.read_bytes()
    result = run(folder, out, *BASE, "--verify", 3)
    assert result.exit_code == 0 and "re-extracted 3 of 3" in result.output and "reproduced" in result.output
    assert out.read_bytes() == before  # verifying writes nothing
    with h5py.File(out, "r+") as f:  # someone edits the features afterwards
        f["features/pool5"][0] = f["features/pool5"][1]
    result = run(folder, out, *BASE, "--verify", 7)
    assert result.exit_code == 1 and "NOT reproduced" in result.output
    result = run(folder, out, *BASE[:-1], "--seed", "5", "-q", "--verify", 1)
    assert result.exit_code == 2 and "other settings" in result.stderr


@pytest.mark.slow
def test_two_replicas_write_what_one_device_writes(folder, tmp_path):
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    assert run(folder, one, *BASE, "--batch-size", "2").exit_code == 1
    result = run(folder, two, *BASE, "--batch-size", "2", "--device", "cpu,cpu")
    assert result.exit_code == 1, result.stderr
    with h5py.File(two) as f:
        assert f.attrs["device"] == "cpu,cpu"
    assert_same_file(one, two, ignore_attrs=("device",))
    assert run(folder, tmp_path / "x.h5", *BASE, "--device", "cpu,cuda").exit_code == 2


@pytest.mark.slow
def test_resizing_on_the_device_writes_what_the_workers_write(folder, tmp_path):
    workers, device = tmp_path / "w.h5", tmp_path / "d.h5"
    run(folder, workers, *BASE, "--resize-on", "workers")
    assert run(folder, device, *BASE, "--resize-on", "device", "--per-clip").exit_code == 1
    with h5py.File(device) as f:
        assert f.attrs["resize_on"] == "device" and f["clips/pool5"].shape[0] == f["num_clips"][()].sum()
    with h5py.File(workers) as a, h5py.File(device) as b:
        # the same input pixels (models/pixels.py is OpenCV's arithmetic), the same batches: the same bits
        np.testing.assert_array_equal(a["features/pool5"][()], b["features/pool5"][()])
        assert a["videos"][()].tolist() == b["videos"][()].tolist()
    result = run(folder, workers, *BASE, "--resize-on", "device")  # one file never mixes the two
    assert result.exit_code == 2 and "resize_on 'workers' in the file, 'device' now" in result.stderr
