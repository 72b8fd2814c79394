"""Decoding from a run's first second (issue #32): a run into a new file hands its decoders their
first jobs before the weights are read and the network is built; the pool is used only when it decodes
exactly the run's jobs with the network's frame settings, and a run refused after that start leaves
no decoder process behind."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

from c3d_extract import api
from c3d_extract.errors import UsageError
from c3d_extract.extraction import early
from c3d_extract.extraction.pipeline import extract as run_local
from bench.support.videos import moving_frames, write_video


def _videos(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    write_video(folder / "a.mp4", moving_frames(40, 64, 80, seed=1))
    write_video(folder / "b.avi", moving_frames(24, 64, 80, seed=2), codec="mpeg4", tag="XVID")
    return folder


def test_a_new_file_is_decoded_while_the_network_is_built_and_gives_the_same_rows(tmp_path):
    folder = _videos(tmp_path)
    options = api.ExtractOptions(model="res3d", weights="random", device="cpu", workers=1)
    jobs = api.find_jobs([str(folder)], options)
    extractor = api.build_extractor(options, prestart=True, early=early.start(options, jobs))
    assert extractor.early is not None
    worker = extractor.early.pool._workers[0]
    # frames arrive before the pool is iterated: the decoder had its job without being asked
    assert worker.results.poll(120), "the early decoder sent nothing"
    store, todo = api.open_output(str(tmp_path / "early.h5"), extractor, jobs)
    with store:
        summary = api.run_jobs(todo, extractor, store)
    assert summary.written == 2 and summary.failed == 0
    assert extractor.early is None  # taken by the run

    plain = api.build_extractor(options)  # the same run with no early start
    late = api.Arrays(plain.network.layers)
    run_local(jobs, plain.replicas, late, options)
    first = api.FeatureFile(str(tmp_path / "early.h5"))
    assert first.keys == late.keys == ["a.mp4", "b.avi"]
    np.testing.assert_allclose(first.matrix("res5b"), late.matrix("res5b"), atol=1e-6)


def test_an_early_pool_for_other_jobs_is_stopped_not_used(tmp_path):
    folder = _videos(tmp_path)
    options = api.ExtractOptions(model="res3d", weights="random", device="cpu", workers=1)
    jobs = api.find_jobs([str(folder)], options)
    extractor = api.build_extractor(options, prestart=True, early=early.start(options, jobs))
    pool = extractor.early.pool
    assert extractor.take_early_pool(jobs[1:]) is None  # the run's jobs are not the pool's
    assert not any(worker.process.is_alive() for worker in pool._workers)
    # nor a pool that cuts other windows than the network's
    extractor = api.build_extractor(options, prestart=True, early=early.start(options, jobs))
    started = extractor.early
    started.decoder = replace(started.decoder, input_spec=replace(started.decoder.input_spec, clip_len=8, stride=4))
    pool = started.pool
    assert extractor.take_early_pool(jobs) is None
    assert not any(worker.process.is_alive() for worker in pool._workers)


def test_an_api_run_that_fails_after_its_decoders_started_stops_them_at_once(tmp_path):
    folder = _videos(tmp_path)
    before = {child.pid for child in multiprocessing.active_children()}
    with pytest.raises(UsageError, match="res9z"):  # the layer is checked once the network is built
        api.extract([str(folder)], str(tmp_path / "out.h5"), model="res3d", weights="random", layers="res9z",
                    workers=2)
    started = [child for child in multiprocessing.active_children() if child.pid not in before]
    assert started == []  # not left decoding (or waiting) until the interpreter exits


def _alive_in_group(group: int) -> list[int]:
    """The processes of process group `group` that are not zombies (reaped or not by now)."""
    alive = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            alive.append(int(name))
    return alive


def test_a_run_refused_after_its_decoders_started_leaves_none_behind(tmp_path):
    folder = _videos(tmp_path)
    process = subprocess.Popen([sys.executable, "-m", "c3d_extract", str(folder), str(tmp_path / "out.h5"),
                                "--model", "res3d", "--weights", "random", "--layers", "res9z", "--workers", "2"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # its process group is its pid: the decoders join it
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 2, stderr
    assert "res9z" in stderr
    assert not (tmp_path / "out.h5").exists()
    deadline = time.monotonic() + 120  # multiprocessing's resource tracker ends when its pipe closes, just after
    while (left := _alive_in_group(process.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:  # not to leave them running on a failure
        os.kill(pid, signal.SIGKILL)
    assert left == []


# c3d-extract into a new file, with early.start watched: whether torch was imported when it was called
WATCHED_RUN = """
import sys
from c3d_extract.extraction import early
seen = []
original = early.start
def start(options, jobs):
    seen.append("torch" in sys.modules)
    started = original(options, jobs)
    seen.append(started is not None)
    return started
early.start = start
from c3d_extract.cli.extract import main
try:
    main.main(sys.argv[1:], standalone_mode=False)
finally:
    print(seen)
"""


def test_the_command_line_hands_out_first_jobs_before_torch_is_imported(tmp_path):
    folder = _videos(tmp_path)
    out = tmp_path / "out.h5"
    process = subprocess.run([sys.executable, "-c", WATCHED_RUN, str(folder), str(out), "--model", "res3d",
                              "--weights", "random", "--workers", "1", "-q"],
                             capture_output=True, text=True, timeout=600)
    assert process.stdout.strip().splitlines()[-1] == "[False, True]", process.stdout + process.stderr
    assert api.FeatureFile(str(out)).keys == ["a.mp4", "b.avi"]
    # into an existing file (a resume) nothing starts early: its jobs are not known before it is opened
    again = subprocess.run([sys.executable, "-c", WATCHED_RUN, str(folder), str(out), "--model", "res3d",
                            "--weights", "random", "--workers", "1", "-q"],
                           capture_output=True, text=True, timeout=600)
    assert again.stdout.strip().splitlines()[-1] == "[]", again.stdout + again.stderr
