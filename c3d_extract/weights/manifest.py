"""The weights manifest (weights/manifest.json): every known checkpoint, where it comes from, what it is.

An entry's `urls` are tried in order. Each is a string (the entry's own file, format and checksums)
or an object {"url", and optionally "file", "format", "size", "sha256", "sha256_prefix", "note"}
for another file of the same weights (OpenMMLab's conversion of C3D: another file, format and digest).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

MANIFEST_ENV = "C3D_EXTRACT_MANIFEST"
CACHE_ENV = "C3D_EXTRACT_HOME"
MIRROR_ENV = "C3D_EXTRACT_MIRROR"
CHECKOUT_WEIGHTS = Path(__file__).resolve().parents[2] / "weights"


@dataclass(frozen=True)
class Source:
    """One address of a checkpoint, with the file it serves and what is known of its checksum."""

    url: str
    file: str
    format: str
    size: Optional[int] = None
    sha256: Optional[str] = None
    sha256_prefix: Optional[str] = None
    note: str = ""

    @property
    def checksum(self) -> str:
        """What is known of the file's digest, in words."""
        if self.sha256:
            return f"sha256 {self.sha256}"
        if self.sha256_prefix:
            return f"sha256 starting with {self.sha256_prefix}"
        return "sha256 not published"


@dataclass(frozen=True)
class Entry:
    name: str
    description: str
    file: str
    sources: tuple[Source, ...]
    size: Optional[int]
    sha256: Optional[str]
    format: str
    licence: str
    spec_name: str  # `spec` in manifest.json
    layers: tuple[str, ...]
    mean: Optional[str] = None
    sha256_prefix: Optional[str] = None
    notes: str = ""

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(source.url for source in self.sources)

    @property
    def is_mean(self) -> bool:
        return self.format in ("binaryproto", "npy")

    @property
    def installed_name(self) -> str:
        """File name once installed: converted weights are .pt, mean cubes .npy."""
        return f"{self.name}.npy" if self.is_mean else f"{self.name}.pt"


def manifest_path() -> Path:
    """$C3D_EXTRACT_MANIFEST, else weights/manifest.json of the checkout, else the installed copy."""
    if os.environ.get(MANIFEST_ENV):
        return Path(os.environ[MANIFEST_ENV])
    checkout = CHECKOUT_WEIGHTS / "manifest.json"
    return checkout if checkout.is_file() else Path(sys.prefix) / "share" / "c3d_extract" / "manifest.json"


def _source(item: dict, address) -> Source:
    """An address of an entry: a string serves the entry's own file; an object may name another file,
    whose checksums are then only those the object gives."""
    if isinstance(address, str):
        address = {"url": address}
    own = address.get("file", item["file"]) == item["file"] and address.get("format", item["format"]) == item["format"]
    inherit = (lambda key: address.get(key, item.get(key))) if own else address.get
    return Source(url=address["url"], file=address.get("file", item["file"]), format=address.get("format", item["format"]),
                  size=inherit("size"), sha256=inherit("sha256"), sha256_prefix=inherit("sha256_prefix"),
                  note=address.get("note", ""))


def load_manifest() -> dict[str, Entry]:
    path = manifest_path()
    with open(path) as handle:
        raw = json.load(handle)
    return {name: Entry(name=name, description=item.get("description", ""), file=item["file"],
                        sources=tuple(_source(item, address) for address in item.get("urls", ())),
                        size=item.get("size"), sha256=item.get("sha256"),
                        format=item["format"], licence=item.get("licence", ""), spec_name=item["spec"],
                        layers=tuple(item.get("layers", ())), mean=item.get("mean"),
                        sha256_prefix=item.get("sha256_prefix"), notes=item.get("notes", ""))
            for name, item in raw.items()}


def mirror_base(mirror: Optional[str] = None) -> Optional[str]:
    """`--mirror`, else $C3D_EXTRACT_MIRROR, else None."""
    return mirror or os.environ.get(MIRROR_ENV) or None


def with_mirror(entry: Entry, mirror: Optional[str]) -> tuple[Source, ...]:
    """The addresses to try: BASE/<file> for each file of the entry (a lab's copy under the published
    names, checked against the same checksums), then the manifest's own addresses."""
    if not mirror:
        return entry.sources
    base = mirror.rstrip("/")
    seen, first = set(), []
    for source in entry.sources or (Source(entry.file, entry.file, entry.format, entry.size, entry.sha256,
                                           entry.sha256_prefix),):
        if source.file not in seen:
            seen.add(source.file)
            first.append(Source(f"{base}/{source.file}", source.file, source.format, source.size, source.sha256,
                                source.sha256_prefix, "mirror"))
    return tuple(first) + entry.sources


def cache_dir() -> Path:
    """Installed weights: $C3D_EXTRACT_HOME/weights, else ~/.cache/c3d_extract/weights."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "c3d_extract")
    return Path(root) / "weights"


def installed(entry: Entry) -> Optional[Path]:
    """Where an entry is installed: the cache directory first, then weights/ of a checkout."""
    for folder in (cache_dir(), CHECKOUT_WEIGHTS):
        path = folder / entry.installed_name
        if path.is_file():
            return path
    return None
