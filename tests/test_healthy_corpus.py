"""Healthy files are never failures (issue #31): the corpus of tests/healthy.py (audio longer or
shorter than the video in five containers, AVI repeat chunks, variable frame rates with a pause, edit
lists, late starts, B-frames with negative DTS, open GOPs, no declared duration, fragmented MP4, NTSC
and 1 fps rates, 1 and 15 frames, a rotated phone video, 10-bit, 4:4:4), as one folder through the
local engine and the Ray engine: every file is `ok` (or only `short:*`), both files are the same, and
each row equals what the other reader's frames give."""

from __future__ import annotations

from fractions import Fraction

import h5py
import numpy as np
import pytest

from c3d_extract.extraction.decode import DecoderSettings, decode_frames
from c3d_extract.extraction.messages import End
from c3d_extract.extraction.inputs import VideoJob
from c3d_extract.extraction.decord_reader import DECORD, DecordReader
from c3d_extract.extraction.pyav_reader import PyAVReader
from c3d_extract.extraction.reader_base import VideoError
from c3d_extract.models.registry import RES3D_SPORTS1M
from c3d_extract.models.net import init_random
from c3d_extract.models.registry import res3d
from tests.healthy import SHAPES, Shape, available, write_shape
from tests.helpers import assert_same_file, recompute_frames, rows, run

RES3D_DECODER = DecoderSettings(RES3D_SPORTS1M.input)  # the decoders' settings of a Res3D run

ARGS = ["--model", "res3d", "--layers", "pool5", "--weights", "random", "--seed", "7", "--precision", "fp32",
        "--batch-size", "8", "-q"]
# the issue's two files: a 2 s H.264 MKV with 4 s of audio (audio_longer.mkv of SHAPES), and a
# Cinepak AVI whose header counts 444 frames at 15 fps, 376 of them zero-size (repeat) chunks
ISSUE_AVI = Shape("repeat_chunks_444.avi", 68, "cinepak", "rgb24", Fraction(15),
                  pts=[round(i * 443 / 67) for i in range(68)])
TEN_BIT = ("hevc_10bit.mkv", "h264_10bit.mp4")  # swscale 4.1 and 8 convert 10-bit differently


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("healthy")
    made, missing = {}, []
    for i, shape in enumerate([*SHAPES, ISSUE_AVI]):
        if available(shape):
            made[shape.name] = (write_shape(folder, shape, seed=i), shape)
        else:
            missing.append(shape.name)
    if missing:
        print(f"no encoder here for: {', '.join(missing)}")
    assert {"audio_longer.mkv", "repeat_chunks_444.avi", "vfr_pause.mp4", "edit_list_cut.mp4"} <= set(made)
    return folder, made


def test_the_issues_avi_declares_444_frames_of_which_68_are_pictures(corpus):
    import av

    path, _ = corpus[1]["repeat_chunks_444.avi"]
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.frames == 444 and float(stream.duration * stream.time_base) == pytest.approx(444 / 15)
        assert sum(1 for _ in container.decode(stream)) == 68  # FFmpeg skips the zero-size chunks


def test_each_reader_reads_every_healthy_shape_without_a_damage_verdict(corpus):
    """In this process (no decoder process: FFmpeg's native lines are not read here, the engines'
    test below reads them): PyAV alone ends every file `ok`, with every frame a player shows; decord
    alone ends `ok` or refuses for its own limits, never with a length the container did not declare."""
    for name, (path, shape) in corpus[1].items():
        expected = "ok" if shape.shown >= 16 else "short:loop"
        for readers in ([PyAVReader], None):
            end = list(decode_frames(VideoJob(name, str(path)), RES3D_DECODER, readers=readers))[-1]
            assert isinstance(end, End) and end.facts["num_frames"] == shape.shown, (name, readers, end)
            assert end.facts["status"] in ("ok", expected), (name, end.facts)
        end = list(decode_frames(VideoJob(name, str(path)), RES3D_DECODER,
                                 readers=[DecordReader]))[-1]
        if not isinstance(end, End):
            assert "declares" not in end.error, end.error
            assert "no frame between" not in end.error or name.endswith((".mkv", ".webm")), end.error
        else:
            assert end.facts["status"] == "ok" and end.facts["num_frames"] == shape.shown, (name, end.facts)


@pytest.mark.slow
def test_every_healthy_shape_is_ok_in_both_engines_and_equals_the_other_reader(corpus, tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'ray[data]'; the test extra has it)")
    folder, made = corpus
    local, ray = tmp_path / "local.h5", tmp_path / "ray.h5"
    result = run(folder, local, *ARGS)
    assert result.exit_code == 0, result.stderr
    result = run(folder, ray, *ARGS, "--engine", "ray")
    assert result.exit_code == 0, result.stderr
    assert_same_file(ray, local, ignore_attrs=("engine",))
    with h5py.File(local, "r") as f:
        facts = {key: (status, decoder, int(frames)) for key, status, decoder, frames in zip(
            f["videos"].asstr()[()], f["status"].asstr()[()], f["decoder"].asstr()[()], f["num_frames"][()])}
    assert sorted(facts) == sorted(made)
    for name, (status, decoder, frames) in facts.items():
        shape = made[name][1]
        assert frames == shape.shown, (name, frames)
        assert status == ("ok" if frames >= 16 else "short:loop"), (name, status, decoder)

    net = res3d()
    init_random(net, 7)
    net.eval()
    compared, unread = [], []
    for name, row in rows(local, "pool5").items():
        path, shape = made[name]
        other = PyAVReader if facts[name][1] == DECORD else DecordReader
        if shape.shown < 16:
            continue  # padded: the loop is the pipeline's, not a reader's
        try:
            frames = np.concatenate(list(other(str(path)).chunks()))
        except VideoError as exc:
            unread.append(f"{name} ({other.name}: {exc})")
            continue
        assert len(frames) == shape.shown, (name, other.name, len(frames))
        expected = recompute_frames(frames, net, ["pool5"], (128.0, 128.0, 128.0), 2)["pool5"]
        if name in TEN_BIT:
            assert float(np.dot(row, expected)) >= 0.999, name
        else:
            np.testing.assert_allclose(row, expected, atol=1e-4, err_msg=name)
        compared.append(name)
    print(f"{len(facts)} healthy files ok in both engines; rows equal the other reader's on {len(compared)}; "
          f"the other reader refuses {len(unread)}: {unread}")
    assert len(compared) >= len(facts) // 2
