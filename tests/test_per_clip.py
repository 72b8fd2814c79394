"""Per-clip features, segment pooling, and their survival through resume and merge."""

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from c3d_extract.cli.extract import main
from c3d_extract.featurefile.pooling import segment_bounds, segment_pool
from bench.support.videos import moving_frames, write_video

ARGS = ["--model", "res3d", "--layers", "pool5,prob", "--weights", "random", "--precision", "fp32", "-q"]


def test_segment_bounds_follow_the_matlab_rule_by_hand():
    # N=5, K=2: linspace(1,5,3) = 1,3,5 -> clips 1-2 and 3-4; clip 5 is left out, as in Sultani's code
    assert segment_bounds(5, 2) == [(0, 2), (2, 4)]
    # N=3, K=4: linspace = 1, 1.5, 2, 2.5, 3 -> MATLAB round 1, 2, 2, 3, 3 (numpy's would give 1, 2, 2, 2, 3)
    assert segment_bounds(3, 4) == [(0, 1), (1, 2), (1, 2), (2, 3)]
    # fewer clips than segments: a lone clip repeats
    assert segment_bounds(1, 3) == [(0, 1)] * 3
    # N=100, K=32: 32 non-empty ranges covering clips 1..99
    bounds = segment_bounds(100, 32)
    assert len(bounds) == 32 and bounds[0][0] == 0 and bounds[-1][1] == 99
    assert all(b > a for a, b in bounds)


def test_segment_pool_hand_worked():
    clips = np.array([[3.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 4.0], [9.0, 9.0]])
    pooled = segment_pool(clips, 2)  # means of clips 1-2 = (2, 0) and 3-4 = (0, 3), then L2
    np.testing.assert_allclose(pooled, [[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(segment_pool(np.zeros((2, 3)), 2), np.zeros((2, 3)))  # no NaN


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("perclip")
    for i, n in enumerate((16, 41, 70)):
        write_video(folder / f"v{i}.mp4", moving_frames(n, 64, 96, seed=20 + i))
    write_video(folder / "short.mp4", moving_frames(6, 64, 96, seed=30))
    return folder


def test_per_clip_rows_average_to_the_video_row_and_carry_frames_and_times(videos, tmp_path):
    out = tmp_path / "o.h5"
    result = CliRunner().invoke(main, [str(videos), str(out), *ARGS, "--per-clip", "--segments", "4"])
    assert result.exit_code == 0, result.stderr
    with h5py.File(out) as f:
        keys = f["videos"].asstr()[()].tolist()
        assert keys == ["short.mp4", "v0.mp4", "v1.mp4", "v2.mp4"]
        counts, offsets = f["num_clips"][()], f["clip_offset"][()]
        assert counts.tolist() == [1, 1, 4, 7] and offsets.tolist() == [0, 1, 2, 6]
        assert f["clips/pool5"].shape == (13, 512)
        for i, key in enumerate(keys):
            rows = f["clips/pool5"][offsets[i]: offsets[i] + counts[i]].astype(np.float64)
            mean = rows.mean(0)
            np.testing.assert_allclose(mean / np.linalg.norm(mean), f["features/pool5"][i], atol=1e-6)
            np.testing.assert_allclose(f["segments/pool5"][i], segment_pool(rows, 4), atol=1e-6)
        v2 = slice(offsets[3], offsets[3] + counts[3])
        assert f["clips/first_frame"][v2].tolist() == [0, 8, 16, 24, 32, 40, 48]
        assert f["clips/last_frame"][v2].tolist() == [15, 23, 31, 39, 47, 55, 63]
        np.testing.assert_allclose(f["clips/time"][v2], np.array([0, 8, 16, 24, 32, 40, 48]) / 25.0)
        assert f["clips/last_frame"][0] == 5  # a padded short video ends at its last real frame
        assert f["segments/pool5"].shape == (4, 4, 512)


@pytest.mark.slow
def test_clips_survive_sharding_and_merge(videos, tmp_path):
    single = tmp_path / "single.h5"
    CliRunner().invoke(main, [str(videos), str(single), *ARGS, "--per-clip", "--segments", "2"])
    parts = []
    for i in range(2):
        parts.append(tmp_path / f"p{i}.h5")
        CliRunner().invoke(main, [str(videos), str(parts[-1]), *ARGS, "--per-clip", "--segments", "2",
                                  "--shard", f"{i}/2"])
    assert CliRunner().invoke(main, ["merge", str(tmp_path / "m.h5"), *map(str, parts)]).exit_code == 0
    with h5py.File(single) as a, h5py.File(tmp_path / "m.h5") as b:
        for name in ("videos", "clip_offset", "clips/pool5", "clips/first_frame", "segments/prob", "features/prob"):
            np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)
