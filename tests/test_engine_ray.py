"""`--engine ray` (Ray Data in local mode) writes the same feature file, and fills the same arrays, as
the local engine."""

import numpy as np
import pytest
from click.testing import CliRunner

from c3d_extract.cli.extract import main
from tests.helpers import assert_same_file
from bench.support.videos import moving_frames, write_video

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'ray[data]'; the test extra has it)")


@pytest.mark.slow
def test_ray_engine_equals_the_local_engine(tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for i in range(4):
        write_video(folder / ("sub" if i % 2 else ".") / f"v{i}.mp4", moving_frames(17 + 9 * i, 64, 96, seed=i))
    write_video(folder / "short.mp4", moving_frames(5, 64, 96, seed=9))
    (folder / "broken.mp4").write_bytes(b"not a video")
    args = ["--model", "res3d", "--layers", "pool5,prob", "--weights", "random", "--seed", "2",
            "--precision", "fp32", "--batch-size", "3", "-q"]
    local = CliRunner().invoke(main, [str(folder), str(tmp_path / "local.h5"), *args])
    remote = CliRunner().invoke(main, [str(folder), str(tmp_path / "ray.h5"), *args, "--engine", "ray"])
    assert local.exit_code == remote.exit_code == 1, remote.stderr
    assert "broken.mp4" in remote.stderr
    assert_same_file(tmp_path / "ray.h5", tmp_path / "local.h5")
    assert not ray.is_initialized()  # the engine shut down the Ray it started


def test_a_video_given_as_its_journal_record_lands_in_arrays_as_its_rows():
    # the Ray engine's forward actors send most videos as their whole journal record (add_record):
    # api.Arrays reads the rows back from it, bit for bit those the record was made from
    from c3d_extract.api import Arrays
    from c3d_extract.featurefile.writer import video_record

    rng = np.random.default_rng(5)
    features = {"fc6": rng.standard_normal(4096).astype(np.float32), "pool5": rng.random(8192, np.float32)}
    facts = {"num_frames": 40, "fps": 25.0, "height": 240, "width": 320, "status": "ok", "num_clips": 4}
    arrays = Arrays(["fc6", "pool5"])
    arrays.add_record("a/b.mp4", video_record("a/b.mp4", features, facts, ["fc6", "pool5"]))
    assert arrays.keys == ["a/b.mp4"] and not arrays.failed
    for layer, value in features.items():
        row = arrays.rows["a/b.mp4"][layer]
        assert row.dtype == np.float32 and row.tobytes() == value.tobytes()
        row += 1  # the rows are the caller's own arrays, as the local engine's are


@pytest.mark.slow
def test_ray_engine_fills_arrays_as_the_local_engine_does(tmp_path):
    """api.extract without an output under Ray: a real local Ray, few clips, random weights; the rows
    (most of them journal records made on the forward actor) equal the local engine's bit for bit."""
    from c3d_extract import api

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        write_video(folder / f"v{i}.mp4", moving_frames(17 + 16 * i, 64, 96, seed=i))
    (folder / "broken.mp4").write_bytes(b"not a video")
    args = dict(model="res3d", layers=["pool5"], weights="random", seed=3, precision="fp32", batch_size=4,
                device="cpu", quiet=True)
    local = api.extract([str(folder)], None, **args)
    remote = api.extract([str(folder)], None, engine="ray", **args)
    assert isinstance(remote, api.Arrays)
    assert remote.keys == local.keys == ["v0.mp4", "v1.mp4", "v2.mp4"]
    assert sorted(remote.failed) == sorted(local.failed) == ["broken.mp4"]
    for key in local.keys:
        assert remote.rows[key]["pool5"].tobytes() == local.rows[key]["pool5"].tobytes(), key
    assert not ray.is_initialized()
