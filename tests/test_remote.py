"""Inputs where large collections live: s3:// prefixes on a real S3 server (SeaweedFS, started here),
http(s):// URLs from a real HTTP server, and tar shards in video2dataset's layout, local and in the
store. Every way of reading the same videos must write the same file, bit for bit, with the same keys.
"""

import importlib.util
import io
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time

import h5py
import numpy as np
import pytest

from c3d_extract.extraction.inputs import expand_braces
from c3d_extract.extraction.remote import redact, redact_argv, scrub
from c3d_extract.featurefile.journal_format import journal_path, pending
from tests.helpers import assert_same_file, run
from bench.support.remote_servers import KEY, SECRET, HTTPServer, S3Server, free_port
from bench.support.videos import moving_frames, write_video

pytest.importorskip("s3fs", reason="s3fs is not installed (pip install 'c3d_extract[s3]'; the test extra has it)")

ARGS = ["--model", "res3d", "--layers", "pool5", "--weights", "random", "--seed", "5", "--precision", "fp32",
        "--batch-size", "2", "--workers", "2", "-q"]
VIDEOS = {"00000/a.mp4": 17, "00000/b.mp4": 30, "00001/c.mp4": 20}  # key -> frames


def make_shard(path, members: dict) -> None:
    """A tar like video2dataset's: each video beside its .json and .txt (name -> bytes)."""
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """videos/ (two folders), shards/ (the same videos as 00000.tar and 00001.tar, with metadata
    members) and the local engine's file of videos/."""
    base = tmp_path_factory.mktemp("remote")
    for key, frames in VIDEOS.items():
        (base / "videos" / key).parent.mkdir(parents=True, exist_ok=True)
        write_video(base / "videos" / key, moving_frames(frames, 72, 96, seed=frames))
    (base / "shards").mkdir()
    for shard in ("00000", "00001"):
        members = {}
        for key in VIDEOS:
            if key.startswith(shard):
                name = key.split("/")[1]
                stem = name.split(".")[0]
                members[f"{stem}.json"] = b'{"caption": "a moving square"}'
                members[name] = (base / "videos" / key).read_bytes()
                members[f"{stem}.txt"] = b"a moving square"
        make_shard(base / "shards" / f"{shard}.tar", members)
    result = run(base / "videos", base / "local.h5", *ARGS)
    assert result.exit_code == 0, result.output
    return base


@pytest.fixture(scope="module")
def s3(corpus, tmp_path_factory):
    """A SeaweedFS S3 gateway holding the corpus in bucket `media` (videos/ and shards/)."""
    server = S3Server(tmp_path_factory.mktemp("weed")).start()
    fs = server.filesystem()
    fs.mkdir("media")
    fs.put(str(corpus / "videos"), "media/videos", recursive=True)
    fs.put(str(corpus / "shards"), "media/shards", recursive=True)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def web(corpus):
    server = HTTPServer(corpus)
    yield server
    server.stop()


def s3_run(server, *args, env=None):
    return run(*args, env={**server.env(), **(env or {})})


def written(path) -> dict:
    with h5py.File(path, "r") as f:
        keys = list(f["videos"].asstr()[:])
        failed = {k: (s, e) for k, s, e in zip(*(f["failures"][n].asstr()[:] for n in ("video", "stage", "error")))}
    return {"keys": keys, "failed": failed}


def test_url_helpers_hide_credentials_and_expand_shard_ranges():
    assert redact("https://user:pw@host:8/a/b.mp4?X-Amz-Signature=abc#t") == "https://host:8/a/b.mp4"
    assert redact("videos/a.mp4") == "videos/a.mp4"
    assert scrub("GET https://h/v.mp4?sig=abc failed: 403") == "GET https://h/v.mp4 failed: 403"
    assert redact_argv(["c3d-extract", "s3://b/p", "--storage-options", '{"secret": "x"}', "https://u:p@h/v?s=1"]) \
        == ["c3d-extract", "s3://b/p", "--storage-options", "<hidden>", "https://h/v"]
    assert expand_braces("s3://b/{00008..00010}.tar") == ["s3://b/00008.tar", "s3://b/00009.tar", "s3://b/00010.tar"]
    assert expand_braces("{1..2}/{a..b}") == ["1/{a..b}", "2/{a..b}"]


