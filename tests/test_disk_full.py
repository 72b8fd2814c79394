"""A full or failing disk: one line, exit status 3, no temporary file, nothing finished lost.

Faults are real, injected without root: RLIMIT_FSIZE (`ulimit -f`: a write past the limit fails
with EFBIG, Python ignores SIGXFSZ) and, where user namespaces allow it, a small tmpfs (ENOSPC).
Limits are measured from clean outputs in the test itself, so each lands where it is meant to.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from c3d_extract.featurefile.journal_format import HEADER, journal_path
from c3d_extract.models.registry import SPECS
from c3d_extract.storage import EXIT_CODE
from c3d_extract.featurefile.merge import merge
from c3d_extract.featurefile.writer import FeatureStore
from tests.helpers import FACTS, SETTINGS, SHAPES, assert_same_file, make_store as make
from bench.support.videos import moving_frames, write_video

ARGS = ["--model", "res3d", "--layers", "res5b,pool5", "--weights", "random", "--precision", "fp32",
        "--device", "cpu", "--workers", "1", "--batch-size", "2", "-q"]
RANDOM_WARNING = "random weights"


def run(args: list[str], limit: int | None = None, module: str = "c3d_extract", cwd: Path | None = None,
        wrap: list[str] | None = None) -> subprocess.CompletedProcess:
    """A real command in a subprocess, with every file it writes limited to `limit` bytes."""
    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([*(wrap or []), sys.executable, "-m", module, *map(str, args)], capture_output=True,
                          text=True, timeout=600, cwd=cwd, preexec_fn=limited if limit else None)


def the_error_line(result: subprocess.CompletedProcess, names: str) -> str:
    """Exit status 3, no traceback, and exactly one error line (besides the random-weights warning)
    that names the file, the reason and what to do."""
    assert result.returncode == EXIT_CODE, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if RANDOM_WARNING not in line and line.strip()]
    assert len(lines) == 1, result.stderr
    assert names in lines[0] and "(EFBIG)" in lines[0] and "run the same command again" in lines[0], lines[0]
    return lines[0]


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp-" in p.name or p.name.endswith(".part"))


def record_bytes(h5_path: Path) -> int:
    """The float32 bytes a video's journal record holds, from a clean output's layers."""
    with h5py.File(h5_path, "r") as f:
        return 4 * sum(int(f["features"][n].shape[1]) for n in f["features"])


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("videos")
    for i in range(4):
        write_video(folder / f"v{i}.mp4", moving_frames(17 + 3 * i, 48, 64, seed=i))
    return folder


@pytest.fixture(scope="module")
def reference(videos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "ref.h5"
    result = run([videos, out, *ARGS])
    assert result.returncode == 0, result.stderr
    return out


def test_the_size_estimate_is_an_upper_bound(reference, tmp_path):
    """The fold's reservation (file_bytes) is at least the real file's size, and close to it."""
    from c3d_extract.featurefile.fold import H5Rows, _reserve_for

    with h5py.File(reference, "r") as f:
        source = H5Rows(f)
        estimate = _reserve_for([(k, source, i) for i, k in enumerate(source.keys)], [], source.shapes,
                                json.loads(f.attrs["settings"]))
    actual = os.path.getsize(reference)
    assert actual <= estimate <= 1.05 * actual + 2**17


@pytest.mark.slow
def test_a_full_disk_in_a_journal_append_keeps_the_finished_videos(videos, reference, tmp_path):
    out = tmp_path / "out.h5"
    limit = int(2.5 * record_bytes(reference))  # two records fit in the journal, the third does not
    line = the_error_line(run([videos, out, *ARGS], limit), f"{out}.journal: cannot write")
    assert "2 finished video(s) are saved in" in line and f"({out} is unchanged)" in line
    assert temp_files(tmp_path) == []
    with h5py.File(out, "r") as f:  # the file the run created, whole (and empty)
        assert f["videos"].shape == (0,)
    assert os.path.getsize(journal_path(str(out))) < limit  # no torn record past the last whole one
    result = run([videos, out, *ARGS])
    assert result.returncode == 0, result.stderr
    assert_same_file(out, reference)
    assert not os.path.exists(journal_path(str(out)))


@pytest.mark.slow
def test_a_full_disk_in_the_fold_then_a_damaged_journal(videos, reference, tmp_path):
    out = tmp_path / "out.h5"
    journal = Path(journal_path(str(out)))
    whole = os.path.getsize(reference)
    # the journal of 4 videos fits, the new file does not: found when its space is reserved
    limit = (4 * (record_bytes(reference) + 1024) + whole) // 2
    assert 4 * record_bytes(reference) < limit < whole
    line = the_error_line(run([videos, out, *ARGS], limit), f"{out}.tmp-")
    assert f"4 finished video(s) are saved in {journal} ({out} is unchanged)" in line
    assert temp_files(tmp_path) == []
    # the last byte of the file: nothing to decode, the fold alone fails again, as cleanly
    line = the_error_line(run([videos, out, *ARGS], whole - 1), f"{out}.tmp-")
    assert "4 finished video(s) are saved in" in line and temp_files(tmp_path) == []

    # a temporary file of a fold killed by SIGKILL (its process is gone) is removed, not read
    gone = subprocess.Popen(["true"])
    gone.wait()
    (tmp_path / f"out.h5.tmp-{gone.pid}").write_bytes(b"half a fold")
    # one flipped byte in the second record: reported, skipped, that video computed again
    data = bytearray(journal.read_bytes())
    first = HEADER.unpack_from(data, 0)
    second_at = HEADER.size + first[3]
    data[second_at + HEADER.size + first[3] // 2] ^= 0xFF
    journal.write_bytes(bytes(data))
    result = run([videos, out, *ARGS])
    assert result.returncode == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if "damaged" in line]
    assert len(warning) == 1 and f"1 damaged record(s) at byte {second_at:,}" in warning[0], result.stderr
    assert "1 video(s) will be processed again" in warning[0] and "3 intact record(s) kept" in warning[0]
    assert_same_file(out, reference)
    assert temp_files(tmp_path) == [] and not journal.exists()


def test_hdf5_write_failures_without_a_reservation_close_cleanly(reference, tmp_path):
    """The crash itself: HDF5 fails mid-fold at several sizes; no segfault, the error, no file."""
    whole = os.path.getsize(reference)
    script = textwrap.dedent(f"""
        import json, os, resource
        import h5py
        from c3d_extract.featurefile.fold import H5Rows, write_sorted
        with h5py.File({str(reference)!r}, "r") as f:
            source = H5Rows(f)
            order = [(k, source, i) for i, k in enumerate(source.keys)]
            for limit in {[1000, whole // 10, whole // 2, whole - 4096, whole - 1]}:
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
                try:
                    write_sorted("fold.tmp-1", dict(f.attrs), source.shapes, order, [], reserve=False)
                except OSError as exc:
                    print(limit, exc.errno, os.path.exists("fold.tmp-1"))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                            timeout=600, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert result.returncode == 0, result.stderr  # it was 139 (SIGSEGV) before
    assert "Exception ignored" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    lines = result.stdout.split("\n")[:-1]
    assert len(lines) == 5 and all(line.endswith(" 27 False") for line in lines), result.stdout  # EFBIG
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_a_really_full_disk_warns_before_and_stops_cleanly(videos, reference, tmp_path):
    """ENOSPC on a 1.5 MB tmpfs (a user namespace: no root): the journal fits, the new file not."""
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("user namespaces are not allowed here: no small file system to fill")
    disk = tmp_path / "disk"
    disk.mkdir()
    command = (f"mount -t tmpfs -o size=1536k none {disk} && {sys.executable} -m c3d_extract {videos} "
               f"{disk}/out.h5 {' '.join(ARGS)}; status=$?; cp -a {disk}/. {tmp_path}/saved/; exit $status")
    (tmp_path / "saved").mkdir()
    result = subprocess.run(["unshare", "-rm", "sh", "-c", command], capture_output=True, text=True, timeout=600)
    assert result.returncode == EXIT_CODE, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if RANDOM_WARNING not in line]
    assert len(lines) == 2 and "warning:" in lines[0] and "4 video(s) to do need about" in lines[0], lines
    assert "no space left on device (ENOSPC)" in lines[1] and "4 finished video(s) are saved in" in lines[1]
    saved = tmp_path / "saved"
    assert sorted(os.listdir(saved)) == ["out.h5", "out.h5.journal"]  # no temporary file on the full disk
    result = run([videos, saved / "out.h5", *ARGS])  # a larger disk: the same command
    assert result.returncode == 0, result.stderr
    assert_same_file(saved / "out.h5", reference)


def _part(path: Path, keys: list[str], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    with make(path) as store:
        for key in keys:
            store.add_video(key, {"fc6": rng.random(4096), "pool5": rng.random(8192)}, FACTS)
        store.add_failure(f"bad{seed}.mp4", "decode", "decoding failed in frames 13-24 of 50")
    return path


@pytest.mark.slow
def test_merge_on_a_full_disk(tmp_path):
    parts = [_part(tmp_path / "a.h5", [f"a{i}.mp4" for i in range(40)], 1),
             _part(tmp_path / "b.h5", [f"b{i}.mp4" for i in range(40)], 2)]
    clean = tmp_path / "clean" / "all.h5"
    clean.parent.mkdir()
    merge(str(clean), [str(p) for p in parts])
    out = tmp_path / "all.h5"
    the_error_line(run(["merge", out, *parts], os.path.getsize(clean) // 2), f"{out}.tmp-")
    assert not out.exists() and temp_files(tmp_path) == []
    result = run(["merge", out, *parts])
    assert result.returncode == 0, result.stderr
    assert_same_file(out, clean)


@pytest.mark.slow
def test_weights_convert_on_a_full_disk(tmp_path):
    spec = SPECS["densenet3d-121"]  # the smallest network: 47 MB of weights
    source = tmp_path / "src.pt"
    state = spec.build().state_dict()
    torch.save({"format": "c3d_extract.weights", "spec": spec.name, "state_dict": state}, source)
    dst = tmp_path / "cache" / "w.pt"
    dst.parent.mkdir()
    module = "c3d_extract.cli.weights"
    result = run(["convert", source, dst], os.path.getsize(source) // 2, module)
    assert result.returncode == EXIT_CODE and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1 and "(EFBIG)" in result.stderr and f"{dst}.tmp-" in result.stderr
    assert os.listdir(dst.parent) == []  # no half .pt that a later run could load
    result = run(["convert", source, dst], module=module)
    assert result.returncode == 0, result.stderr
    written = torch.load(dst, weights_only=True)["state_dict"]
    assert written.keys() == state.keys() and all(torch.equal(written[k], state[k]) for k in state)


@pytest.mark.slow
def test_export_on_a_full_disk_leaves_no_half_npy(reference, tmp_path):
    folder = tmp_path / "npy"
    with h5py.File(reference, "r") as f:
        row_bytes = 4 * f["features/res5b"].shape[1]
    the_error_line(run(["export", reference, folder, "--layer", "res5b"], row_bytes // 2), str(folder / "v0.npy"))
    assert [p.name for p in folder.iterdir()] == []
    result = run(["export", reference, folder, "--layer", "res5b"])
    assert result.returncode == 0, result.stderr
    with h5py.File(reference, "r") as f:
        np.testing.assert_array_equal(np.load(folder / "v2.npy"), f["features/res5b"][2])


def test_a_damaged_record_is_skipped_and_named(tmp_path):
    """The store API: three records, the middle one damaged; the two others are kept."""
    path = tmp_path / "f.h5"
    rng = np.random.default_rng(0)
    rows = {k: {"fc6": rng.random(4096), "pool5": rng.random(8192)} for k in ("a.mp4", "b.mp4", "c.mp4")}
    store = make(path)
    sizes = []
    for key, features in rows.items():
        store.add_video(key, features, FACTS)
        sizes.append(os.path.getsize(journal_path(str(path))))
    store._journal.close()  # killed: no fold
    journal = Path(journal_path(str(path)))
    data = bytearray(journal.read_bytes())
    data[sizes[0] + HEADER.size + 200 * 4] ^= 0x01  # one bit of b.mp4's features
    journal.write_bytes(bytes(data))
    heard = []
    with make_warned(path, heard) as store:
        assert store.done == {"a.mp4", "c.mp4"}
        store.add_video("b.mp4", rows["b.mp4"], FACTS)
    assert heard == [f"{journal}: 1 damaged record(s) at byte {sizes[0]:,} (b.mp4): skipped; 1 video(s) will be "
                     f"processed again (2 intact record(s) kept)"]
    clean = tmp_path / "clean.h5"
    with make(clean) as store:
        for key, features in rows.items():
            store.add_video(key, features, FACTS)
    assert_same_file(path, clean)


def make_warned(path: Path, heard: list) -> FeatureStore:
    return FeatureStore.open(str(path), SETTINGS, SHAPES, {"command_line": "test"}, warn=heard.append)
