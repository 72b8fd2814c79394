"""The HDF5 feature file: layout readable by plain h5py, resume, refusal, failures."""

import subprocess
import sys

import h5py
import numpy as np
import pytest

from c3d_extract.featurefile.writer import StoreError, video_record

from tests.helpers import FACTS, SETTINGS, make_store as make


def test_layout_is_plain_hdf5(tmp_path):
    rng = np.random.RandomState(0)
    rows = {key: {"fc6": rng.rand(4096), "pool5": rng.rand(8192)} for key in ["a/x.mp4", "b/x.mp4", "ünï code.avi"]}
    with make(tmp_path / "f.h5") as store:
        for key, feats in rows.items():
            store.add_video(key, feats, FACTS)
        store.add_failure("bad.mp4", "decode", "decoding failed in frames 13-24 of 50")
    with h5py.File(tmp_path / "f.h5", "r") as f:
        keys = [k.decode() for k in f["videos"][:]]
        assert keys == list(rows)
        assert f["features/fc6"].shape == (3, 4096) and f["features/fc6"].dtype == np.float32
        assert f["features/pool5"].shape == (3, 8192)
        assert list(f["features/pool5"].attrs["clip_shape"]) == [512, 1, 4, 4]
        np.testing.assert_array_equal(f["features/fc6"][2], rows["ünï code.avi"]["fc6"].astype(np.float32))
        assert list(f["num_clips"][:]) == [4, 4, 4] and f["status"][0] == b"ok"
        assert f["failures/video"][0] == b"bad.mp4" and f["failures/stage"][0] == b"decode"
        assert f.attrs["model"] == "c3d" and f.attrs["command_line"] == "test"


def test_reopen_with_same_settings_resumes(tmp_path):
    with make(tmp_path / "f.h5") as store:
        store.add_video("a.mp4", {"fc6": np.ones(4096), "pool5": np.ones(8192)}, FACTS)
        store.add_failure("bad.mp4", "open", "empty file (0 bytes)")
    with make(tmp_path / "f.h5") as store:
        assert store.done == {"a.mp4"} and store.failed == {"bad.mp4": ("open", "empty file (0 bytes)")}
        with pytest.raises(ValueError, match="already in"):
            store.add_video("a.mp4", {"fc6": np.ones(4096), "pool5": np.ones(8192)}, FACTS)
        store.add_video("bad.mp4", {"fc6": np.ones(4096), "pool5": np.ones(8192)}, FACTS)  # a retry worked
        assert store.failed == {}
    with h5py.File(tmp_path / "f.h5", "r") as f:
        assert f["videos"].shape == (2,) and f["failures/video"].shape == (0,)


def test_other_settings_are_refused_and_the_file_is_kept(tmp_path):
    with make(tmp_path / "f.h5") as store:
        store.add_video("a.mp4", {"fc6": np.ones(4096), "pool5": np.ones(8192)}, FACTS)
    with pytest.raises(StoreError, match=r"model 'c3d' in the file, 'res3d' now.*--overwrite"):
        make(tmp_path / "f.h5", {**SETTINGS, "model": "res3d"})
    with pytest.raises(StoreError, match=r"layers \['fc6', 'pool5'\] in the file, \['fc6'\] now"):
        make(tmp_path / "f.h5", {**SETTINGS, "layers": ["fc6"]})
    with make(tmp_path / "f.h5") as store:
        assert store.done == {"a.mp4"}
    with make(tmp_path / "f.h5", {**SETTINGS, "model": "res3d"}, overwrite=True) as store:
        assert store.done == set()


def test_foreign_and_broken_files_are_refused(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["data"] = np.arange(3)
    with pytest.raises(StoreError, match="not a c3d_extract feature file"):
        make(tmp_path / "other.h5")
    with h5py.File(tmp_path / "other.h5", "r") as f:
        assert list(f) == ["data"]
    (tmp_path / "notes.h5").write_text("my notes")
    with pytest.raises(StoreError, match="not a readable HDF5 file.*--overwrite"):
        make(tmp_path / "notes.h5")
    assert (tmp_path / "notes.h5").read_text() == "my notes"
    with pytest.raises(StoreError, match="cannot create"):
        make(tmp_path / "no" / "such" / "dir.h5")


def test_a_second_writer_is_refused_until_the_first_is_gone(tmp_path):
    make(tmp_path / "f.h5").close()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                               "from tests.test_store import make\n"
                               "store = make(sys.argv[1]); print('open', flush=True); time.sleep(60)",
                               str(tmp_path / "f.h5")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreError, match="another c3d-extract run is writing this file"):
            make(tmp_path / "f.h5")
    finally:
        holder.kill()
        holder.wait()
    make(tmp_path / "f.h5").close()  # a killed writer leaves no stale lock


def test_a_record_made_apart_is_what_add_video_writes(tmp_path):
    """A Ray forward actor makes a video's whole journal record (writer.video_record) and the driver
    appends it as it is (add_record): the journal bytes, the replay after a kill and the folded rows
    equal add_video's for the same video."""
    rng = np.random.RandomState(3)
    rows = {key: {"fc6": rng.rand(4096).astype(np.float32), "pool5": rng.rand(8192).astype(np.float32)}
            for key in ("a.mp4", "dir/ü b.avi")}
    facts = {**FACTS, "decoder": "pyav 18.1.0"}
    made = {key: video_record(key, feats, facts, ["fc6", "pool5"]) for key, feats in rows.items()}
    direct, apart = make(tmp_path / "direct.h5"), make(tmp_path / "apart.h5")
    for key, feats in rows.items():
        direct.add_video(key, feats, facts)
        apart.add_record(key, made[key])
    assert (tmp_path / "direct.h5.journal").read_bytes() == (tmp_path / "apart.h5.journal").read_bytes()
    apart._journal.close()  # as a kill leaves it: the journal not folded; the next open replays it
    with make(tmp_path / "apart.h5") as store:
        assert store.done == set(rows)
        with pytest.raises(ValueError, match="already in"):
            store.add_record("a.mp4", made["a.mp4"])
        with pytest.raises(ValueError, match="apart.h5.journal: not a whole journal record"):
            store.add_record("c.mp4", made["a.mp4"][:-4])
    direct.close()
    for path in ("direct.h5", "apart.h5"):
        with h5py.File(tmp_path / path, "r") as f:
            assert list(f["videos"].asstr()[:]) == ["a.mp4", "dir/ü b.avi"]
            assert list(f["decoder"].asstr()[:]) == ["pyav 18.1.0"] * 2
            for i, key in enumerate(("a.mp4", "dir/ü b.avi")):
                np.testing.assert_array_equal(f["features/fc6"][i], rows[key]["fc6"])
                np.testing.assert_array_equal(f["features/pool5"][i], rows[key]["pool5"])


def test_a_record_is_refused_by_a_file_that_keeps_clips(tmp_path):
    with make(tmp_path / "clips.h5", {**SETTINGS, "per_clip": True}) as store:
        record = video_record("a.mp4", {"fc6": np.ones(4096), "pool5": np.ones(8192)}, FACTS, ["fc6", "pool5"])
        with pytest.raises(ValueError, match="keeps per-clip rows"):
            store.add_record("a.mp4", record)
        assert not store.done
