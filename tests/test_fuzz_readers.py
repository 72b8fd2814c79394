"""Damaged files end with a reason, never with an internal exception (issue #31, item 6): seeded
byte-level mutations (tests/fuzzing.py) of small videos made here in 13 codec/container pairs, each
read by both readers alone in a decoder process's setting. Every file must end `ok`, `repaired:N`
(or another status), or a failure whose reason is FFmpeg's or the checks' — never "unexpected ...".
And the three files of shared/damaged that found such bugs (where shared/ is present)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from c3d_extract.extraction.decode import DecoderSettings, decode_frames
from c3d_extract.extraction.messages import End
from c3d_extract.extraction.inputs import VideoJob
from c3d_extract.extraction.decord_reader import DecordReader
from c3d_extract.extraction.pyav_reader import PyAVReader
from c3d_extract.models.registry import RES3D_SPORTS1M
from tests.fuzzing import MUTATIONS, RUNNER, mutate
from tests.healthy import Shape, available, write_shape
from bench.support.videos import SHARED_VIDEOS

RES3D_DECODER = DecoderSettings(RES3D_SPORTS1M.input)  # the decoders' settings of a Res3D run

# 13 small sources, audio where the container usually has it
SOURCES = [
    Shape("h264.mp4", 30, audio=1.0), Shape("h264.mkv", 30, audio=1.0), Shape("h264.mov", 30),
    Shape("xvid.avi", 30, "mpeg4", audio=1.0), Shape("vp8.webm", 30, "libvpx", audio=1.0),
    Shape("vp9.webm", 30, "libvpx-vp9", audio=1.0), Shape("hevc.mp4", 30, "libx265"),
    Shape("flv1.flv", 30, "flv", audio=1.0), Shape("mjpeg.avi", 30, "mjpeg", "yuvj420p"),
    Shape("mpeg2.mpg", 30, "mpeg2video"), Shape("ffv1.mkv", 12, "ffv1"),
    Shape("av1.mkv", 30, "libsvtav1"), Shape("h264_frag.mp4", 30, codec_options={"g": "10"},
                                                options={"movflags": "frag_keyframe+empty_moov"}),
]
SHARED_DAMAGED = SHARED_VIDEOS.parent / "damaged"


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("fuzz_sources")
    made = {shape.name: write_shape(folder, shape, seed=i).read_bytes()
            for i, shape in enumerate(SOURCES) if available(shape)}
    assert {"h264.mp4", "xvid.avi", "vp9.webm", "flv1.flv"} <= set(made)
    return made


def run_fuzz(folder: Path, sources: dict[str, bytes], seeds: range) -> list[dict]:
    """Write each source's mutations for `seeds` (every kind of MUTATIONS in turn) into `folder`,
    decode them all in one runner process, and return its lines."""
    names, paths = sorted(sources), []
    for n, name in enumerate(names):
        for seed in seeds:
            kind = MUTATIONS[(seed + n) % len(MUTATIONS)]
            path = folder / f"{seed:03d}_{kind}_{name}"
            path.write_bytes(mutate(sources[name], sources[names[(n + 1) % len(names)]], kind, seed))
            paths.append(str(path))
    run = subprocess.run([sys.executable, "-c", RUNNER, *paths], capture_output=True, text=True, timeout=1200)
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    done = {line["path"] for line in lines}
    assert run.returncode == 0 and len(lines) == len(paths), (
        f"runner ended with status {run.returncode} at {next((p for p in paths if p not in done), None)}: "
        f"{run.stderr[-3000:]}")
    return lines


def assert_every_end_has_a_reason(lines: list[dict]) -> None:
    unexpected = [f"{Path(line['path']).name} {name}: {end}" for line in lines for name, end in line.items()
                  if name != "path" and not end.startswith(("ok:", "failed:"))]
    unexpected += [f"{Path(line['path']).name} {name}: {end}" for line in lines for name, end in line.items()
                   if name != "path" and "unexpected" in end]
    ends = [end.split(":")[0] for line in lines for name, end in line.items() if name != "path"]
    print(f"{len(lines)} damaged files, both readers: {ends.count('ok')} ends ok or repaired, "
          f"{ends.count('failed')} failures with a reason")
    assert not unexpected, "\n".join(unexpected)


def test_seeded_mutations_end_with_a_reason(sources, tmp_path):
    lines = run_fuzz(tmp_path, sources, range(16))
    assert_every_end_has_a_reason(lines)
    # the fuzzing does reach the readers' failure paths, on both readers
    for reader in (DecordReader, PyAVReader):
        assert sum(line[reader.name].startswith("failed:") for line in lines) >= 10


@pytest.mark.slow
def test_many_seeded_mutations_end_with_a_reason(sources, tmp_path):
    """The issue's scale: about 400 mutated files (12 of 400 found the bugs)."""
    assert_every_end_has_a_reason(run_fuzz(tmp_path, sources, range(16, 48)))


@pytest.mark.parametrize("name, reason", [
    ("vp9_damaged_header.webm", "has no frames"),       # was AttributeError: no attribute 'info'
    ("flv1_damaged.flv", None),                          # was IndexError: list index out of range
    ("h264_damaged.mp4", "codec is unknown to FFmpeg"),  # was AttributeError: 'NoneType' ... 'name'
])
def test_the_shared_damaged_files_end_with_a_reason(name, reason):
    path = SHARED_DAMAGED / name
    if not path.is_file():
        pytest.skip(f"damaged sample {path} is absent (shared/damaged, beside C3D_SHARED_VIDEOS)")
    for reader in (DecordReader, PyAVReader):
        end = list(decode_frames(VideoJob(name, str(path)), RES3D_DECODER, readers=[reader]))[-1]
        if isinstance(end, End):  # decoded: FFmpeg said enough to make it repaired, or nothing
            assert reader is DecordReader or end.facts["status"] != "ok", end.facts
        else:
            assert "unexpected" not in end.error and end.error.startswith(reader.name), end.error
            if reason and reader is PyAVReader:
                assert reason in end.error, end.error
