"""Fetching weights from a real HTTP server on 127.0.0.1 started by the test: success, resume after a
dropped connection, checksum mismatch, server error, no network; first use from c3d-extract; the
mean cube end to end."""

import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from c3d_extract.cli.extract import main as extract_main
from c3d_extract.models.registry import c3d
from c3d_extract.models.net import init_random
from c3d_extract.cli.weights import main as weights_main
from tests import checkpoints as ck
from tests.helpers import recompute, rows


class Server:
    """Serves files with Range support; modes per path: ok, drop-once (half a body, then close), 500."""

    def __init__(self):
        self.files, self.modes, self.requests = {}, {}, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                mode = server.modes.get(self.path, "ok")
                if self.path not in server.files or mode == "500":
                    self.send_error(404 if self.path not in server.files else 500)
                    return
                data = server.files[self.path]
                start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
                if start >= len(data):
                    self.send_response(416)
                    self.end_headers()
                    return
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(data) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                body = data[start:]
                if mode == "drop-once":
                    server.modes[self.path] = "ok"
                    body = body[: len(body) // 2]
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def res3d_model_bytes():
    return ck.res3d_caffemodel_v11(ck.res3d_raw(seed=7))


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def use_manifest(monkeypatch, tmp_path, entries):
    """Point the package at a manifest of the test's own and an empty cache directory."""
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(entries))
    monkeypatch.setenv("C3D_EXTRACT_MANIFEST", str(path))
    monkeypatch.setenv("C3D_EXTRACT_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "weights"


def entry(url, data=None, spec="res3d-sports1m", fmt="caffemodel-v1.1", file="model.caffemodel", **extra):
    return {"file": file, "urls": [url], "size": len(data) if data is not None else None,
            "sha256": hashlib.sha256(data).hexdigest() if data is not None else None, "format": fmt,
            "licence": "test", "spec": spec, "layers": [], **extra}


def weights(*args):
    return CliRunner().invoke(weights_main, [str(a) for a in args])


def test_fetch_checks_converts_installs_and_lists(server, monkeypatch, tmp_path, res3d_model_bytes):
    server.files["/model.caffemodel"] = res3d_model_bytes
    cache = use_manifest(monkeypatch, tmp_path, {"res3d-sports1m": entry(server.url + "/model.caffemodel", res3d_model_bytes)})
    result = weights("fetch", "res3d-sports1m", "-q")
    assert result.exit_code == 0, result.output
    installed = cache / "res3d-sports1m.pt"
    record = json.loads((cache / "res3d-sports1m.json").read_text())
    assert installed.is_file() and record["source_sha256"] == hashlib.sha256(res3d_model_bytes).hexdigest()
    assert record["installed_sha256"] == hashlib.sha256(installed.read_bytes()).hexdigest()
    assert not list((cache / "downloads").iterdir())  # no partial or original left behind
    assert str(installed) in weights("list").output


def test_a_dropped_connection_resumes_with_range(server, monkeypatch, tmp_path, res3d_model_bytes):
    server.files["/model.caffemodel"] = res3d_model_bytes
    server.modes["/model.caffemodel"] = "drop-once"
    cache = use_manifest(monkeypatch, tmp_path, {"res3d-sports1m": entry(server.url + "/model.caffemodel", res3d_model_bytes)})
    result = weights("fetch", "res3d-sports1m", "-q")
    assert result.exit_code == 0, result.output
    ranges = [r for _, r in server.requests]
    assert ranges[0] is None and ranges[1] == f"bytes={len(res3d_model_bytes) // 2}-"
    assert (cache / "res3d-sports1m.pt").is_file()


def test_checksum_mismatch_removes_the_download(server, monkeypatch, tmp_path, res3d_model_bytes):
    server.files["/model.caffemodel"] = res3d_model_bytes
    bad = entry(server.url + "/model.caffemodel", res3d_model_bytes)
    bad["sha256"] = "0" * 64
    cache = use_manifest(monkeypatch, tmp_path, {"res3d-sports1m": bad})
    result = weights("fetch", "res3d-sports1m", "-q")
    assert result.exit_code == 1 and "does not match" in result.output and "refused, the download was deleted" in result.output
    assert not list((cache / "downloads").iterdir()) and not (cache / "res3d-sports1m.pt").exists()


def test_server_error_and_no_network_say_what_to_do(server, monkeypatch, tmp_path):
    server.files["/model.caffemodel"] = b"x"
    server.modes["/model.caffemodel"] = "500"
    use_manifest(monkeypatch, tmp_path, {"res3d-sports1m": entry(server.url + "/model.caffemodel")})
    result = weights("fetch", "res3d-sports1m", "-q")
    assert result.exit_code == 1 and "HTTP 500" in result.output
    offline = f"http://127.0.0.1:{closed_port()}/model.caffemodel"
    use_manifest(monkeypatch, tmp_path, {"res3d-sports1m": entry(offline)})
    result = weights("fetch", "res3d-sports1m", "-q")
    assert result.exit_code == 1 and "cannot connect" in result.output
    assert "c3d-weights convert FILE" in result.output and "res3d-sports1m.pt" in result.output
    assert weights("fetch", "i3d").exit_code == 2


@pytest.mark.slow
def test_extract_fetches_published_weights_on_first_use(server, monkeypatch, tmp_path, video_dir, res3d_model_bytes):
    server.files["/model.caffemodel"] = res3d_model_bytes
    use_manifest(monkeypatch, tmp_path, {"res3d-sports1m": entry(server.url + "/model.caffemodel", res3d_model_bytes)})
    args = [str(video_dir), str(tmp_path / "out.h5"), "--model", "res3d", "--layers", "pool5", "-q"]
    result = CliRunner().invoke(extract_main, args)
    assert result.exit_code == 0, result.stderr
    assert "fetching it once" in result.stderr and len(server.requests) == 1
    with h5py.File(tmp_path / "out.h5") as f:
        assert f.attrs["weights_sha256"] == hashlib.sha256(res3d_model_bytes).hexdigest()
        assert f.attrs["spec"] == "res3d-sports1m" and f["videos"].shape == (3,)
    result = CliRunner().invoke(extract_main, args[:1] + [str(tmp_path / "again.h5")] + args[2:])
    assert result.exit_code == 0 and len(server.requests) == 1  # installed: no second download


def test_extract_offline_without_weights_exits_2_with_the_command(monkeypatch, tmp_path, video_dir):
    use_manifest(monkeypatch, tmp_path, {"c3d-sports1m": entry(f"http://127.0.0.1:{closed_port()}/c3d",
                                                               spec="c3d-sports1m", fmt="caffemodel-v1.0")})
    result = CliRunner().invoke(extract_main, [str(video_dir), str(tmp_path / "o.h5"), "-q"])
    assert result.exit_code == 2 and "cannot download c3d-sports1m" in result.stderr
    assert "c3d-weights convert FILE" in result.stderr and not (tmp_path / "o.h5").exists()


@pytest.mark.slow
def test_mean_cube_changes_fc6_exactly_as_subtracting_it_by_hand(server, monkeypatch, tmp_path, video_dir):
    cube = np.random.default_rng(8).uniform(60, 140, (1, 3, 16, 128, 171)).astype(np.float32)
    blob = ck.blob_v10(cube)
    server.files["/mean.binaryproto"] = blob
    use_manifest(monkeypatch, tmp_path, {
        "c3d-sports1m": entry(f"http://127.0.0.1:{closed_port()}/c3d", spec="c3d-sports1m", fmt="caffemodel-v1.0",
                              mean="c3d-sports1m-mean"),
        "c3d-sports1m-mean": entry(server.url + "/mean.binaryproto", blob, spec="c3d-sports1m", fmt="binaryproto",
                                   file="sport1m_train16_128_mean.binaryproto")})
    assert weights("fetch", "c3d-sports1m-mean", "-q").exit_code == 0
    net = c3d()
    init_random(net, 9)
    one = tmp_path / "one"
    one.mkdir()
    (one / "h264.mp4").symlink_to(video_dir / "h264.mp4")
    base = [str(one), "--weights", "random", "--seed", "9", "--precision", "fp32", "-q"]
    # the installed cube is used by default for C3D ...
    assert CliRunner().invoke(extract_main, [base[0], str(tmp_path / "auto.h5"), *base[1:]]).exit_code == 0
    # ... and a cube file can be given with --mean
    (tmp_path / "cube.binaryproto").write_bytes(blob)
    result = CliRunner().invoke(extract_main, [base[0], str(tmp_path / "given.h5"), *base[1:], "--mean",
                                               str(tmp_path / "cube.binaryproto")])
    assert result.exit_code == 0, result.stderr
    expected = recompute(video_dir / "h264.mp4", net.eval(), ["fc6"], cube[0], 1)["fc6"]
    for name in ("auto.h5", "given.h5"):
        np.testing.assert_allclose(rows(tmp_path / name, "fc6")["h264.mp4"], expected, atol=1e-5)
        with h5py.File(tmp_path / name) as f:
            assert f.attrs["mean"].startswith("mean cube (3, 16, 128, 171)")
    per_channel = recompute(video_dir / "h264.mp4", net.eval(), ["fc6"], (90.2516, 97.6570, 101.4083), 1)["fc6"]
    assert np.abs(per_channel - expected).max() > 1e-3  # the cube really changed the features
