"""Where the published weights come from (issue #34): OpenMMLab's C3D checkpoint read as c3d-sports1m,
addresses tried in order with a reason each, checksums (full or prefix) enforced, mirrors over http,
s3 (SeaweedFS), file:// and plain paths, Google Drive's large-file confirmation, and the manual steps
when nothing answers. Every server is a real one on 127.0.0.1 started here."""

import fcntl
import hashlib
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from c3d_extract.cli.extract import main as extract_main
from c3d_extract.cli.weights import main as weights_main
from c3d_extract.errors import UsageError
from c3d_extract.weights.convert import WeightsError, read_checkpoint
from c3d_extract.weights.download import confirmation_url, drive_download_url, shown
from c3d_extract.weights.load import load_weights
from tests import checkpoints as ck
from tests.helpers import rows
from bench.support.remote_servers import HTTPServer, S3Server
from tests.test_download import Server as RangeServer, closed_port

PTH = "c3d_sports1m_pretrain_20201016-xxxxxxxx.pth"  # the test's own file: its digest is not dcc47ddc
CAFFE = "conv3d_deepnetA_sport1m_iter_1900000"
MEAN = "sport1m_train16_128_mean.binaryproto"


@pytest.fixture(scope="module")
def raw():
    return ck.c3d_raw(seed=34)


@pytest.fixture(scope="module")
def caffe_bytes(raw):
    return ck.c3d_caffemodel_v10(raw)


def mmaction2_state(raw, prefix: str = "") -> dict:
    """The same tensors in mmaction2's C3D backbone layout: convNx.conv.weight/bias, fc6, fc7, no fc8
    (mmaction/models/backbones/c3d.py: ConvModule's `conv`, nn.Linear fc6 8192->4096 and fc7)."""
    state = {}
    for name, (w, b) in raw.items():
        if name == "fc8":
            continue
        key = f"{name}.conv" if name.startswith("conv") else name
        state[f"{prefix}{key}.weight"] = torch.from_numpy(w.astype(np.float32))  # Caffe's float32
        state[f"{prefix}{key}.bias"] = torch.from_numpy(b.astype(np.float32))
    return state


