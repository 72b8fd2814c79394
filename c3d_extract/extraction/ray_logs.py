"""Ray's own log lines kept off the user's terminal while Ray runs in this process (`--engine ray`)."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from typing import Optional


class QuietRay:
    """Keeps Ray's own log lines off the user's terminal while Ray runs in this process.

    Ray's C++ core worker in the driver writes its errors (actor restarts, lost nodes, SIGTERM notes)
    straight to file descriptor 2 whatever its log settings, and Ray Data logs the errors of skipped
    blocks to the console. While this is entered, descriptor 2 points at a log file (a temporary one,
    then, once Ray is up, `<session>/logs/c3d-extract-driver-<pid>.err` beside Ray's own logs: see
    move_to). Where `sys.stderr` wrote to descriptor 2, it is replaced by a stream on a duplicate of
    the terminal's descriptor, so Python's writes (this tool's messages, tracebacks, a progress bar
    made after entering) still reach the user. Nested uses do nothing; where descriptor 2 cannot be
    moved nothing is redirected and `path` stays None.
    """

    _outermost: Optional["QuietRay"] = None

    def __init__(self) -> None:
        self.path: Optional[str] = None
        self._saved: Optional[int] = None
        self._stderr = None
        self._consoles: list[logging.Handler] = []
        self._outer = False
        self._held = False

    def __enter__(self) -> "QuietRay":
        if QuietRay._outermost is not None:  # nested: the outer one's log and path are ours
            return QuietRay._outermost
        self._outer, QuietRay._outermost = True, self
        try:
            import ray.data  # noqa: F401  (it installs its console handler when first imported)
        except ImportError:
            pass
        data_logger = logging.getLogger("ray.data")
        self._consoles = [h for h in data_logger.handlers
                          if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
        for handler in self._consoles:
            data_logger.removeHandler(handler)
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):
            return self
        try:
            handle, path = tempfile.mkstemp(prefix=f"c3d-extract-ray-driver-{os.getpid()}-", suffix=".err")
            os.dup2(handle, 2)
            os.close(handle)
        except OSError:
            os.close(saved)
            return self
        self._saved, self.path = saved, path
        try:
            on_fd2 = sys.stderr.fileno() == 2
        except (OSError, ValueError, AttributeError):  # captured (pytest, click's runner): leave it be
            on_fd2 = False
        if on_fd2:
            self._stderr = sys.stderr
            encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
            sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1, encoding=encoding,
                                   errors="backslashreplace")
        return self

    def move_to(self, folder: Optional[str]) -> None:
        """Continue the log in `folder` (Ray's session log folder), with what was written so far."""
        if self.path is None or not folder:
            return
        target = os.path.join(folder, f"c3d-extract-driver-{os.getpid()}.err")
        try:
            with open(self.path, "rb") as early, open(target, "ab") as late:
                late.write(early.read())
            handle = os.open(target, os.O_WRONLY | os.O_APPEND)
            os.dup2(handle, 2)
            os.close(handle)
            os.unlink(self.path)
            self.path = target
        except OSError:  # keep the temporary file
            pass

    def hold(self) -> None:
        """Keep descriptor 2 on the log file after exit: a Ray that failed to start goes on logging
        from its own threads until the process ends (this tool's messages still reach the terminal
        through the replaced `sys.stderr`)."""
        self._held = True

    def __exit__(self, *exc) -> None:
        if not self._outer:
            return
        QuietRay._outermost = None
        if self._saved is not None and not self._held:
            if self._stderr is not None:
                ours, sys.stderr = sys.stderr, self._stderr
                try:
                    ours.close()
                except OSError:
                    pass
            os.dup2(self._saved, 2)
            os.close(self._saved)
            self._saved = None
            if self.path and os.path.exists(self.path) and os.path.getsize(self.path) == 0:
                os.unlink(self.path)  # nothing was said: leave no empty file behind
        data_logger = logging.getLogger("ray.data")
        for handler in self._consoles:
            data_logger.addHandler(handler)
