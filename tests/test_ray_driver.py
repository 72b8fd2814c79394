"""The Ray engine's driver without Ray: the forward actors' part rows (ray_actors.partial_sums) and the
driver that turns them into the store's rows (ray_driver.Driver), fed by hand with the batches a
cluster could deliver: a video split across batches, arriving out of order, a block Ray ran twice
(another nonce), a restarted decoder's clips, an unreachable cluster."""

import json
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from c3d_extract.extraction.engine_ray import clips_per_call
from c3d_extract.extraction.inputs import VideoJob
from c3d_extract.extraction.collector import Collector
from c3d_extract.extraction.ray_actors import partial_sums
from c3d_extract.extraction.ray_driver import Driver
from c3d_extract.featurefile.writer import FeatureStore
from c3d_extract.models.registry import SPECS
from bench.support.remote_servers import free_port

LAYERS = ["fc6"]
SHAPES = {"fc6": (8,)}
SETTINGS = {"model": "c3d", "layers": LAYERS, "clip_len": 16, "precision": "fp32"}
FACTS = {"num_frames": 40, "fps": 25.0, "height": 240, "width": 320, "status": "ok"}


def clip_values(key: str, count: int) -> np.ndarray:
    seed = sum(map(ord, key))
    return np.random.RandomState(seed).uniform(0, 3, (count, 8)).astype(np.float32)


def decoded(rows: list[tuple]) -> dict:
    """A decode actor's batch: rows (key, kind, start, attempt, nonce, num_clips or None)."""
    meta = []
    for key, kind, start, attempt, nonce, clips in rows:
        if kind == "last":
            meta.append(f'{{"num_clips": {clips}, "facts": {{"num_frames": 40, "fps": 25.0, "height": 240, '
                        f'"width": 320, "status": "ok"}}, "attempt": {attempt}}}')
        else:
            meta.append(str(attempt))
    return {"key": np.array([r[0] for r in rows], object), "kind": np.array([r[1] for r in rows], object),
            "meta": np.array(meta, object), "start": np.array([r[2] for r in rows], np.int64),
            "nonce": np.array([r[4] for r in rows], object)}


