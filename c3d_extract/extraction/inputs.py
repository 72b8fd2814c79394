"""Finding the videos to process and giving each a unique key: its path relative to the root.

Inputs are local paths, URLs of objects or prefixes (s3://, gs://, http(s)://; remote.py) and tar
shards (a `.tar` of videos in video2dataset's layout: one job, keyed `<shard>/<member>` by member)."""

from __future__ import annotations

import csv
import hashlib
import os
import posixpath
import re
from dataclasses import dataclass, field
from typing import Callable, Container, Iterable, Optional, Sequence

from c3d_extract.errors import RemoteError, UsageError
from c3d_extract.extraction.remote import describe, filesystem, is_url, local_path, protocol, redact
from c3d_extract.options import ExtractOptions

VIDEO_EXTENSIONS = ("3gp", "asf", "avi", "flv", "m2ts", "m4v", "mkv", "mov", "mp4", "mpeg", "mpg",
                    "mts", "ogv", "ts", "vob", "webm", "wmv")


SHARD_EXTENSION = "tar"


@dataclass(frozen=True)
class VideoJob:
    """One video to read, or one tar shard of videos (`members`: the extensions of its members that
    are videos). A shard's key is the tar's own (`00000.tar`: its failures are recorded there); each
    member is a video keyed `<shard>/<member name>` (`00000/000000001.mp4`); those in `skip` are passed
    over (written before)."""

    key: str    # path relative to the root, with "/" separators: unique in a feature file
    path: str   # where to read it: a local path or a URL
    members: Optional[tuple[str, ...]] = None
    skip: frozenset = field(default_factory=frozenset)
    attempts: int = 0  # tries made before (a GPU decoder's, nvdec.py): the readers number theirs after

    @property
    def is_shard(self) -> bool:
        return self.members is not None

    @property
    def prefix(self) -> str:
        """What a shard's member keys start with: its key without `.tar`, then "/"."""
        return self.key[:-len(SHARD_EXTENSION) - 1] + "/"

    def owns(self, key: str) -> bool:
        """Whether a video key is this job's: the video itself, or a member of this shard."""
        return key == self.key or (self.members is not None and key.startswith(self.prefix))


def shard_prefix(key: str, prefixes: Container[str]) -> Optional[str]:
    """The prefix (VideoJob.prefix) among `prefixes` of the tar shard that video `key` is a member
    of, or None: the shortest of them `key` starts with (a member key is `<prefix><member name>`)."""
    at = key.find("/")
    while at != -1:
        if key[:at + 1] in prefixes:
            return key[:at + 1]
        at = key.find("/", at + 1)
    return None


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


_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_braces(item: str) -> list[str]:
    """`shards/{00000..00002}.tar` -> the three names (the WebDataset shard notation; widths kept)."""
    match = _BRACES.search(item)
    if not match:
        return [item]
    first, last = match.group(1), match.group(2)
    width = len(first) if first.startswith("0") or len(first) == len(last) else 0
    names = [f"{item[:match.start()]}{n:0{width}d}{item[match.end():]}" for n in range(int(first), int(last) + 1)]
    return [name for expanded in names for name in expand_braces(expanded)]


def _is_shard(path: str) -> bool:
    return path.rsplit(".", 1)[-1].lower() == SHARD_EXTENSION


def _location(url: str) -> str:
    """scheme://bucket (or host) of a URL: the unit of a root and of an access check."""
    scheme, rest = redact(url).split("://", 1)
    return f"{scheme.lower()}://{rest.split('/', 1)[0]}"


def _list_remote(url: str, extensions: tuple[str, ...], options: Optional[dict]) -> tuple[list[str], bool]:
    """The object URLs under a prefix (recursively; names starting with "." skipped, like a folder's),
    and whether `url` was a prefix; an object named directly is itself. http(s) URLs are objects.
    RemoteError when the store cannot be listed (credentials, bucket, endpoint)."""
    if protocol(url) in ("http", "https"):
        return [url], False
    fs, path = filesystem(url, options, fresh=True)
    try:
        found = fs.find(path.rstrip("/"))
    except Exception as exc:  # the filesystems raise their own kinds
        raise RemoteError(f"{redact(url)}: cannot list: {describe(exc)}") from None
    base = path.rstrip("/")
    if not found and url.endswith("/"):  # an empty prefix: no video, like an empty folder
        return [], True
    if found == [base] or not found:  # one object (or nothing: then a failure of its own, like a missing file)
        return [url], False
    scheme = protocol(url)
    urls = []
    for name in sorted(found):
        relative = name[len(base):].lstrip("/")
        parts = relative.split("/")
        if any(part.startswith(".") for part in parts):
            continue
        if relative.rsplit(".", 1)[-1].lower() in extensions or _is_shard(relative):
            urls.append(f"{scheme}://{name}")
    return urls, True


def _check_access(url: str, options: Optional[dict]) -> None:
    """One request per bucket for objects named in lists (not listed one by one): wrong credentials,
    an unknown bucket or an unreachable endpoint stop the run before any work, with one line."""
    if protocol(url) in ("http", "https"):
        return
    fs, path = filesystem(url, options, fresh=True)
    try:
        fs.info(path)
    except FileNotFoundError as exc:
        if "bucket" in str(exc).lower():
            raise RemoteError(f"{redact(url)}: {describe(exc)}") from None
    except Exception as exc:
        raise RemoteError(f"{redact(url)}: {describe(exc)}") from None