def write_pth(path, obj):
    torch.save(obj, path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def pth_bytes(raw, tmp_path_factory):
    """mmaction2's checkpoint as its runner writes it: the model's state dict under `state_dict`,
    `backbone.` in front of every key, and a `meta` of plain values."""
    path = tmp_path_factory.mktemp("pth") / PTH
    return write_pth(path, {"meta": {"mmaction_version": "0.x", "epoch": 45},
                            "state_dict": mmaction2_state(raw, "backbone.")})


def clip(seed=0):
    return torch.from_numpy(np.random.default_rng(seed).uniform(-100, 100, (1, 3, 16, 112, 112)).astype(np.float32))


# 1. reading OpenMMLab's checkpoint ---------------------------------------------------------------


@pytest.mark.slow
def test_an_mmaction2_checkpoint_bare_or_wrapped_holds_the_caffemodels_tensors(raw, caffe_bytes, tmp_path):
    (tmp_path / CAFFE).write_bytes(caffe_bytes)
    caffe = read_checkpoint(str(tmp_path / CAFFE)).state_dict
    for name, obj in (("bare", mmaction2_state(raw)), ("wrapped", {"state_dict": mmaction2_state(raw, "backbone.")}),
                      ("runner", {"meta": {"epoch": 45}, "state_dict": mmaction2_state(raw, "backbone.")})):
        torch.save(obj, tmp_path / f"{name}.pth")
        converted = read_checkpoint(str(tmp_path / f"{name}.pth"))
        assert converted.spec.name == "c3d-sports1m" and converted.source_format == "mmaction2"
        assert sorted(converted.state_dict) == sorted(k for k in caffe if not k.startswith("fc8"))
        assert all(torch.equal(t, caffe[k]) for k, t in converted.state_dict.items())
    # a conversion that kept Caffe's fc8 (mmaction2 would ignore it): all 11 layers, the classifier too
    kept = mmaction2_state(raw)
    kept["fc8.weight"], kept["fc8.bias"] = (torch.from_numpy(a.astype(np.float32)) for a in raw["fc8"])
    torch.save(kept, tmp_path / "kept.pth")
    converted = read_checkpoint(str(tmp_path / "kept.pth")).state_dict
    assert converted.keys() == caffe.keys() and all(torch.equal(t, caffe[k]) for k, t in converted.items())
    loaded = load_weights(str(tmp_path / "runner.pth"), None)
    assert loaded.identity == hashlib.sha256((tmp_path / "runner.pth").read_bytes()).hexdigest()
    with pytest.raises(UsageError, match=r"fc8 not in these weights.*OpenMMLab's C3D backbone ends at fc7"):
        loaded.spec.layer_shapes(["fc8"], net=loaded.net)


@pytest.mark.slow
def test_an_mmaction2_checkpoint_gives_the_caffemodels_fc6_and_fc7_bit_for_bit(raw, caffe_bytes, tmp_path):
    (tmp_path / CAFFE).write_bytes(caffe_bytes)
    torch.save({"state_dict": mmaction2_state(raw, "backbone.")}, tmp_path / "mm.pth")
    x = clip()
    with torch.inference_mode():
        expected = load_weights(str(tmp_path / CAFFE), None).net(x, ["fc6", "fc7"])
        got = load_weights(str(tmp_path / "mm.pth"), None).net(x, ["conv5b", "pool5", "fc6", "fc7"])
    assert torch.equal(got["fc6"], expected["fc6"]) and torch.equal(got["fc7"], expected["fc7"])
    # fc6 by hand from the raw Caffe tensors over Caffe's ceil-mode pool5 (windows [0,2) ... [6,7)) ...
    w6, b6 = (torch.from_numpy(a.astype(np.float32)) for a in raw["fc6"])
    by_hand = torch.relu(got["pool5"].flatten(1) @ w6.T + b6)
    torch.testing.assert_close(got["fc6"], by_hand, rtol=1e-5, atol=1e-4)
    # ... not over mmaction2's pool5 (padding (0, 1, 1)), which pools other windows of the same size
    padded = torch.nn.functional.max_pool3d(got["conv5b"], 2, 2, padding=(0, 1, 1))
    assert padded.shape == got["pool5"].shape and not torch.equal(padded, got["pool5"])


@pytest.mark.slow
def test_an_mmaction2_recognizers_head_is_fc8(raw, tmp_path):
    state = mmaction2_state(raw, "backbone.")
    head = torch.from_numpy(raw["fc8"][0][:101].astype(np.float32)), torch.from_numpy(raw["fc8"][1][:101].astype(np.float32))
    state["cls_head.fc_cls.weight"], state["cls_head.fc_cls.bias"] = head
    torch.save({"state_dict": state}, tmp_path / "ucf.pth")
    loaded = load_weights(str(tmp_path / "ucf.pth"), None)
    assert torch.equal(loaded.net.fc8.weight, head[0]) and "prob" in loaded.net.check_layers(["prob"])


def test_an_mmaction2_checkpoint_that_does_not_fit_is_refused_whole(tmp_path):
    # every key of the layout with a one-element tensor: read quickly, refused before anything is built
    keys = [f"backbone.{n}.conv.{p}" for n, _, _ in ck.C3D_LAYERS for p in ("weight", "bias")]
    keys += [f"backbone.{n}.{p}" for n in ("fc6", "fc7") for p in ("weight", "bias")]
    tiny = {key: torch.zeros(1) for key in keys}
    cases = {
        "missing": ({k: v for k, v in tiny.items() if "conv5b" not in k}, r"does not fit c3d-sports1m \(missing conv5b\.weight, conv5b\.bias;"),
        "shape": (tiny, r"wrong shape backbone\.conv1a\.conv\.weight -> conv1a\.weight: \[1\], expected \[64, 3, 3, 3, 3\]"),
        "unknown": ({**tiny, "backbone.bn1.weight": torch.zeros(3)}, r"key backbone\.bn1\.weight is not part of mmaction2's C3D"),
        "twice": ({**tiny, "backbone.fc8.weight": torch.zeros(1), "cls_head.fc_cls.weight": torch.zeros(1)},
                  r"backbone\.fc8\.weight and cls_head\.fc_cls\.weight both map to fc8\.weight"),
    }
    for name, (state, message) in cases.items():
        torch.save({"state_dict": state}, tmp_path / f"{name}.pth")
        with pytest.raises(WeightsError, match=message):
            load_weights(str(tmp_path / f"{name}.pth"), None)


def test_without_a_classifier_fc8_and_prob_are_refused_by_name():
    from c3d_extract.models.c3d import C3D_SPORTS1M

    assert C3D_SPORTS1M.layer_shapes(["fc6", "fc7"], num_classes=0) == {"fc6": (4096,), "fc7": (4096,)}
    for layers in (["fc8"], ["fc7", "prob"]):
        with pytest.raises(UsageError, match=r"layer\(s\) (fc8|prob) not in these weights: the checkpoint holds no "
                                             r"classifier \(fc8\): OpenMMLab's C3D backbone ends at fc7"):
            C3D_SPORTS1M.layer_shapes(layers, num_classes=0)


# 2-4. fetching: addresses in order, checksums, mirrors, Drive --------------------------------------


class Drive:
    """A local server that answers as Google Drive does for a file too large to scan: the first
    request gets the "Download anyway" page (a form with id, export, confirm, uuid), the form's request
    gets the file (with Range). Old style (/uc): a download_warning cookie and a confirm=TOKEN link.
    `quota`: a page without a form, as Drive answers a file over its download quota."""

    def __init__(self, data: bytes, file_id: str = "1AbC-xyz_9"):
        self.data, self.file_id, self.requests, self.quota = data, file_id, [], False
        drive = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def page(self, body: str, cookie: str = "") -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                if cookie:
                    self.send_header("Set-Cookie", cookie)
                self.end_headers()
                self.wfile.write(body.encode())

            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                drive.requests.append((url.path, query, self.headers.get("Range"), self.headers.get("Cookie")))
                if query.get("id") != drive.file_id:
                    self.send_error(404)
                elif drive.quota:
                    self.page("<html><head><title>Google Drive - Quota exceeded</title></head><body>Too many users "
                              "have viewed or downloaded this file recently.</body></html>")
                elif url.path == "/download" and not (query.get("confirm") == "t" and query.get("uuid") == "u-42"):
                    self.page(f"<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head>"
                              f"<body><p>Google Drive can't scan this file for viruses.</p><form id=\"download-form\" "
                              f"action=\"http://127.0.0.1:{self.server.server_address[1]}/download\" method=\"get\">"
                              f"<input type=\"submit\" id=\"uc-download-link\" value=\"Download anyway\"/>"
                              f"<input type=\"hidden\" name=\"id\" value=\"{drive.file_id}\">"
                              f"<input type=\"hidden\" name=\"export\" value=\"download\">"
                              f"<input type=\"hidden\" name=\"confirm\" value=\"t\">"
                              f"<input type=\"hidden\" name=\"uuid\" value=\"u-42\"></form></body></html>")
                elif url.path == "/uc" and not (query.get("confirm") == "Q7tk" and "download_warning" in
                                                (self.headers.get("Cookie") or "")):
                    self.page(f"<html><body><a id=\"uc-download-link\" href=\"/uc?export=download&amp;confirm=Q7tk"
                              f"&amp;id={drive.file_id}\">Download anyway</a></body></html>",
                              cookie="download_warning_13058_1AbC=Q7tk; Path=/")
                else:
                    start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
                    self.send_response(206 if start else 200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Length", str(len(drive.data) - start))
                    self.end_headers()
                    self.wfile.write(drive.data[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def use_manifest(monkeypatch, tmp_path, entries):
    path = tmp_path / "manifest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries))
    monkeypatch.setenv("C3D_EXTRACT_MANIFEST", str(path))
    monkeypatch.setenv("C3D_EXTRACT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("C3D_EXTRACT_MIRROR", raising=False)
    return tmp_path / "home" / "weights"


def c3d_entry(urls, **extra):
    return {"c3d-sports1m": {"file": CAFFE, "urls": urls, "size": None, "sha256": None, "format": "caffemodel-v1.0",
                             "licence": "test", "spec": "c3d-sports1m", "layers": [], **extra}}


def mean_entry(urls, **extra):
    """The mean cube's entry: the same fetch as the weights', on a 4 MB file (quick)."""
    return {"c3d-sports1m-mean": {"file": MEAN, "urls": urls, "size": None, "sha256": None, "format": "binaryproto",
                                  "licence": "test", "spec": "c3d-sports1m", "layers": [], **extra}}


def openmmlab(url, prefix, **extra):
    return {"url": url, "file": PTH, "format": "mmaction2", "sha256_prefix": prefix, **extra}


def fetch(name, *args, env=None):
    return CliRunner().invoke(weights_main, ["fetch", name, "-q", *args], env=env)


def said(result, name="c3d-sports1m") -> list[str]:
    """The lines `fetch` said about addresses (one per address)."""
    return [line for line in result.stderr.splitlines() if line.startswith(f"c3d-weights: {name}: ")]


@pytest.fixture(scope="module")
def mean_bytes():
    cube = np.random.default_rng(34).uniform(60, 140, (1, 3, 16, 128, 171)).astype(np.float32)
    return ck.blob_v10(cube)


@pytest.fixture
def mean_served(tmp_path, mean_bytes):
    """http.server over a folder holding the mean cube under its published name."""
    folder = tmp_path / "served"
    folder.mkdir()
    (folder / MEAN).write_bytes(mean_bytes)
    server = HTTPServer(folder)
    yield server
    server.stop()


@pytest.fixture
def served(tmp_path, pth_bytes, caffe_bytes):
    """http.server over a folder holding the .pth and the caffemodel under their published names."""
    folder = tmp_path / "served"
    folder.mkdir()
    (folder / PTH).write_bytes(pth_bytes)
    (folder / CAFFE).write_bytes(caffe_bytes)
    server = HTTPServer(folder)
    yield server
    server.stop()


@pytest.mark.slow
def test_every_address_is_tried_in_order_with_one_line_each_and_a_wrong_digest_is_deleted(
        served, monkeypatch, tmp_path, pth_bytes, caffe_bytes):
    digest = hashlib.sha256(pth_bytes).hexdigest()
    wrong = "dcc47ddc" if not digest.startswith("dcc47ddc") else "00000000"
    dead = f"http://127.0.0.1:{closed_port()}/{CAFFE}"
    cache = use_manifest(monkeypatch, tmp_path, c3d_entry([openmmlab(f"{served.url}/{PTH}", wrong),
                                                           f"{served.url}/gone/{CAFFE}", dead, f"{served.url}/{CAFFE}"]))
    # what a refusal must not touch: another partial download and other installed weights
    (cache / "downloads").mkdir(parents=True)
    (cache / "downloads" / "other.caffemodel.part").write_bytes(b"half")
    (cache / "res3d-sports1m.pt").write_bytes(b"installed before")
    result = fetch("c3d-sports1m")
    assert result.exit_code == 0, result.output
    lines = said(result)
    assert len(lines) == 4
    assert lines[0] == (f"c3d-weights: c3d-sports1m: {served.url}/{PTH}: sha256 {digest} does not match the "
                        f"manifest's {wrong}...: refused, the download was deleted")
    assert lines[1] == f"c3d-weights: c3d-sports1m: {served.url}/gone/{CAFFE}: HTTP 404 File not found"
    assert lines[2].startswith(f"c3d-weights: c3d-sports1m: {dead}: cannot connect (")
    assert lines[3].startswith(f"c3d-weights: c3d-sports1m: {CAFFE} from {served.url}/{CAFFE}, ")
    assert "no published checksum" in lines[3] and hashlib.sha256(caffe_bytes).hexdigest() in lines[3]
    assert sorted(p.name for p in (cache / "downloads").iterdir()) == ["other.caffemodel.part"]
    assert (cache / "downloads" / "other.caffemodel.part").read_bytes() == b"half"
    assert (cache / "res3d-sports1m.pt").read_bytes() == b"installed before"
    assert json.loads((cache / "c3d-sports1m.json").read_text())["source_format"] == "caffemodel-v1.0"
    # the caffemodel served where the manifest promises OpenMMLab's format: converted, found out, deleted
    cache = use_manifest(monkeypatch, tmp_path / "2", c3d_entry([openmmlab(f"{served.url}/{CAFFE}", None, file=CAFFE)]))
    result = fetch("c3d-sports1m")
    assert result.exit_code == 1
    assert "is a caffemodel-v1.0 file, the manifest says mmaction2; the download was deleted" in result.stderr
    assert not list((cache / "downloads").iterdir()) and not (cache / "c3d-sports1m.pt").exists()


def test_when_every_address_fails_the_manual_steps_name_files_checksums_and_the_command(monkeypatch, tmp_path):
    port = closed_port()
    pth_url = f"http://127.0.0.1:{port}/{PTH}"
    caffe_urls = [f"http://127.0.0.1:{port}/{CAFFE}", f"https://127.0.0.1:{port}/s/x/{CAFFE}?dl=1"]
    cache = use_manifest(monkeypatch, tmp_path, c3d_entry([openmmlab(pth_url, "dcc47ddc"), *caffe_urls],
                                                          mean="c3d-sports1m-mean"))
    result = fetch("c3d-sports1m")
    assert result.exit_code == 1
    assert len(said(result)) == 3 and all("cannot connect" in line for line in said(result))
    error = result.stderr[result.stderr.index("c3d-weights: error: "):].splitlines()
    assert error == [
        "c3d-weights: error: cannot download c3d-sports1m from any address:",
        *("  " + line.removeprefix("c3d-weights: c3d-sports1m: ") for line in said(result)),
        "By hand: download one of these files, check it (sha256sum FILE) and convert it:",
        f"  {PTH} (sha256 starting with dcc47ddc) from {pth_url}",
        f"  {CAFFE} (sha256 not published) from {caffe_urls[0]} or {caffe_urls[1]}",
        f"  c3d-weights convert FILE {cache / 'c3d-sports1m.pt'}",
        "The mean cube for Caffe-exact preprocessing is a file of its own (c3d-weights fetch c3d-sports1m-mean; "
        "OpenMMLab's C3D file does not carry it).",
    ]


def test_a_full_sha256_is_enforced_and_a_wrong_file_deleted(mean_served, monkeypatch, tmp_path, mean_bytes):
    cache = use_manifest(monkeypatch, tmp_path, mean_entry([f"{mean_served.url}/{MEAN}"], sha256="ab" * 32))
    result = fetch("c3d-sports1m-mean")
    assert result.exit_code == 1
    assert said(result, "c3d-sports1m-mean") == [
        f"c3d-weights: c3d-sports1m-mean: {mean_served.url}/{MEAN}: sha256 {hashlib.sha256(mean_bytes).hexdigest()} "
        f"does not match the manifest's {'ab' * 32}: refused, the download was deleted"]
    assert not list((cache / "downloads").iterdir()) and not (cache / "c3d-sports1m-mean.npy").exists()


def test_a_mirror_over_http_file_and_a_plain_path_is_tried_first(mean_served, monkeypatch, tmp_path, mean_bytes):
    digest = hashlib.sha256(mean_bytes).hexdigest()
    dead = f"http://127.0.0.1:{closed_port()}"
    folder = tmp_path / "served"
    ways = (("--mirror", mean_served.url + "/"), ("env", f"file://{folder}"), ("--mirror", str(folder)))
    for i, (how, mirror) in enumerate(ways):
        cache = use_manifest(monkeypatch, tmp_path / str(i), mean_entry([f"{dead}/{MEAN}"], sha256_prefix=digest[:8]))
        result = fetch("c3d-sports1m-mean", *(["--mirror", mirror] if how == "--mirror" else []),
                       env={"C3D_EXTRACT_MIRROR": mirror} if how == "env" else None)
        assert result.exit_code == 0, result.output
        record = json.loads((cache / "c3d-sports1m-mean.json").read_text())
        assert record["source_url"] == f"{mirror.rstrip('/')}/{MEAN}" and record["source_sha256"] == digest
        assert said(result, "c3d-sports1m-mean") == [
            f"c3d-weights: c3d-sports1m-mean: {MEAN} from {mirror.rstrip('/')}/{MEAN}, {len(mean_bytes):,} bytes, "
            f"sha256 {digest} (starts with {digest[:8]}, as the manifest says)"]
        assert np.array_equal(np.load(cache / "c3d-sports1m-mean.npy"),
                              np.frombuffer(mean_bytes[-4 * 3 * 16 * 128 * 171:], "<f4").reshape(3, 16, 128, 171))


def test_a_mirror_copy_with_a_wrong_digest_is_refused_and_the_next_address_used(
        mean_served, monkeypatch, tmp_path, mean_bytes):
    digest = hashlib.sha256(mean_bytes).hexdigest()
    bad = tmp_path / "badmirror"
    bad.mkdir()
    (bad / MEAN).write_bytes(mean_bytes[:-1] + bytes([mean_bytes[-1] ^ 1]))
    cache = use_manifest(monkeypatch, tmp_path, mean_entry([f"{mean_served.url}/{MEAN}"], sha256_prefix=digest[:8]))
    result = fetch("c3d-sports1m-mean", "--mirror", f"file://{bad}")
    assert result.exit_code == 0, result.output
    lines = said(result, "c3d-sports1m-mean")
    assert len(lines) == 2 and lines[0].startswith(f"c3d-weights: c3d-sports1m-mean: file://{bad}/{MEAN}: sha256 ")
    assert lines[0].endswith(f"does not match the manifest's {digest[:8]}...: refused, the download was deleted")
    assert json.loads((cache / "c3d-sports1m-mean.json").read_text())["source_url"] == f"{mean_served.url}/{MEAN}"
    assert (bad / MEAN).exists()  # the mirror's own copy is never touched


def test_a_partial_download_resumes_from_a_file_address(monkeypatch, tmp_path, mean_bytes):
    digest = hashlib.sha256(mean_bytes).hexdigest()
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / MEAN).write_bytes(mean_bytes)
    cache = use_manifest(monkeypatch, tmp_path, mean_entry([f"file://{tmp_path / 'copy'}/{MEAN}"], sha256=digest))
    (cache / "downloads").mkdir(parents=True)
    half = len(mean_bytes) // 2
    # zeros where the first half should be: only a resumed read (seek past the part) keeps them, and
    # then the digest cannot match, so the refusal proves the resume; the true half completes it
    (cache / "downloads" / f"{MEAN}.part").write_bytes(bytes(half))
    result = fetch("c3d-sports1m-mean")
    assert result.exit_code == 1 and "does not match" in result.stderr
    (cache / "downloads" / f"{MEAN}.part").write_bytes(mean_bytes[:half])
    result = fetch("c3d-sports1m-mean")
    assert result.exit_code == 0, result.output
    assert json.loads((cache / "c3d-sports1m-mean.json").read_text())["source_sha256"] == digest


def test_without_a_checksum_a_partial_file_is_resumed_only_from_its_own_address(monkeypatch, tmp_path, mean_bytes):
    server = RangeServer()  # http.server ignores Range; this one honours it
    server.files[f"/{MEAN}"] = mean_bytes
    other = tmp_path / "other"
    other.mkdir()
    (other / MEAN).write_bytes(mean_bytes)
    # a cut download of another cube of the same shape: parseable, but not this file
    stale = ck.blob_v10(np.full((1, 3, 16, 128, 171), 7, np.float32))[: len(mean_bytes) // 2]
    whole = np.frombuffer(mean_bytes[-4 * 3 * 16 * 128 * 171:], "<f4").reshape(3, 16, 128, 171)
    downloads = tmp_path / "home" / "weights" / "downloads"
    try:
        for url, resumed in ((f"{server.url}/{MEAN}", True), (f"file://{other}/{MEAN}", False)):
            cache = use_manifest(monkeypatch, tmp_path, mean_entry([url]))
            for old in cache.glob("c3d-sports1m-mean.*"):
                old.unlink()
            downloads.mkdir(parents=True, exist_ok=True)
            (downloads / f"{MEAN}.part").write_bytes(stale)
            (downloads / f"{MEAN}.part.from").write_text(f"{server.url}/{MEAN}")
            result = fetch("c3d-sports1m-mean")
            assert result.exit_code == 0, result.output
            got = np.load(cache / "c3d-sports1m-mean.npy")
            # from its own address the stale half stays (no checksum could tell); from another, all is fetched
            assert np.array_equal(got, whole) is not resumed
            assert not list(downloads.iterdir())
    finally:
        server.close()


@pytest.mark.slow
def test_a_mirror_on_s3_seaweedfs(mean_served, monkeypatch, tmp_path, mean_bytes):
    pytest.importorskip("s3fs", reason="s3fs is not installed (pip install 'c3d_extract[s3]')")
    server = S3Server(tmp_path / "weed").start()
    name = "c3d-sports1m-mean"
    try:
        fs = server.filesystem()
        fs.mkdir("lab")
        fs.pipe(f"lab/weights/c3d/{MEAN}", mean_bytes)
        digest = hashlib.sha256(mean_bytes).hexdigest()
        dead = f"http://127.0.0.1:{closed_port()}"
        cache = use_manifest(monkeypatch, tmp_path, mean_entry([f"{dead}/{MEAN}"], sha256=digest))
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        result = fetch(name, "--mirror", "s3://lab/weights/c3d")
        assert result.exit_code == 0, result.output
        record = json.loads((cache / f"{name}.json").read_text())
        assert record["source_url"] == f"s3://lab/weights/c3d/{MEAN}" and record["source_sha256"] == digest
        assert server.env()["AWS_SECRET_ACCESS_KEY"] not in result.output
        # an object that is not there: one line, and the manifest's address after it
        cache = use_manifest(monkeypatch, tmp_path / "2", mean_entry([f"{mean_served.url}/{MEAN}"], sha256=digest))
        result = fetch(name, "--mirror", "s3://lab/elsewhere")
        assert result.exit_code == 0, result.output
        assert said(result, name)[0] == f"c3d-weights: {name}: s3://lab/elsewhere/{MEAN}: no such object (404)"
        assert json.loads((cache / f"{name}.json").read_text())["source_url"] == f"{mean_served.url}/{MEAN}"
    finally:
        server.stop()


def test_on_a_terminal_the_fetch_shows_a_bar_with_size_and_rate(mean_served, tmp_path, mean_bytes):
    """On a pseudo-terminal of 120 columns (a new pty has 0: tqdm then draws nothing), in a process of
    its own: tqdm decides from its stderr."""
    code = ("import sys; from pathlib import Path; from c3d_extract.weights.download import fetch_address; "
            "from c3d_extract.weights.manifest import Source; "
            f"fetch_address(Source({mean_served.url + '/' + MEAN!r}, {MEAN!r}, 'binaryproto'), Path({str(tmp_path)!r}))")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    process = subprocess.Popen([sys.executable, "-c", code], stdin=slave, stdout=slave, stderr=slave,
                               env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed its end
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert process.wait(60) == 0, out.decode(errors="replace")
    frames = [frame for frame in out.decode(errors="replace").replace("\n", "\r").split("\r") if frame.strip()]
    size = f"{len(mean_bytes) / 2**20:.2f}M"  # tqdm's unit_scale with unit_divisor 1024
    assert any(f.startswith(f"{MEAN} (127.0.0.1): 100%") and f"{size}/{size}" in f and "B/s]" in f for f in frames), frames
    assert (tmp_path / MEAN).read_bytes() == mean_bytes


def test_drive_share_links_become_drives_download_address():
    expected = "https://drive.usercontent.google.com/download?id=0Bx-2rTokRAt1bzNDNGVBei1mODg&export=download"
    for link in ("https://drive.google.com/open?id=0Bx-2rTokRAt1bzNDNGVBei1mODg",
                 "https://drive.google.com/file/d/0Bx-2rTokRAt1bzNDNGVBei1mODg/view?usp=sharing",
                 "https://drive.google.com/uc?export=download&id=0Bx-2rTokRAt1bzNDNGVBei1mODg",
                 "https://docs.google.com/uc?id=0Bx-2rTokRAt1bzNDNGVBei1mODg&export=download"):
        assert drive_download_url(link) == expected
    assert drive_download_url("https://example.org/open?id=1") == "https://example.org/open?id=1"
    assert shown("https://www.dropbox.com/s/x/f?dl=1") == "https://www.dropbox.com/s/x/f?dl=1"
    assert shown("https://u:p@h/f?X-Amz-Signature=abc&X-Amz-Credential=k") == "https://h/f"
    assert confirmation_url("<html><title>x</title></html>", "https://h/") is None


def test_drives_large_file_confirmation_is_answered_and_a_cut_download_resumes_after_it(
        monkeypatch, tmp_path, mean_bytes):
    digest = hashlib.sha256(mean_bytes).hexdigest()
    drive = Drive(mean_bytes)
    name = "c3d-sports1m-mean"
    try:
        for path in ("/download", "/uc"):
            cache = use_manifest(monkeypatch, tmp_path / path.strip("/"), mean_entry(
                [f"{drive.url}{path}?id={drive.file_id}&export=download"], sha256=digest))
            drive.requests.clear()
            result = fetch(name)
            assert result.exit_code == 0, result.output
            assert json.loads((cache / f"{name}.json").read_text())["source_sha256"] == digest
            first, second = drive.requests
            assert "confirm" not in first[1] and second[1]["confirm"] in ("t", "Q7tk")
            if path == "/download":
                assert second[1]["uuid"] == "u-42" and second[1]["export"] == "download"
            else:
                assert "download_warning" in second[3]  # the cookie of the warning page went back
        # resume: the page again (never written into the file), then the rest with Range
        cache = use_manifest(monkeypatch, tmp_path / "resume", mean_entry(
            [f"{drive.url}/download?id={drive.file_id}&export=download"], sha256=digest))
        (cache / "downloads").mkdir(parents=True)
        (cache / "downloads" / f"{MEAN}.part").write_bytes(mean_bytes[:1000])
        drive.requests.clear()
        result = fetch(name)
        assert result.exit_code == 0, result.output
        assert [r[2] for r in drive.requests] == ["bytes=1000-", "bytes=1000-"]
        # over quota: a page without the form is a one-line reason, and nothing is written
        drive.quota = True
        cache = use_manifest(monkeypatch, tmp_path / "quota", mean_entry(
            [f"{drive.url}/download?id={drive.file_id}&export=download"], sha256=digest))
        result = fetch(name)
        assert result.exit_code == 1
        assert said(result, name) == [
            f"c3d-weights: {name}: {drive.url}/download?id={drive.file_id}&export=download: answered with a web page, "
            f"not the file ('Google Drive - Quota exceeded'; a Drive file over its download quota, or a link that "
            f"needs a login?)"]
        assert not (cache / "downloads" / f"{MEAN}.part").exists()
    finally:
        drive.close()


@pytest.mark.slow
def test_the_openmmlab_file_installs_when_its_digest_has_the_prefix_and_gives_the_caffemodels_features(
        served, monkeypatch, tmp_path, pth_bytes, caffe_bytes, video_dir):
    digest = hashlib.sha256(pth_bytes).hexdigest()
    cache = use_manifest(monkeypatch, tmp_path, c3d_entry([openmmlab(f"{served.url}/{PTH}", digest[:8]),
                                                           f"{served.url}/{CAFFE}"]))
    result = fetch("c3d-sports1m")
    assert result.exit_code == 0, result.output
    assert said(result) == [f"c3d-weights: c3d-sports1m: {PTH} from {served.url}/{PTH}, {len(pth_bytes):,} bytes, "
                            f"sha256 {digest} (starts with {digest[:8]}, as the manifest says)"]
    record = json.loads((cache / "c3d-sports1m.json").read_text())
    assert record["source_sha256"] == digest and record["source_format"] == "mmaction2"
    assert record["source_checksum"] == f"sha256 prefix {digest[:8]}"
    assert not list((cache / "downloads").iterdir())
    one = tmp_path / "one"
    one.mkdir()
    (one / "h264.mkv").symlink_to(video_dir / "sub" / "h264.mkv")  # 17 frames: one clip
    (tmp_path / CAFFE).write_bytes(caffe_bytes)
    args = ["--layers", "fc6,fc7", "--precision", "fp32", "-q"]
    for name, weights in (("mm.h5", []), ("caffe.h5", ["--weights", str(tmp_path / CAFFE)])):
        result = CliRunner().invoke(extract_main, [str(one), str(tmp_path / name), *weights, *args])
        assert result.exit_code == 0, result.stderr
    for layer in ("fc6", "fc7"):
        assert np.array_equal(rows(tmp_path / "mm.h5", layer)["h264.mkv"], rows(tmp_path / "caffe.h5", layer)["h264.mkv"])
    with h5py.File(tmp_path / "mm.h5") as f:
        assert f.attrs["weights_sha256"] == digest and f.attrs["spec"] == "c3d-sports1m"
    result = CliRunner().invoke(extract_main, [str(one), str(tmp_path / "fc8.h5"), "--layers", "fc8", "-q"])
    assert result.exit_code == 2 and re.search(r"layer\(s\) fc8 not in these weights", result.stderr)
    assert not (tmp_path / "fc8.h5").exists()
