"""The package's errors (errors.py) as one line on stderr and an exit status: the only place where
the command-line tools choose a status for an error."""

from __future__ import annotations

import sys
from typing import NoReturn

import click
from tqdm import tqdm

from c3d_extract.errors import C3DError, Failure, RemoteError
from c3d_extract.storage import EXIT_CODE, StorageError, is_storage_error

# first match wins. c3d-extract: 1 = videos (or a download) failed, 2 = the run could not start or
# was refused (nothing written), 3 = the disk, 4 = the object store refused (credentials, bucket,
# endpoint; nothing written). c3d-weights and c3d-svm: 1 for any error, 3 the disk.
REMOTE_EXIT_CODE = 4
EXTRACT_STATUSES = ((StorageError, EXIT_CODE), (Failure, 1), (RemoteError, REMOTE_EXIT_CODE), (C3DError, 2))
TOOL_STATUSES = ((StorageError, EXIT_CODE), (C3DError, 1))


class ToolError(click.ClickException):
    """One line, `prefix` then the message, and the exit status."""

    def __init__(self, message: str, exit_code: int, prefix: str = "Error: "):
        super().__init__(message)
        self.exit_code, self.prefix = exit_code, prefix

    def show(self, file=None) -> None:
        click.echo(f"{self.prefix}{self.format_message()}", err=True)


def exit_status(exc: C3DError, statuses=EXTRACT_STATUSES) -> int:
    """The exit status of an error under a tool's table."""
    return next(code for kind, code in statuses if isinstance(exc, kind))


def say(prog: str, message: str) -> None:
    """One line on stderr, `prog: message`, above the progress bar when one is showing."""
    tqdm.write(f"{prog}: {message}", file=sys.stderr)


class _Reporting(click.Command):
    """What ToolGroup and ToolCommand share: the package's errors, and a full or failing disk, as one
    line with the tool's exit status, never a traceback."""

    statuses = EXTRACT_STATUSES
    prefix = "Error: "
    unchanged = "files written before are unchanged"  # what a disk error's line says of the files

    def fail(self, exc: C3DError) -> NoReturn:
        raise ToolError(str(exc), exit_status(exc, self.statuses), self.prefix) from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)  # click.Group's, or click.Command's
        except C3DError as exc:
            self.fail(exc)
        except OSError as exc:
            if not is_storage_error(exc):
                raise
            self.fail(StorageError(exc.filename or "a file", exc, self.unchanged))


class ToolGroup(_Reporting, click.Group):
    """A command group whose commands report errors as one line (c3d-extract, c3d-weights)."""


class ToolCommand(_Reporting, click.Command):
    """A single command that reports errors as one line (c3d-svm)."""