def _remote_key(url: str, root: str) -> str:
    path = redact(url)
    if not (path + "/").startswith(root.rstrip("/") + "/"):
        raise UsageError(f"{path} is outside the root {root}; choose another --root")
    return path[len(root.rstrip("/")):].lstrip("/")


def _remote_jobs(items: list[tuple[str, bool]], root: Optional[str], extensions: tuple[str, ...],
                 options: Optional[dict]) -> list[VideoJob]:
    """Jobs for URL inputs ((url, named on the command line)): prefixes listed, keys relative to the
    root of their bucket (a --root URL there, else the prefix itself when it is the only input there,
    else the deepest prefix holding them all), as --root does for folders."""
    by_location: dict[str, list[tuple[str, bool]]] = {}
    for url, listed in items:
        by_location.setdefault(_location(url), []).append((url, listed))
    jobs = []
    for location, group in by_location.items():
        urls, prefixes = [], []
        for url, listed in group:
            if listed:
                found, is_prefix = _list_remote(url, extensions, options)
                urls.extend(found)
                if is_prefix:
                    prefixes.append(redact(url).rstrip("/"))
            else:
                urls.append(url)
        if not any(listed for _, listed in group):
            _check_access(group[0][0], options)
        if root and is_url(root) and _location(root) == location:
            base = redact(root).rstrip("/")
        elif len(group) == 1 and prefixes:
            base = prefixes[0]
        else:
            parents = prefixes + [posixpath.dirname(redact(u)) for u in urls]
            base = location + "/" + posixpath.commonpath([p[len(location):].lstrip("/") or "." for p in parents])
            base = base.rstrip("/.")
        for url in urls:
            jobs.append(_job(_remote_key(url, base), url, extensions))
    return jobs


def _job(key: str, path: str, extensions: tuple[str, ...]) -> VideoJob:
    """A video job, or a shard job for a tar."""
    return VideoJob(key, path, members=extensions if _is_shard(key) else None)


def find_videos(inputs: Iterable[str], root: Optional[str] = None, extensions: tuple[str, ...] = VIDEO_EXTENSIONS,
                storage_options: Optional[dict] = None) -> tuple[list[VideoJob], list[tuple[str, str]]]:
    """Jobs for every video under the input directories and prefixes and every input file or URL,
    sorted by key; a tar shard is one job for all its members.

    Files named directly (or in an `@list` file) are taken whatever their extension, and a path that
    does not exist still becomes a job, so it is reported as a failure like any other bad input.
    Returns the jobs and the (path, problem) pairs of directories that could not be read.
    """
    expanded: list[tuple[str, bool]] = []  # (input, named on the command line: a URL there is listed)
    for item in inputs:
        if item.startswith("@"):
            expanded.extend((local_path(line), False) for line in read_list(item[1:]))
        else:
            expanded.extend((local_path(name), True) for name in expand_braces(item))
    if not expanded:
        return [], []
    remote = [(item, listed) for item, listed in expanded if is_url(item)]
    local = [item for item, _ in expanded if not is_url(item)]
    jobs: dict[str, VideoJob] = {}
    problems: list[tuple[str, str]] = []
    if local:
        local_root = os.path.abspath(root) if root and not is_url(root) else default_root(local)
        paths: list[str] = []
        for item in local:
            paths.extend(_walk(item, extensions + (SHARD_EXTENSION,), problems) if os.path.isdir(item) else [item])
        for path in paths:
            absolute = os.path.abspath(path)
            key = os.path.relpath(absolute, local_root)
            if key.startswith(".." + os.sep) or key == "..":
                raise UsageError(f"{path} is outside the root {local_root}; choose another --root")
            job = _job(key.replace(os.sep, "/"), path, extensions)
            jobs.setdefault(job.key, job)
    for job in _remote_jobs(remote, root, extensions, storage_options) if remote else []:
        jobs.setdefault(job.key, job)
    return sorted(jobs.values(), key=lambda job: job.key), problems


def find_jobs(inputs: Sequence[str], options: Optional[ExtractOptions] = None,
              warn: Callable[[str], None] = lambda message: None) -> list[VideoJob]:
    """The videos of directories, files, URLs, prefixes, tar shards and @lists, keyed relative to
    `options.root`, optionally one shard (I, N) of them (`options.shard`). `options.storage_options`
    go to fsspec for URLs (e.g. {"endpoint_url": ...}); RemoteError when the store cannot be listed or
    reached."""
    options = options or ExtractOptions()
    extensions = parse_extensions(options.ext)
    storage_options = dict(options.storage_options) if options.storage_options is not None else None
    jobs, problems = find_videos(inputs, options.root, extensions, storage_options)
    for path, problem in problems:
        warn(f"warning: {path}: {problem}")
    if not jobs:
        raise UsageError(f"no video found in {', '.join(inputs)} (extensions: {','.join(extensions)})")
    if options.shard:
        index, count = options.shard
        jobs = [job for job in jobs if shard_of(job.key, count) == index]
    return jobs
