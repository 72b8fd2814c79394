"""The weights manifest (weights/manifest.json): every known checkpoint, where it comes from, what it is."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

MANIFEST_ENV = "C3D_EXTRACT_MANIFEST"
CACHE_ENV = "C3D_EXTRACT_HOME"
CHECKOUT_WEIGHTS = Path(__file__).resolve().parents[2] / "weights"


@dataclass(frozen=True)
class Entry:
    name: str
    description: str
    file: str
    urls: tuple[str, ...]
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


def load_manifest() -> dict[str, Entry]:
    path = manifest_path()
    with open(path) as handle:
        raw = json.load(handle)
    return {name: Entry(name=name, description=item.get("description", ""), file=item["file"],
                        urls=tuple(item.get("urls", ())), size=item.get("size"), sha256=item.get("sha256"),
                        format=item["format"], licence=item.get("licence", ""), spec_name=item["spec"],
                        layers=tuple(item.get("layers", ())), mean=item.get("mean"),
                        sha256_prefix=item.get("sha256_prefix"), notes=item.get("notes", ""))
            for name, item in raw.items()}


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
