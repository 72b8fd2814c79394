"""`c3d-weights`: list, fetch, convert and inspect checkpoints and mean cubes."""

from __future__ import annotations

import click

from c3d_extract import __version__
from c3d_extract.cli.errors import TOOL_STATUSES, ToolGroup
from c3d_extract.errors import UsageError
from c3d_extract.weights.convert import WeightsError, read_checkpoint, read_mean, save_checkpoint
from c3d_extract.weights.load import MEAN_SHAPE, file_sha256, install_with_mean, save_mean
from c3d_extract.weights.manifest import cache_dir, installed, load_manifest, manifest_path

PROG = "c3d-weights"


class _Group(ToolGroup):
    """Every command: an error is one line `c3d-weights: error: ...`, exit status 1 (3 for the disk)."""

    statuses = TOOL_STATUSES
    prefix = f"{PROG}: error: "


def _read_any(path: str):
    """(Converted, None) for a checkpoint, (None, cube) for a mean cube; the checkpoint's error for
    anything else."""
    try:
        return read_checkpoint(path), None
    except WeightsError as weights_error:
        try:
            return None, read_mean(path, MEAN_SHAPE)
        except WeightsError:
            raise weights_error from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name=PROG)
def main() -> None:
    """Weights for c3d-extract: the published checkpoints, fetched and converted without Caffe.

    The originals are licensed CC BY-NC 3.0 and are never bundled: `fetch` downloads them from the
    addresses in the manifest, checks them and converts them into this package's layout in
    $C3D_EXTRACT_HOME/weights.
    """


@main.command("list")
def list_command() -> None:
    """What is known (the manifest) and what is installed where."""
    entries = load_manifest()
    click.echo(f"manifest: {manifest_path()}\ncache:    {cache_dir()}\n")
    click.echo(f"{'name':<20} {'spec':<19} {'format':<18} {'licence':<14} installed")
    for entry in entries.values():
        where = installed(entry)
        click.echo(f"{entry.name:<20} {entry.spec_name:<19} {entry.format:<18} {entry.licence.split(' (')[0][:14]:<14} "
                   f"{where if where else '-'}")


@main.command("fetch")
@click.argument("name")
@click.option("--mirror", metavar="BASE", envvar="C3D_EXTRACT_MIRROR", show_envvar=True,
              help="Try BASE/<file> first for each file of NAME: an http(s)://, s3://, gs:// or file:// "
                   "folder (or a plain path) holding the published files under their own names.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def fetch_command(name: str, mirror: str | None, quiet: bool) -> None:
    """Download NAME (see `list`), check its size and sha256, convert it and install it.

    The addresses are tried in order (the mirror's first), each failure said on one line; a file
    whose checksum does not match what the manifest knows (full or prefix) is deleted and the next
    address tried. The digest of what was installed is printed and recorded. A dropped connection
    resumes where it stopped; the install is atomic, so a failed fetch leaves nothing half-written.
    C3D weights bring their mean cube along when it can be had. When every address fails, the
    message gives the files, their checksums and the `convert` command to do it by hand.
    """
    entries = load_manifest()
    if name not in entries:
        raise click.BadParameter(f"unknown name {name!r}; known: {', '.join(entries)}", param_hint="NAME")
    path = install_with_mean(entries[name], lambda message: click.echo(f"{PROG}: {message}", err=True), quiet=quiet,
                             mirror=mirror)
    click.echo(f"{name}: installed {path} (sha256 {file_sha256(path)})")


@main.command("convert")
@click.argument("src", type=click.Path(exists=True, dir_okay=False))
@click.argument("dst", type=click.Path(dir_okay=False))
def convert_command(src: str, dst: str) -> None:
    """Convert SRC (.caffemodel v1.0/v1.1, c3d.pickle, OpenMMLab's C3D .pth, torchvision r3d_18, or a mean cube in
    .binaryproto/.npy) into this package's layout at DST (.pt for weights, .npy for a mean)."""
    converted, cube = _read_any(src)
    if cube is not None:
        if not dst.endswith(".npy"):
            raise UsageError(f"{dst}: a mean cube is written as .npy")
        save_mean(cube, dst)
        click.echo(f"{src}: mean cube {cube.shape} -> {dst}")
        return
    save_checkpoint(converted, dst, source=src, source_sha256=file_sha256(src))
    click.echo(f"{src}: {converted.source_format} for spec {converted.spec.name} -> {dst} "
               f"(sha256 {file_sha256(dst)})")


@main.command("info")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def info_command(file: str) -> None:
    """Format, spec, layers and shapes, and sha256 of a checkpoint or mean cube."""
    converted, cube = _read_any(file)
    if cube is not None:
        click.echo(f"file:    {file}\nformat:  mean cube\nshape:   {cube.shape}\n"
                   f"channel means: {[round(float(v), 4) for v in cube.mean(axis=(1, 2, 3))]}\n"
                   f"sha256:  {file_sha256(file)}")
        return
    params = sum(int(t.numel()) for k, t in converted.state_dict.items() if not k.endswith("num_batches_tracked"))
    click.echo(f"file:    {file}\nformat:  {converted.source_format}\nspec:    {converted.spec.name}\n"
               f"params:  {params:,}\nsha256:  {file_sha256(file)}")
    if converted.source_sha256:
        click.echo(f"source sha256: {converted.source_sha256}")
    for key, tensor in converted.state_dict.items():
        if not key.endswith("num_batches_tracked"):
            click.echo(f"  {key:<32} {list(tensor.shape)}")


if __name__ == "__main__":
    main()
