"""Choosing, installing and loading weights: `--weights NAME|PATH|random` and the published defaults.

Installed weights are this package's layout (a state dict under the Caffe layer names plus the
spec it belongs to) in $C3D_EXTRACT_HOME/weights (default ~/.cache/c3d_extract/weights) or in
weights/ of a checkout. Published checkpoints are fetched and converted on first use.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from c3d_extract.weights.convert import Converted, WeightsError, read_checkpoint, read_mean, save_checkpoint
from c3d_extract.weights.download import AddressError, fetch_address, shown
from c3d_extract.weights.manifest import Entry, Source, cache_dir, installed, load_manifest, mirror_base, with_mirror
from c3d_extract.models.registry import C3D_SPORTS1M, ModelSpec, get_spec
from c3d_extract.models.net import StagedNet, init_random
from c3d_extract.models.preprocess import parse_mean
from c3d_extract.options import RANDOM
from c3d_extract.storage import StorageError, is_storage_error, sha256_of, temp_name, write_atomically

# the published mean cube (C3D Sports-1M): channels, the clip's frames, the resized frame
MEAN_SHAPE = (3, C3D_SPORTS1M.input.frames, *C3D_SPORTS1M.input.resize)

__all__ = ["RANDOM", "Loaded", "WeightsError", "install", "install_with_mean", "load_weights", "spec_mean",
           "file_sha256", "save_mean"]


def file_sha256(path: str | os.PathLike) -> str:
    return sha256_of(Path(path))


_CHECKED_FORMATS = ("caffemodel-v1.0", "caffemodel-v1.1", "c3d-pickle", "torchvision-r3d18", "mmaction2")


def _convert(entry: Entry, source: Source, path: Path, target: Path, digest: str) -> None:
    """Convert a downloaded file into `target`; WeightsError when it is not what the manifest says."""
    if entry.is_mean:
        save_mean(read_mean(str(path), MEAN_SHAPE), str(target))
        return
    converted = read_checkpoint(str(path))
    if converted.spec.name != entry.spec_name:
        raise WeightsError(f"holds weights for {converted.spec.name}, the manifest's {entry.name} is {entry.spec_name}")
    if source.format in _CHECKED_FORMATS and converted.source_format != source.format:
        raise WeightsError(f"is a {converted.source_format} file, the manifest says {source.format}")
    save_checkpoint(converted, str(target), source=str(path), source_sha256=digest)


def _checked(entry: Entry, source: Source) -> str:
    if source.sha256:
        return "equal to the manifest's"
    if source.sha256_prefix:
        return f"starts with {source.sha256_prefix}, as the manifest says"
    where = (f"in {entry.name}.json beside it" if entry.is_mean
             else "as weights_sha256 in every feature file made with these weights")
    return f"no published checksum to compare with: compare it with another copy; it is recorded {where}"


def manual_steps(entry: Entry, sources: tuple[Source, ...], target: Path, reasons: list[str]) -> str:
    """What to do when every address failed: why each failed, which file to fetch from where, its
    checksum, the command."""
    files: dict[str, list[Source]] = {}
    for source in sources:
        files.setdefault(source.file, []).append(source)
    lines = [f"cannot download {entry.name} from any address:", *(f"  {reason}" for reason in reasons)]
    if files:
        lines.append("By hand: download one of these files, check it (sha256sum FILE) and convert it:")
        for name, group in files.items():
            lines.append(f"  {name} ({group[0].checksum}) from {' or '.join(shown(s.url) for s in group)}")
    else:
        lines.append(f"By hand: get {entry.file} and convert it:")
    lines.append(f"  c3d-weights convert FILE {target}")
    if entry.mean:
        lines.append(f"The mean cube for Caffe-exact preprocessing is a file of its own (c3d-weights fetch {entry.mean}; "
                     f"OpenMMLab's C3D file does not carry it).")
    return "\n".join(lines)


def install(entry: Entry, quiet: bool = False, mirror: Optional[str] = None,
            say: Optional[Callable[[str], None]] = None) -> Path:
    """Download a manifest entry from the first address that gives the right file (the mirror's, then
    the manifest's, in order), convert it into this package's layout in the cache directory
    (atomically) and record where it came from in `<name>.json` beside it. Each address that fails
    is said in one line through `say` as it happens; when all fail, WeightsError gives each reason
    again (a library caller may not show `say`) and the manual steps."""
    tell = say or (lambda message: None)
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / entry.installed_name
    sources = with_mirror(entry, mirror_base(mirror))
    if not sources:
        raise WeightsError(f"{entry.name}: no published weights to download ({entry.notes or 'no address'}); "
                           f"pass --weights PATH (a state dict in this package's layout) or --weights random")
    reasons: list[str] = []
    for source in sources:
        try:
            path, digest = fetch_address(source, folder / "downloads", quiet=quiet)
            try:
                _convert(entry, source, path, target, digest)
            except WeightsError as exc:
                path.unlink()
                raise AddressError(f"{str(exc).removeprefix(str(path) + ': ')}; the download was deleted") from None
        except AddressError as exc:
            reasons.append(f"{shown(source.url)}: {exc}")
            tell(f"{entry.name}: {reasons[-1]}")
            continue
        tell(f"{entry.name}: {source.file} from {shown(source.url)}, {path.stat().st_size:,} bytes, "
             f"sha256 {digest} ({_checked(entry, source)})")
        checksum = ("sha256" if source.sha256 else f"sha256 prefix {source.sha256_prefix}" if source.sha256_prefix
                    else "none published")
        record = {"name": entry.name, "source": str(path), "source_url": shown(source.url),
                  "source_file": source.file, "source_format": source.format, "source_sha256": digest,
                  "source_checksum": checksum, "installed": str(target), "installed_sha256": sha256_of(target),
                  "urls": [shown(url) for url in entry.urls]}
        text = (json.dumps(record, indent=2) + "\n").encode()
        record_path = str(target.with_suffix(".json"))
        _saving(record_path, lambda: write_atomically(record_path, lambda handle: handle.write(text)))
        path.unlink()  # the converted file is what is kept; the original can be fetched again
        return target
    raise WeightsError(manual_steps(entry, sources, target, reasons))


def _saving(path: str, write: Callable[[], None]) -> None:
    """Run write(); a full or failing disk becomes a StorageError naming `path`."""
    try:
        write()
    except OSError as exc:
        if is_storage_error(exc):
            raise StorageError(temp_name(path), exc, f"nothing was written ({path} is as it was)") from None
        raise


def save_mean(cube: np.ndarray, path: str) -> None:
    """A mean cube as .npy, atomically: written to a temporary file, read back and compared, renamed."""
    def check(tmp: str) -> None:
        if not np.array_equal(np.load(tmp, allow_pickle=False), cube):
            raise WeightsError(f"{tmp}: the written mean cube does not read back equal; {path} was not written")

    _saving(path, lambda: write_atomically(path, lambda handle: np.save(handle, cube), check))


def install_with_mean(entry: Entry, warn: Callable[[str], None], quiet: bool = False,
                      mirror: Optional[str] = None) -> Path:
    """Install an entry and the mean cube it names (its own file and addresses: OpenMMLab's C3D file
    does not carry it); a mean that cannot be had is only a warning (the spec then keeps its
    per-channel mean, recorded as an approximation)."""
    path = install(entry, quiet=quiet, mirror=mirror, say=warn)
    manifest = load_manifest()
    if entry.mean and entry.mean in manifest and installed(manifest[entry.mean]) is None:
        try:
            install(manifest[entry.mean], quiet=quiet, mirror=mirror, say=warn)
        except WeightsError as exc:
            warn(f"warning: {exc}")
    return path


def _installed_or_fetched(entry: Entry, fetch: bool, quiet: bool, warn: Callable[[str], None]) -> Path:
    found = installed(entry)
    if found is not None:
        return found
    if not entry.urls:
        raise WeightsError(f"{entry.name}: no published weights ({entry.notes}); pass --weights PATH (a state "
                           f"dict in this package's layout) or --weights random")
    if not fetch:
        raise WeightsError(f"{entry.name} is not installed (looked in {cache_dir()}); "
                           f"run: c3d-weights fetch {entry.name}")
    warn(f"{entry.name} is not installed: fetching it once into {cache_dir()} "
         f"(licence: {entry.licence})")
    return install_with_mean(entry, warn, quiet=quiet)


@dataclass
class Loaded:
    """A network ready to run, the spec its weights need, and the weights' identity."""

    spec: ModelSpec
    net: StagedNet
    identity: str      # sha256 of the original checkpoint, or "random:<seed>"
    path: str          # what was read, or "random"


def load_weights(weights: Optional[str], model: Optional[str], seed: int = 0, fetch: bool = True,
                 quiet: bool = False, warn: Callable[[str], None] = lambda message: None) -> Loaded:
    """Resolve `--weights` (None = the model's published weights, a manifest name, a path, or
    "random") against `--model` (None = whatever the weights are for, else c3d).

    The identity recorded in feature files is the sha256 of the original checkpoint, so a
    .caffemodel and its conversion count as the same weights."""
    wanted = get_spec(model) if model else None
    if weights == RANDOM:
        spec = wanted or get_spec("c3d")
        with torch.device("meta"):  # no default initialisation: init_random sets every tensor
            net = spec.build()
        net = net.to_empty(device="cpu")
        init_random(net, seed)
        return Loaded(spec, net.eval(), f"random:{seed}", RANDOM)
    manifest = load_manifest()
    if weights is None:
        weights = (wanted or get_spec("c3d")).weights_name
        if weights not in manifest:
            raise WeightsError(f"{weights}: not in the weights manifest; pass --weights PATH or --weights random")
        path = str(_installed_or_fetched(manifest[weights], fetch, quiet, warn))
    elif weights in manifest and not os.path.exists(weights):
        if manifest[weights].is_mean:
            raise WeightsError(f"{weights} is a mean cube, not weights; pass it with --mean")
        path = str(_installed_or_fetched(manifest[weights], fetch, quiet, warn))
    else:
        path = weights
    converted: Converted = read_checkpoint(path)
    if wanted is not None and wanted.model != converted.spec.model:
        raise WeightsError(f"{path}: weights of a {converted.spec.model} network ({converted.spec.name}), "
                           f"but --model {model} asks for {wanted.model}")
    head = converted.state_dict.get(f"{converted.spec.classifier}.weight")
    with torch.device("meta"):  # the default initialisation would be overwritten at once
        net = converted.spec.build(num_classes=head.shape[0] if head is not None else 0)
    net.load_state_dict(converted.state_dict, strict=True, assign=True)
    identity = converted.source_sha256 or file_sha256(path)
    return Loaded(converted.spec, net.eval(), identity, os.path.abspath(path))


def spec_mean(spec: ModelSpec, mean: Optional[str]) -> ModelSpec:
    """Apply `--mean` (a cube file or "B,G,R" values), else the installed mean cube that the
    spec's published weights name in the manifest; without either the spec is unchanged."""
    if mean is not None and os.path.isfile(mean) and spec.input.resize is None:
        raise WeightsError(f"{mean}: {spec.name} resizes by its short side; a mean cube needs a fixed frame size")
    expected = (3, spec.input.frames, *(spec.input.resize or (0, 0)))
    if mean is not None and os.path.isfile(mean):
        cube = read_mean(mean, expected)
        return spec.with_input(mean_cube=cube, mean_note=f"{os.path.basename(mean)} sha256 {file_sha256(mean)}")
    if mean is not None:
        return spec.with_input(mean=parse_mean(mean), mean_note="given with --mean")
    manifest = load_manifest()
    entry = manifest.get(spec.weights_name)
    mean_entry = manifest.get(entry.mean) if entry and entry.mean else None
    found = installed(mean_entry) if mean_entry else None
    if found is None:
        return spec
    cube = read_mean(str(found), expected)
    return spec.with_input(mean_cube=cube, mean_note=f"{mean_entry.name} sha256 {file_sha256(found)}")
