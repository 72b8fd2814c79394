"""Group commit of the Ray driver's store (journal.sync(wait=False): one write and one fsync per group,
in a background thread), with real faults: a driver process SIGKILLed while groups are written and
fsynced, and a disk that fills during a group's background write (RLIMIT_FSIZE: EFBIG). A video told
(on_video) is never lost; a rerun of what is missing equals a run that was never interrupted."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from c3d_extract.featurefile.journal import Journal
from c3d_extract.featurefile.journal_format import journal_path
from c3d_extract.featurefile.writer import FeatureStore

ROOT = Path(__file__).resolve().parents[1]
VIDEOS, CLIPS, DIM = 1500, 4, 4096

# A driver process: the engine's real Driver and FeatureStore, fed the rows the forward actors return
# (ray_actors.partial_sums of seeded activations) for the videos not yet in the file; prints each video
# on_video tells, after its group's fsync; exits 0 when all are written.
CHILD = textwrap.dedent(f"""
    import json, sys
    import numpy as np
    sys.path.insert(0, {str(ROOT)!r})
    from c3d_extract.extraction.inputs import VideoJob
    from c3d_extract.extraction.collector import Collector
    from c3d_extract.extraction.ray_actors import partial_sums
    from c3d_extract.extraction.ray_driver import Driver
    from c3d_extract.featurefile.writer import FeatureStore

    out, videos, clips, dim, pause = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    store = FeatureStore.open(out, {{"model": "c3d", "layers": ["fc6"], "clip_len": 16, "precision": "fp32"}},
                              {{"fc6": (dim,)}}, {{"command_line": "test"}})
    facts = {{"num_frames": 8 * clips + 8, "fps": 25.0, "height": 240, "width": 320, "status": "ok"}}
    todo = [f"v{{v:05d}}.mp4" for v in range(videos) if f"v{{v:05d}}.mp4" not in store.done]
    told = lambda key, failure, summary: print(key, flush=True)
    collector = Collector(store, told, grouped=True)
    driver = Driver([VideoJob(key, key) for key in todo], collector, ["fc6"])
    try:  # as engine_ray._run: what was absorbed is committed however the loop ends
        for at in range(0, len(todo), 5):  # 5 videos of `clips` clips per forward batch, each split in two
            keys = [key for key in todo[at:at + 5] for _ in range(clips)]
            starts = [8 * c for _ in todo[at:at + 5] for c in range(clips)]
            last = [c == clips - 1 for _ in todo[at:at + 5] for c in range(clips)]
            meta = [json.dumps({{"num_clips": clips, "facts": facts, "attempt": 0}}) if end else "0" for end in last]
            values = np.stack([np.random.RandomState(int(k[1:6]) * 100 + s // 8).uniform(0, 1, dim).astype(np.float32)
                               for k, s in zip(keys, starts)])
            for half in (slice(0, len(keys) // 2 + 1), slice(len(keys) // 2 + 1, None)):
                batch = {{"key": np.array(keys[half], object), "kind": np.array(["last" if e else "clip" for e in last[half]], object),
                          "meta": np.array(meta[half], object), "start": np.array(starts[half], np.int64),
                          "nonce": np.array(["n"] * len(keys[half]), object)}}
                driver.absorb(partial_sums(batch, np.arange(len(keys[half])), {{"fc6": values[half]}}, ["fc6"]))
            if pause:
                import time; time.sleep(pause)
    finally:
        driver.commit()
    store.close()
""")


def drive(out: Path, pause: float = 0.0, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(out), str(VIDEOS), str(CLIPS), str(DIM), str(pause)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def rows(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        keys = f["videos"].asstr()[:]
        return {"keys": list(keys), "fc6": f["features/fc6"][()], "num_clips": f["num_clips"][()],
                "failures": len(f["failures/video"]) if "failures/video" in f else 0}


def assert_equal_runs(a: Path, b: Path) -> None:
    ra, rb = rows(a), rows(b)
    assert ra["keys"] == rb["keys"] and len(ra["keys"]) == VIDEOS
    assert np.array_equal(ra["fc6"], rb["fc6"]) and np.array_equal(ra["num_clips"], rb["num_clips"])
    assert ra["failures"] == rb["failures"] == 0


@pytest.mark.slow
def test_sigkill_during_group_commits_then_rerun_equals_a_clean_run(tmp_path):
    clean = tmp_path / "clean.h5"
    done = drive(clean)
    stdout, stderr = done.communicate(timeout=600)
    assert done.returncode == 0, stderr
    assert len(stdout.split()) == VIDEOS

    out = tmp_path / "killed.h5"
    for wait_for in (40, 300):  # two kills at different depths, the journal growing
        child = drive(out, pause=0.005)
        told = []
        while len(told) < wait_for:
            line = child.stdout.readline()
            assert line, child.stderr.read()
            told.append(line.strip())
        child.send_signal(signal.SIGKILL)  # groups are being absorbed, written and fsynced all the time
        child.wait()
        told += [line.strip() for line in child.stdout.read().split()]
        journal = Journal(journal_path(str(out)))
        kept = {record.meta["key"] for record in journal}
        assert not journal.damage  # a group cut by the kill is dropped, never reported as damage
        journal.close()
        assert set(told) <= kept, sorted(set(told) - kept)[:5]  # every video told is durable
        assert len(kept) < VIDEOS
    done = drive(out)
    stdout, stderr = done.communicate(timeout=600)
    assert done.returncode == 0, stderr
    assert_equal_runs(clean, out)


@pytest.mark.slow
def test_a_full_disk_during_a_background_group_write_loses_no_told_video(tmp_path):
    clean = tmp_path / "clean.h5"
    assert drive(clean).wait(timeout=600) == 0
    out = tmp_path / "full.h5"
    FeatureStore.open(str(out), {"model": "c3d", "layers": ["fc6"], "clip_len": 16, "precision": "fp32"},
                      {"fc6": (DIM,)}, {"command_line": "test"}).close()  # the file exists: only the journal grows
    limit = 3 << 20  # about 190 records of 16 KiB: several groups land, then one write fails with EFBIG

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    child = drive(out, pause=0.02, preexec_fn=limited)  # batches slow enough that groups are small
    stdout, stderr = child.communicate(timeout=600)
    assert child.returncode != 0
    assert "OSError" in stderr or "StorageError" in stderr, stderr
    assert "File too large" in stderr or "EFBIG" in stderr, stderr
    told = stdout.split()
    assert 0 < len(told) < VIDEOS
    size = os.path.getsize(journal_path(str(out)))
    assert size <= limit
    journal = Journal(journal_path(str(out)))
    kept = [record.meta["key"] for record in journal]
    assert not journal.damage  # the failed group was cut back: no torn record
    journal.close()
    assert set(told) <= set(kept)
    assert len(kept) == len(set(kept))
    rerun = drive(out)
    stdout, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, stderr
    assert_equal_runs(clean, out)
    assert not os.path.exists(journal_path(str(out)))


def test_sync_without_wait_returns_the_group_before_durable(tmp_path):
    journal = Journal(str(tmp_path / "j"))
    values = {"fc6": np.arange(8, dtype=np.float32)}
    journal.append_video("a", {"num_clips": 1}, values, sync=False)
    assert journal.sync(wait=False) == []  # a's group is in flight
    journal.append_video("b", {"num_clips": 1}, values, sync=False)
    landed = journal.sync(wait=False)
    assert [r.meta["key"] for r in landed] == ["a"]
    assert [r.meta["key"] for r in journal.sync()] == ["b"]
    for record in journal:
        assert np.array_equal(journal.features(record)["fc6"], values["fc6"])
    journal.close()
    again = Journal(str(tmp_path / "j"))
    assert [r.meta["key"] for r in again] == ["a", "b"] and not again.damage
    again.close()


def test_a_group_that_fails_in_flight_leaves_the_next_group_readable(tmp_path):
    """A group's background write fails (EFBIG past RLIMIT_FSIZE); the records added meanwhile are
    written after the cut, at their true offsets: read back and reopened, they are intact."""
    script = textwrap.dedent(f"""
        import resource, sys
        import numpy as np
        sys.path.insert(0, {str(ROOT)!r})
        from c3d_extract.featurefile.journal import Journal
        journal = Journal(sys.argv[1])
        small, big = np.full(64, 1.5, np.float32), np.full(1 << 16, 2.5, np.float32)
        journal.append_video("a", {{"num_clips": 1}}, {{"fc6": small}}, sync=False)
        journal.sync()
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
        journal.append_video("b", {{"num_clips": 1}}, {{"fc6": big}}, sync=False)  # 256 KiB: past the limit
        journal.sync(wait=False)
        journal.append_video("c", {{"num_clips": 1}}, {{"fc6": small * 2}}, sync=False)
        try:
            journal.sync(wait=False)
        except OSError as exc:
            print("failed", [r.meta["key"] for r in exc.records], exc.errno)
        journal.append_video("d", {{"num_clips": 1}}, {{"fc6": small * 3}}, sync=False)  # added after the error
        journal.sync()
        print("kept", [r.meta["key"] for r in journal], float(journal.features(journal.records[-1])["fc6"][0]))
    """)
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "j")], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["failed ['b'] 27", "kept ['a', 'c', 'd'] 4.5"], done.stdout  # 27: EFBIG
    journal = Journal(str(tmp_path / "j"))
    assert [r.meta["key"] for r in journal] == ["a", "c", "d"] and not journal.damage
    assert np.array_equal(journal.features(journal.records[1])["fc6"], np.full(64, 3.0, np.float32))
    assert np.array_equal(journal.features(journal.records[2])["fc6"], np.full(64, 4.5, np.float32))
    journal.close()


# A grouped Collector over the real store: group A (10 videos) fails in its background write (EFBIG),
# the commit after it raises, then a later group B (1 video) fits and is committed: only B is told.
FAILED_GROUP = textwrap.dedent(f"""
    import os, resource, sys
    import numpy as np
    sys.path.insert(0, {str(ROOT)!r})
    from c3d_extract.extraction.collector import Collector
    from c3d_extract.featurefile.writer import FeatureStore

    out = sys.argv[1]
    store = FeatureStore.open(out, {{"model": "c3d", "layers": ["fc6"], "clip_len": 16, "precision": "fp32"}},
                              {{"fc6": (4096,)}}, {{"command_line": "test"}})
    told = []
    collector = Collector(store, lambda key, failure, summary: told.append(key), grouped=True)
    facts = {{"num_frames": 40, "fps": 25.0, "height": 240, "width": 320, "status": "ok"}}
    sums = lambda i: {{"fc6": np.random.RandomState(i).uniform(0, 1, 4096)}}
    limit = os.path.getsize(out + ".journal") + 50_000  # room for B's 16 KiB, not for A's 160 KiB
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    for i in range(10):
        collector.whole(f"a{{i}}.mp4", sums(i), 4, facts)
    collector.commit(wait=False)  # A is written in the background: EFBIG
    collector.whole("b.mp4", sums(99), 4, facts)
    try:
        collector.commit(wait=False)
    except Exception as exc:
        print("raised", type(exc).__name__)
    collector.commit()  # B alone: fits
    print("told", *told)
    print("done", *sorted(store.done))
""")


def test_videos_of_a_group_that_failed_are_never_told(tmp_path):
    run = subprocess.run([sys.executable, "-c", FAILED_GROUP, str(tmp_path / "out.h5")], capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    lines = dict(line.split(" ", 1) if " " in line else (line, "") for line in run.stdout.splitlines())
    assert lines["raised"] == "StorageError"
    assert lines["told"] == "b.mp4" and lines["done"] == "b.mp4"
    journal = Journal(journal_path(str(tmp_path / "out.h5")))
    assert [record.meta["key"] for record in journal] == ["b.mp4"] and not journal.damage
    journal.close()
