"""Crash safety: SIGKILL at any moment loses nothing finished and corrupts nothing; SIGTERM saves."""

import os
import random
import signal
import struct
import time

import h5py
import numpy as np
import pytest

from c3d_extract.featurefile.journal_format import journal_path
from c3d_extract.featurefile.fold import JournalRows
from c3d_extract.featurefile.writer import FeatureStore
from tests.helpers import FACTS, SHAPES, SETTINGS, assert_same_file, make_store as make
from tests.helpers import extract_process as start_extract
from bench.support.videos import moving_frames, write_video

ARGS = ["--model", "res3d", "--layers", "pool5,prob", "--weights", "random", "--seed", "3",
        "--precision", "fp32", "--batch-size", "2", "--workers", "2", "-q"]


def extract_process(folder, out):
    return start_extract(folder, out, *ARGS)


@pytest.fixture(scope="module")
def many_videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("many")
    for i in range(10):
        write_video(folder / f"v{i:02d}.mp4", moving_frames(17 + 7 * i, 96, 128, seed=i))
    (folder / "broken.mp4").write_bytes(b"\x00" * 100)
    return folder


def finished_in_journal(out) -> int:
    """Complete video records in out's journal, read with the record layout written out here
    (magic "C3DJ", version, kind 1 = video, payload length, CRC), independently of journal.py."""
    path, count = journal_path(str(out)), 0
    if not os.path.exists(path):
        return 0
    data, header = open(path, "rb").read(), struct.Struct("<4sBBII")
    offset = 0
    while offset + header.size <= len(data):
        magic, _, kind, length, _ = header.unpack_from(data, offset)
        if magic != b"C3DJ" or offset + header.size + length > len(data):
            break
        count += kind == 1
        offset += header.size + length
    return count


@pytest.mark.slow
def test_sigkill_at_random_moments_then_rerun_equals_an_uninterrupted_run(many_videos, tmp_path):
    reference = tmp_path / "reference.h5"
    started = time.monotonic()
    assert extract_process(many_videos, reference).wait() == 1  # broken.mp4 fails
    whole_run = time.monotonic() - started  # kill moments scale with this machine's speed
    rng = random.Random(1234)
    out = tmp_path / "killed.h5"
    kills, kills_with_finished = 0, 0
    for attempt in range(12):
        process = extract_process(many_videos, out)
        if attempt == 0:  # once for sure while the journal holds finished videos
            deadline = time.time() + 60
            while process.poll() is None and time.time() < deadline and not finished_in_journal(out):
                time.sleep(0.02)
        elif attempt < 5:
            # mid-start-up, mid-decode, mid-batch or mid-write, within the first 40% of a whole run: a
            # fixed 0.2-6 s let a rerun (which skips the finished videos) end first on a fast machine
            time.sleep(rng.uniform(0.03, 0.4) * whole_run)
        if attempt < 5 and process.poll() is None:
            held = finished_in_journal(out)
            process.send_signal(signal.SIGKILL)
            kills += 1
            kills_with_finished += held > 0
        if process.wait() in (0, 1):
            break
        if out.exists():  # whatever the moment, the file on disk is always a readable feature file
            with h5py.File(out, "r") as f:
                assert f.attrs["format"] == "c3d_extract.features"
    assert kills >= 3, "the kills did not land while the run was working"
    assert kills_with_finished >= 1, "no SIGKILL landed while the journal held finished videos"
    assert not os.path.exists(journal_path(str(out)))
    assert_same_file(out, reference)


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_saves_what_is_finished(many_videos, tmp_path):
    out = tmp_path / "out.h5"
    process = extract_process(many_videos, out)
    deadline = time.time() + 60
    while time.time() < deadline:  # wait until the journal shows finished videos
        path = journal_path(str(out))
        if os.path.exists(path) and os.path.getsize(path) > 3000:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 128 + signal.SIGTERM
    assert b"stopped by SIGTERM" in process.stderr.read()
    assert not os.path.exists(journal_path(str(out)))
    with h5py.File(out, "r") as f:
        saved = f["videos"].shape[0] + f["failures/video"].shape[0]
    assert 1 <= saved < 11


def test_a_torn_journal_record_is_dropped_and_only_that_video_is_redone(tmp_path):
    path = tmp_path / "f.h5"
    store = make(path)
    for key in ("a.mp4", "b.mp4", "c.mp4"):
        store.add_video(key, {"fc6": np.full(4096, 0.5), "pool5": np.ones(8192)}, FACTS)
    store._journal.close()  # the process dies here: no fold
    journal = journal_path(str(path))
    with open(journal, "r+b") as handle:  # and it died in the middle of writing c.mp4
        handle.truncate(os.path.getsize(journal) - 100)
    with make(path) as store:
        assert store.done == {"a.mp4", "b.mp4"}
        store.add_video("c.mp4", {"fc6": np.full(4096, 0.5), "pool5": np.ones(8192)}, FACTS)
    with h5py.File(path, "r") as f:
        assert [k.decode() for k in f["videos"][()]] == ["a.mp4", "b.mp4", "c.mp4"]
        assert f["features/fc6"][2, 0] == np.float32(0.5)
    assert not os.path.exists(journal)


def test_a_fold_that_dies_halfway_leaves_the_old_file_and_the_journal(tmp_path, monkeypatch):
    path = tmp_path / "f.h5"
    with make(path) as store:
        store.add_video("old.mp4", {"fc6": np.ones(4096), "pool5": np.ones(8192)}, FACTS)
    store = make(path)
    store.add_video("new.mp4", {"fc6": np.ones(4096), "pool5": np.ones(8192)}, FACTS)

    def die(*args, **kwargs):
        raise OSError("disk full (simulated mid-fold)")

    monkeypatch.setattr(JournalRows, "read", die)
    with pytest.raises(OSError, match="simulated"):
        store.close()
    store._journal.close()
    with h5py.File(path, "r") as f:  # the old file, whole
        assert [k.decode() for k in f["videos"][()]] == ["old.mp4"]
    monkeypatch.undo()
    for leftover in tmp_path.glob("f.h5.tmp-*"):
        leftover.unlink()
    with make(path) as store:
        assert store.done == {"old.mp4", "new.mp4"}
    with h5py.File(path, "r") as f:
        assert [k.decode() for k in f["videos"][()]] == ["new.mp4", "old.mp4"]


def test_the_file_does_not_depend_on_the_order_videos_finish_in(tmp_path):
    rng = np.random.default_rng(0)
    rows = {f"{c}.mp4": {"fc6": rng.random(4096), "pool5": rng.random(8192)} for c in "dbeac"}
    for name, order in (("one.h5", "abcde"), ("two.h5", "ecbda")):
        with FeatureStore.open(str(tmp_path / name), SETTINGS, SHAPES, {}) as store:
            for c in order[:2]:
                store.add_video(f"{c}.mp4", rows[f"{c}.mp4"], FACTS)
        with FeatureStore.open(str(tmp_path / name), SETTINGS, SHAPES, {}) as store:
            for c in order[2:]:
                store.add_video(f"{c}.mp4", rows[f"{c}.mp4"], FACTS)
            store.add_failure("z.mp4", "open", "empty file (0 bytes)")
    assert_same_file(tmp_path / "one.h5", tmp_path / "two.h5")