@pytest.mark.slow
def test_s3_http_and_tar_shards_write_the_local_folders_file(corpus, s3, web):
    # an S3 prefix; credentials and endpoint from the usual AWS_* variables
    assert s3_run(s3, "s3://media/videos/", corpus / "s3.h5", *ARGS).exit_code == 0
    assert_same_file(corpus / "s3.h5", corpus / "local.h5")
    # http(s) URLs in a list file, keyed relative to --root like paths
    (corpus / "urls.txt").write_text("".join(f"{web.url}/videos/{key}\n" for key in VIDEOS))
    result = run(f"@{corpus / 'urls.txt'}", corpus / "http.h5", "--root", f"{web.url}/videos", *ARGS)
    assert result.exit_code == 0, result.output
    assert_same_file(corpus / "http.h5", corpus / "local.h5")
    # tar shards: a local folder of them, and a brace range in the store (endpoint as a storage option)
    assert run(corpus / "shards", corpus / "tar.h5", *ARGS).exit_code == 0
    assert_same_file(corpus / "tar.h5", corpus / "local.h5")
    options = f'{{"endpoint_url": "{s3.endpoint}", "key": "{KEY}", "secret": "{SECRET}"}}'
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}  # the options alone
    done = subprocess.run([sys.executable, "-m", "c3d_extract", "s3://media/shards/{00000..00001}.tar",
                           str(corpus / "s3tar.h5"), "--storage-options", options, *ARGS],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert_same_file(corpus / "s3tar.h5", corpus / "local.h5")
    assert written(corpus / "s3tar.h5")["keys"] == sorted(VIDEOS)
    # no credential anywhere in the file: the command line is recorded with the options hidden
    assert SECRET.encode() not in (corpus / "s3tar.h5").read_bytes()
    with h5py.File(corpus / "s3tar.h5", "r") as f:
        assert "--storage-options '<hidden>'" in f.attrs["command_line"]


@pytest.mark.slow
def test_missing_truncated_and_secret_bearing_urls_fail_alone_and_leak_nothing(corpus, s3, web, tmp_path):
    fs = s3.filesystem()
    fs.pipe("media/bad/short.mp4", (corpus / "videos/00000/b.mp4").read_bytes()[:3000])  # a truncated object
    fs.put(str(corpus / "videos/00001/c.mp4"), "media/bad/good.mp4")
    lines = [f"s3://media/bad/{name}" for name in ("good.mp4", "short.mp4", "missing.mp4")]
    lines.append(f"http://user:{SECRET}@{web.url[7:]}/videos/none.mp4?X-Amz-Signature={SECRET}")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.h5"
    result = s3_run(s3, f"@{tmp_path / 'list.txt'}", out, *ARGS[:-1], "--root", "s3://media/bad")
    assert result.exit_code == 1, result.output
    failed = written(out)["failed"]
    assert set(failed) == {"short.mp4", "missing.mp4", "none.mp4"}, failed
    assert failed["missing.mp4"][0] == "fetch" and "no such object" in failed["missing.mp4"][1]
    assert "s3://media/bad/missing.mp4" in failed["missing.mp4"][1]
    assert failed["short.mp4"][0] in ("open", "decode")
    assert failed["none.mp4"][0] == "fetch" and f"{web.url}/videos/none.mp4" in failed["none.mp4"][1]
    assert written(out)["keys"] == ["good.mp4"]
    assert SECRET not in result.stderr and SECRET.encode() not in out.read_bytes()
    for line in result.stderr.strip().splitlines():  # one line per failed video, naming it
        assert line.startswith("c3d-extract: ")


@pytest.mark.slow
def test_wrong_credentials_unknown_bucket_and_dead_endpoint_stop_at_once(corpus, s3, tmp_path):
    cases = [({"AWS_ACCESS_KEY_ID": "nobody", "AWS_SECRET_ACCESS_KEY": "wrong-" + SECRET}, "s3://media/videos/",
              "access denied"),
             ({}, "s3://no-such-bucket/videos/", "bucket does not exist"),
             ({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}, "s3://media/videos/", "cannot list")]
    for env, url, words in cases:
        started = time.time()
        result = s3_run(s3, url, tmp_path / "x.h5", *ARGS, env=env)
        assert result.exit_code == 4, result.output
        lines = [line for line in result.stderr.strip().splitlines() if "random weights" not in line]
        assert len(lines) == 1 and words in lines[0].lower() and url.rstrip("/") in lines[0], lines
        assert "wrong-" + SECRET not in result.stderr
        assert not (tmp_path / "x.h5").exists()  # nothing started, nothing written
        assert time.time() - started < 200  # no minutes of retries (a loaded machine takes seconds)


def test_a_protocol_whose_filesystem_is_missing_names_the_install(tmp_path):
    pytest.importorskip("fsspec")
    if importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed here: the message for a missing one cannot be shown")
    result = run("gs://bucket/videos/", tmp_path / "x.h5", *ARGS)
    assert result.exit_code == 2
    assert "pip install 'c3d_extract[gcs]'" in result.stderr and "gs://bucket/videos" in result.stderr


class StallingServer:
    """An HTTP server that sends a video's headers and first bytes, then nothing, forever."""

    def __init__(self, data: bytes):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/stall.mp4"
        self.data, self.held = data, []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            conn.recv(65536)
            head = (f"HTTP/1.1 200 OK\r\nContent-Length: {len(self.data)}\r\nContent-Type: video/mp4\r\n"
                    f"Accept-Ranges: none\r\n\r\n").encode()
            conn.sendall(head + self.data[:1000])

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.mark.slow
def test_a_stalled_download_is_abandoned_after_the_timeout(corpus, web, tmp_path):
    stall = StallingServer((corpus / "videos/00000/a.mp4").read_bytes())
    try:
        (tmp_path / "list.txt").write_text(f"{stall.url}\n{web.url}/videos/00001/c.mp4\n")
        result = run(f"@{tmp_path / 'list.txt'}", tmp_path / "out.h5", *ARGS, "--timeout", "10")
        assert result.exit_code == 1, result.output
        failed = written(tmp_path / "out.h5")
        assert failed["keys"] == ["c.mp4"] and set(failed["failed"]) == {"stall.mp4"}
        assert "no progress for 10 s" in failed["failed"]["stall.mp4"][1]  # --timeout honoured (default 300 s)
    finally:
        stall.close()


@pytest.mark.slow
def test_shards_skip_other_members_keep_going_after_a_damaged_one_and_resume(corpus, tmp_path):
    videos = corpus / "videos"
    shards = tmp_path / "shards"
    shards.mkdir()
    a, b = (videos / "00000/a.mp4").read_bytes(), (videos / "00000/b.mp4").read_bytes()
    make_shard(shards / "00000.tar", {"a.json": b"{}", "a.mp4": a, "bad.mp4": b"\0" * 5000 + b[:4000],
                                      "b.mp4": b, "notes.txt": b"x"})
    out = tmp_path / "out.h5"
    result = run(shards, out, *ARGS)
    assert result.exit_code == 1, result.output
    state = written(out)
    assert state["keys"] == ["00000/a.mp4", "00000/b.mp4"] and list(state["failed"]) == ["00000/bad.mp4"]
    assert "00000/bad.mp4" in result.stderr
    # a new member in the shard: the same command decodes it alone (written and failed ones passed over)
    c = (videos / "00001/c.mp4").read_bytes()
    make_shard(shards / "00000.tar", {"a.mp4": a, "bad.mp4": b"\0" * 5000, "b.mp4": b, "c.mp4": c})
    before = {k: v for k, v in zip(*_rows(out))}
    result = run(shards, out, *ARGS[:-1])
    assert "3 video(s) already done, 1 failed before" not in result.stderr  # (the shard's members are found once read)
    assert "wrote 1 video(s)" in result.stderr, result.stderr
    after = dict(zip(*_rows(out)))
    assert set(after) == {"00000/a.mp4", "00000/b.mp4", "00000/c.mp4"}
    for key, row in before.items():
        np.testing.assert_array_equal(after[key], row)


def _rows(path):
    with h5py.File(path, "r") as f:
        return list(f["videos"].asstr()[:]), list(f["features/pool5"][()])


@pytest.mark.slow
def test_a_truncated_shard_keeps_its_first_members_and_a_rerun_completes_it(corpus, tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    whole = (corpus / "shards/00000.tar").read_bytes()
    a_end = whole.index((corpus / "videos/00000/a.mp4").read_bytes()) + len((corpus / "videos/00000/a.mp4").read_bytes())
    (shards / "00000.tar").write_bytes(whole[:a_end + 2000])  # cut inside the next members
    out = tmp_path / "out.h5"
    result = run(shards, out, *ARGS)
    assert result.exit_code == 1, result.output
    state = written(out)
    assert state["keys"] == ["00000/a.mp4"]
    assert list(state["failed"]) == ["00000.tar"] and "truncated" in state["failed"]["00000.tar"][1]
    # the whole shard back: the same command reads it again, adds b.mp4 and forgets the shard's failure
    (shards / "00000.tar").write_bytes(whole)
    (shards / "00001.tar").write_bytes((corpus / "shards/00001.tar").read_bytes())
    assert run(shards, out, *ARGS).exit_code == 0
    assert_same_file(out, corpus / "local.h5")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_store_dying_mid_run_then_the_same_command_completes_the_file(corpus, tmp_path):
    """SIGKILL of the S3 server while videos are being fetched: the run ends with the videos in flight
    and after recorded as failed (stage fetch), nothing written lost; the same command once the
    store is back fetches those again and the file equals a clean run's."""
    server = S3Server(tmp_path / "weed").start()
    try:
        fs = server.filesystem()
        fs.mkdir("media")
        names = []
        for i in range(8):
            name = f"v{i}.mp4"
            write_video(tmp_path / name, moving_frames(17 + 8 * (i % 3), 72, 96, seed=i))
            fs.put(str(tmp_path / name), f"media/many/{name}")
            names.append(name)
        clean = tmp_path / "clean.h5"
        assert s3_run(server, "s3://media/many/", clean, *ARGS).exit_code == 0
        out = tmp_path / "out.h5"
        command = [sys.executable, "-m", "c3d_extract", "s3://media/many/", str(out), *ARGS[:-3], "--workers", "1"]
        process = subprocess.Popen(command, env={**os.environ, **server.env()}, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 180
        while (pending(str(out)) or 0) < 2:  # two videos written: mid-run
            assert process.poll() is None, process.communicate()
            assert time.time() < deadline
            time.sleep(0.05)
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 1, stderr
        state = written(out)
        assert len(state["keys"]) >= 2 and state["failed"]
        assert set(state["keys"]) | set(state["failed"]) == set(names)
        assert all(stage == "fetch" for stage, _ in state["failed"].values()), state["failed"]
        assert not os.path.exists(journal_path(str(out)))
        server.start()  # the same ports and data folder
        result = s3_run(server, "s3://media/many/", out, *ARGS)
        assert result.exit_code == 0, result.output
        assert_same_file(out, clean)
    finally:
        server.stop()


@pytest.mark.slow
def test_no_credential_in_the_journal_of_a_killed_run(corpus, s3, web, tmp_path):
    """The journal is what a killed run leaves: it holds no key, secret or signature either."""
    (tmp_path / "list.txt").write_text(
        f"http://user:{SECRET}@{web.url[7:]}/videos/none.mp4?X-Amz-Signature={SECRET}\n"
        + "".join(f"s3://media/videos/{key}\n" for key in VIDEOS))
    options = f'{{"endpoint_url": "{s3.endpoint}", "key": "{KEY}", "secret": "{SECRET}"}}'
    out = tmp_path / "out.h5"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    process = subprocess.Popen([sys.executable, "-m", "c3d_extract", f"@{tmp_path / 'list.txt'}", str(out),
                                "--storage-options", options, *ARGS[:-3], "--workers", "1"],
                               env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while (pending(str(out)) or 0) < 2:  # the failure and a video are in the journal
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline
        time.sleep(0.05)
    process.kill()
    _, stderr = process.communicate()
    journal = open(journal_path(str(out)), "rb").read()
    assert b"none.mp4" in journal and SECRET.encode() not in journal and KEY.encode() not in journal
    assert SECRET not in stderr
