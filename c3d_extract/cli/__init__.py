"""The command-line tools, each a thin shell over the library: `extract.py` (c3d-extract), `svm.py`
(c3d-svm), `weights.py` (c3d-weights).

The console scripts enter here, and this module imports nothing heavy: a decoder process that
Python's spawn starts re-runs the script that started its parent, which then costs it no torch.
"""

from __future__ import annotations

import atexit
import importlib
import os
import sys


def _run(module: str) -> None:
    """Run the click group `main` of `module` and end the process as soon as it has returned.

    Every file is written, closed and synced by then, and the exit handlers still run (Ray's
    shutdown, the temporary files, multiprocessing's children); only Python's own teardown of the
    imported modules is skipped, which after torch is a noticeable part of a short command's time
    (bench/results.md, "Figures moved out of docstrings")."""
    command = importlib.import_module(module).main
    try:
        command.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`): nothing more can reach it
            pass
    os._exit(code)


def extract_main() -> None:
    """c3d-extract"""
    _run("c3d_extract.cli.extract")


def svm_main() -> None:
    """c3d-svm: a normal exit. It imports no torch (nothing to save at exit), and scikit-learn's
    worker processes (--jobs) are ended by the threading exit hooks that os._exit would skip."""
    from c3d_extract.cli.svm import main

    main()


def weights_main() -> None:
    """c3d-weights"""
    _run("c3d_extract.cli.weights")
