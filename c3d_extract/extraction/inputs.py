"""Finding the videos to process and giving each a unique key: its path relative to the root."""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from typing import Iterable, Optional

from c3d_extract.errors import UsageError

VIDEO_EXTENSIONS = ("3gp", "asf", "avi", "flv", "m2ts", "m4v", "mkv", "mov", "mp4", "mpeg", "mpg",
                    "mts", "ogv", "ts", "vob", "webm", "wmv")


@dataclass(frozen=True)
class VideoJob:
    key: str    # path relative to the root, with "/" separators: unique in a feature file
    path: str   # where to read it


def parse_extensions(text: Optional[str]) -> tuple[str, ...]:
    """`"mp4,avi"` -> ("mp4", "avi"); None -> the default video extensions."""
    if not text:
        return VIDEO_EXTENSIONS
    exts = tuple(e.strip().lower().lstrip(".") for e in text.split(",") if e.strip())
    if not exts:
        raise UsageError(f"no extension in {text!r}")
    return exts


def shard_of(key: str, count: int) -> int:
    """The shard of a video: a stable hash of its key, so adding videos never moves the others."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") % count


def read_list(path: str) -> list[str]:
    """Paths from a list file: one per line, or a CSV with a `path` column (which can quote names
    holding commas or newlines). Relative paths are relative to the current directory."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise UsageError(f"@{path}: cannot read the list ({exc.strerror or exc})") from None
    first = text.splitlines()[0] if text.strip() else ""
    if "," in first and "path" in [c.strip().lower() for c in next(csv.reader([first]))]:
        rows = list(csv.DictReader(text.splitlines(keepends=True)))
        column = next(c for c in rows[0] if c.strip().lower() == "path") if rows else "path"
        return [row[column] for row in rows if row.get(column)]
    return [line.rstrip("\r") for line in text.split("\n") if line.rstrip("\r")]


def _walk(directory: str, extensions: tuple[str, ...], problems: list[tuple[str, str]]) -> list[str]:
    """Video files under `directory`, following directory links once (a link loop is reported)."""
    found, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(
            directory, followlinks=True, onerror=lambda e: problems.append((e.filename, e.strerror or str(e)))):
        real = os.path.realpath(dirpath)
        if real in seen:
            problems.append((dirpath, "directory visited twice (symbolic link loop); skipped"))
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and name.rsplit(".", 1)[-1].lower() in extensions:
                found.append(os.path.join(dirpath, name))
    return found


def default_root(inputs: Iterable[str]) -> str:
    """One directory: itself. Otherwise the deepest directory that holds every input."""
    inputs = [os.path.abspath(p) for p in inputs]
    if len(inputs) == 1 and os.path.isdir(inputs[0]):
        return inputs[0]
    parents = [p if os.path.isdir(p) else os.path.dirname(p) for p in inputs]
    return os.path.commonpath(parents)


def find_videos(inputs: Iterable[str], root: Optional[str] = None,
                extensions: tuple[str, ...] = VIDEO_EXTENSIONS) -> tuple[list[VideoJob], list[tuple[str, str]]]:
    """Jobs for every video under the input directories and every input file, sorted by key.

    Files named directly (or in an `@list` file) are taken whatever their extension, and a path that
    does not exist still becomes a job, so it is reported as a failure like any other bad input.
    Returns the jobs and the (path, problem) pairs of directories that could not be read.
    """
    expanded: list[str] = []
    for item in inputs:
        expanded.extend(read_list(item[1:]) if item.startswith("@") else [item])
    inputs = expanded
    if not inputs:
        return [], []
    root = os.path.abspath(root) if root else default_root(inputs)
    problems: list[tuple[str, str]] = []
    paths: list[str] = []
    for item in inputs:
        paths.extend(_walk(item, extensions, problems) if os.path.isdir(item) else [item])
    jobs: dict[str, VideoJob] = {}
    for path in paths:
        absolute = os.path.abspath(path)
        key = os.path.relpath(absolute, root)
        if key.startswith(".." + os.sep) or key == "..":
            raise UsageError(f"{path} is outside the root {root}; choose another --root")
        key = key.replace(os.sep, "/")
        jobs.setdefault(key, VideoJob(key, path))
    return sorted(jobs.values(), key=lambda job: job.key), problems
