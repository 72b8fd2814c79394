"""`--engine ray` (Ray Data in local mode) writes the same feature file as the local engine."""

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