def forward(batch: dict, values: dict) -> dict:
    """What _Forward returns for `batch`: the clip rows' values looked up by (key, attempt, start)."""
    clips = np.flatnonzero(np.isin(batch["kind"], ("clip", "last")))
    out = []
    for i in clips:
        meta = batch["meta"][i]
        attempt = json.loads(meta)["attempt"] if batch["kind"][i] == "last" else int(meta or 0)
        out.append(values[str(batch["key"][i]), attempt][int(batch["start"][i]) // 8])
    return partial_sums(batch, clips, {"fc6": np.array(out).reshape(len(clips), 8)}, LAYERS)


def expected_row(clips: np.ndarray) -> np.ndarray:
    """The local engine's descriptor, computed plainly: float64 mean of the clips, L2-normalised."""
    mean = clips.astype(np.float64).sum(axis=0) / len(clips)
    return (mean / np.linalg.norm(mean)).astype(np.float32)


def test_parts_from_split_reordered_and_repeated_batches_give_the_local_rows(tmp_path):
    values = {("a", 0): clip_values("a", 5), ("b", 0): clip_values("b", 3), ("c", 0): clip_values("c", 2),
              ("c", 1): clip_values("c-restarted", 4)}
    a = [("a", "clip", 8 * s, 0, "n1", None) for s in range(4)] + [("a", "last", 32, 0, "n1", 5)]
    b = [("b", "clip", 0, 0, "n1", None), ("b", "clip", 8, 0, "n1", None), ("b", "last", 16, 0, "n1", 3)]
    c_old = [("c", "clip", 0, 0, "n2", None)]  # decord's try, then PyAV's from the start (attempt 1)
    c_new = [("c", "clip", 8 * s, 1, "n2", None) for s in range(3)] + [("c", "last", 24, 1, "n2", 4)]
    batches = [decoded(a[:2] + b[:1]), decoded(a[2:4] + c_old), decoded(b[1:] + c_new), decoded(a[4:])]
    again = decoded([(k, kind, s, att, "n9", n) for k, kind, s, att, _, n in a])  # the block Ray ran again
    store = FeatureStore.open(str(tmp_path / "out.h5"), SETTINGS, SHAPES, {"command_line": "test"})
    told = []
    collector = Collector(store, lambda key, failure, summary: told.append(key), grouped=True)
    driver = Driver([VideoJob(k, k) for k in "abc"], collector, LAYERS)
    parts = [forward(batch, values) for batch in batches]
    assert [list(p["kind"]) for p in parts] == [["part", "part"], ["part", "part"], ["part", "video"], ["part"]]
    for part in [parts[1], forward(again, values), parts[0], parts[3], parts[2], forward(again, values)]:
        driver.absorb(part)
    driver.commit()
    assert sorted(told) == ["a", "b", "c"] and not driver.pending
    assert collector.summary.written == 3 and collector.summary.clips == 12
    store.close()
    with h5py.File(tmp_path / "out.h5", "r") as f:
        rows = dict(zip(f["videos"].asstr()[:], f["features/fc6"][()]))
        clips = dict(zip(f["videos"].asstr()[:], f["num_clips"][()]))
    np.testing.assert_allclose(rows["a"], expected_row(values["a", 0]), rtol=1e-6)
    np.testing.assert_allclose(rows["b"], expected_row(values["b", 0]), rtol=1e-6)
    np.testing.assert_allclose(rows["c"], expected_row(values["c", 1]), rtol=1e-6)  # the restart's clips only
    assert clips == {"a": 5, "b": 3, "c": 4}


def test_a_video_is_told_only_after_its_group_is_committed(tmp_path):
    values = {("a", 0): clip_values("a", 1)}
    store = FeatureStore.open(str(tmp_path / "out.h5"), SETTINGS, SHAPES, {"command_line": "test"})
    told = []
    collector = Collector(store, lambda key, failure, summary: told.append(key), grouped=True)
    driver = Driver([VideoJob("a", "a")], collector, LAYERS)
    driver.committed = time.monotonic() + 60  # the next commit is not due
    driver.absorb(forward(decoded([("a", "last", 0, 0, "n", 1)]), values))
    assert "a" in store.done and told == []  # written to the journal, not yet fsynced: not announced
    driver.commit()
    assert told == ["a"]
    store.close()


@pytest.mark.slow
def test_an_unreachable_cluster_fails_within_the_connect_timeout(tmp_path):
    (tmp_path / "v.mp4").write_bytes(b"x")
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "c3d_extract", str(tmp_path / "v.mp4"), str(tmp_path / "out.h5"),
                           "--engine", "ray", "--ray-address", address, "--ray-connect-timeout", "5",
                           "--weights", "random", "--model", "res3d", "-q"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if "random weights" not in line]
    assert len(lines) == 1 and f"cannot join the Ray cluster at {address}" in lines[0], lines
    assert "Ray's messages are in" in lines[0]
    assert time.time() - started < 120


def test_a_forward_call_holds_several_batches_only_in_a_large_run():
    c3d, t3d = SPECS["c3d-sports1m"].input, SPECS["t3d-121"].input  # 16 x 112 x 112 and 32 x 224 x 224 clips
    clip = 16 * 112 * 112 * 3
    assert clips_per_call(c3d, 64, 10) == 64 and clips_per_call(c3d, 2, 8) == 2  # results stream at once
    assert clips_per_call(c3d, 64, 600) == 128
    assert clips_per_call(c3d, 64, 100_000) == 64 * min(8, (256 << 20) // (64 * clip)) == 384  # <= 256 MiB
    assert clips_per_call(t3d, 64, 100_000) == 64  # a batch of 224 x 224 clips is already 616 MB
