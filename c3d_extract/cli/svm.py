"""`c3d-svm`: the papers' evaluation protocols on feature files (linear SVM, PCA compactness, ASLAN)."""

from __future__ import annotations

import csv
import json
import os
import sys
from typing import Optional

import click

from c3d_extract import __version__
from c3d_extract.cli.errors import TOOL_STATUSES, ToolCommand, say
from c3d_extract.errors import C3DError
from c3d_extract.evaluation import reports as evaluation

PROG = "c3d-svm"


class SvmCommand(ToolCommand):
    """c3d-svm's errors: one line; 1, or 3 for the disk (cli/errors.py)."""

    statuses = TOOL_STATUSES
    unchanged = "the feature files are unchanged"


def _say(message: str) -> None:
    say(PROG, message)


def _floats(context: click.Context, param: click.Parameter, text: Optional[str]) -> Optional[list[float]]:
    """A comma-separated list of numbers (--cv-C, --pca); a bad one is click's usage error (status 2)."""
    if not text:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}",
                                 param_hint=param.opts[0]) from None


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise click.ClickException("--plot needs matplotlib: pip install matplotlib "
                                   "(or this package's [plot] extra)") from None
    return plt


def _print_classification(reports: list[dict]) -> None:
    click.echo(f"{'file':<28} {'layer':<7} {'dataset':<8} {'split':<8} {'train':>6} {'test':>6} {'C':>7} "
               f"{'accuracy':>9}")
    for rep in reports:
        for s in rep["splits"]:
            click.echo(f"{os.path.basename(rep['file'])[:28]:<28} {rep['layer']:<7} {rep['dataset']:<8} "
                       f"{s['split']:<8} {s['n_train']:>6} {s['n_test']:>6} {s['C']:>7g} {100 * s['accuracy']:>8.2f}%")
        if len(rep["splits"]) > 1:
            click.echo(f"{'':<28} {rep['layer']:<7} {rep['dataset']:<8} {'mean':<8} {'':>6} {'':>6} {'':>7} "
                       f"{100 * rep['mean_accuracy']:>8.2f}% (std {100 * rep['std_accuracy']:.2f})")
    for rep in reports:
        if "pca" in rep:
            click.echo(f"\nPCA compactness, {os.path.basename(rep['file'])} {rep['layer']} (mean over splits):")
            click.echo(f"{'dims':>6} {'accuracy':>9}")
            for point in rep["pca"]:
                click.echo(f"{point['dims']:>6} {100 * point['mean_accuracy']:>8.2f}%")


def _plot_pca(reports: list[dict], path: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for rep in reports:
        dims = [p["dims"] for p in rep["pca"]]
        ax.plot(dims, [100 * p["mean_accuracy"] for p in rep["pca"]], marker="o",
                label=f"{os.path.basename(rep['file'])} {rep['layer']}")
    ax.set_xscale("log")
    # one labelled tick per dimension measured (a log axis would label 10^k and its minor ticks 2x10^1 ...)
    from matplotlib.ticker import NullLocator

    measured = sorted({p["dims"] for rep in reports for p in rep["pca"]})
    ax.set_xticks(measured, [str(dims) for dims in measured])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("dimensions after PCA (fitted on training videos)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{reports[0]['dataset']}: compactness")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _print_aslan(reports: list[dict]) -> None:
    click.echo(f"{'file':<28} {'layers':<24} {'dims':>4} {'accuracy':>15} {'AUC (folds)':>12} {'AUC (pooled)':>13}")
    for rep in reports:
        click.echo(f"{os.path.basename(rep['file'])[:28]:<28} {','.join(rep['layers'])[:24]:<24} {rep['dims']:>4} "
                   f"{rep['accuracy']:>7.2f} ± {rep['standard_error']:.2f} {100 * rep['auc_mean_of_folds']:>12.2f} "
                   f"{100 * rep['auc_pooled']:>13.2f}")


def _plot_roc(reports: list[dict], path: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for rep in reports:
        ax.plot(rep["roc"]["fpr"], rep["roc"]["tpr"],
                label=f"{os.path.basename(rep['file'])} (AUC {100 * rep['auc_pooled']:.1f})")
    ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ASLAN View-2, 10 folds pooled")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _write_csv(path: str, reports: list[dict], aslan_mode: bool) -> None:
    with open(path, "w", newline="") as handle:
        out = csv.writer(handle)
        if aslan_mode:
            out.writerow(["file", "layers", "accuracy", "standard_error", "auc_mean_of_folds", "auc_pooled"])
            for r in reports:
                out.writerow([r["file"], ",".join(r["layers"]), r["accuracy"], r["standard_error"],
                              r["auc_mean_of_folds"], r["auc_pooled"]])
            return
        out.writerow(["file", "layer", "dataset", "split", "dims", "accuracy"])
        for r in reports:
            for s in r["splits"]:
                out.writerow([r["file"], r["layer"], r["dataset"], s["split"], "", s["accuracy"]])
            for p in r.get("pca", []):
                for split, acc in p["splits"].items():
                    out.writerow([r["file"], r["layer"], r["dataset"], split, p["dims"], acc])


@click.command(cls=SvmCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name=PROG)
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--layer", help="Feature layer to classify (default: fc6 for C3D files, res5b for Res3D, "
                              "else the first).")
@click.option("--dataset", type=click.Choice(["auto", "ucf101", "hmdb51", "folders"]), default="auto",
              show_default=True, help="auto recognises UCF101 names and the UCF101/HMDB51 split folders.")
@click.option("--splits-dir", type=click.Path(file_okay=False),
              help="UCF101's ucfTrainTestlist (classInd.txt, trainlistNN.txt, testlistNN.txt) or HMDB51's "
                   "testTrainMulti_7030_splits. Without it, UCF101 splits follow the group numbers.")
@click.option("--split", default="1", show_default=True, help="Split number, or 'all' (each and their mean).")
@click.option("--folds", help="Folder-per-class data: K-fold (stratified, seeded) or 'loo' (leave one out).")
@click.option("--C", "C", type=float, default=1.0, show_default=True, help="SVM regularisation constant.")
@click.option("--cv-C", "cv_C", metavar="LIST", callback=_floats,
              help="Choose C among these values by 3-fold cross-validation on each split's training videos "
                   "only, e.g. 0.01,0.1,1,10.")
@click.option("--pca", metavar="DIMS", callback=_floats,
              help="Compactness curve: PCA fitted on the training videos to each of these dimensions, e.g. "
                   "10,50,100,200,300,500.")
@click.option("--renormalize/--no-renormalize", default=True, show_default=True,
              help="L2-normalise again after the PCA projection.")
@click.option("--aslan", "aslan_pairs", type=click.Path(exists=True, dir_okay=False),
              help="ASLAN pairs: View2.mat (action_splits_pairs) or a CSV split,id1,id2,same.")
@click.option("--layers", help="ASLAN: layers whose 12 measures are stacked (default: prob,fc7,fc6,pool5 for "
                               "C3D, res5b,pool5,prob for Res3D).")
@click.option("--l1-last-four", is_flag=True, help="ASLAN: L1-normalise the vectors before measures 9-12 "
                                                   "(TPAMI Table 3's caption; off in C3D's use).")
@click.option("--plot", type=click.Path(dir_okay=False), help="PNG: the PCA curve(s), or the ASLAN ROC curve(s).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write every number to this JSON file.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Write the accuracies to this CSV file.")
@click.option("--jobs", type=click.IntRange(1), default=os.cpu_count() or 1, show_default=True,
              help="Processes training the one-vs-rest SVMs.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the folds and the PCA solver.")
def main(files: tuple[str, ...], aslan_pairs: Optional[str], plot: Optional[str], json_path: Optional[str],
         csv_path: Optional[str], **flags) -> None:
    """Evaluate feature files the way the C3D and Res3D papers did.

    \b
    c3d-svm out.h5 --split 1                         UCF101 split 1, linear SVM on fc6
    c3d-svm out.h5 --split all --json res.json       splits 1-3, each and the mean
    c3d-svm out.h5 --dataset hmdb51 --splits-dir testTrainMulti_7030_splits/ --split 1
    c3d-svm c3d.h5 res3d.h5 --pca 10,50,100,200,300,500 --plot pca.png
    c3d-svm out.h5 --aslan View2.mat --layers prob,fc7,fc6,pool5 --plot roc.png

    Results are a table on stdout; --json/--csv for scripts. Exit status 1 when the evaluation
    cannot be done (no such layer, too few classes, no test videos, labels not found), 3 when the
    disk is full or failing while --json, --csv or --plot is written.
    """
    try:
        options = evaluation.SvmOptions(**flags)  # the evaluation's flags, validated once
        if aslan_pairs:
            reports = [r.to_dict() for r in evaluation.aslan_runs(files, aslan_pairs, options, warn=_say)]
            _print_aslan(reports)
            if plot:
                _plot_roc(reports, plot)
        else:
            reports = [evaluation.classify(path, options, warn=_say).to_dict() for path in files]
            _print_classification(reports)
            if plot:
                if not options.pca:
                    raise click.UsageError("--plot draws the PCA curve: give --pca DIMS (or --aslan for a ROC)")
                _plot_pca(reports, plot)
        if json_path:
            with open(json_path, "w") as handle:
                json.dump({"version": __version__, "command_line": sys.argv,
                           "mode": "aslan" if aslan_pairs else "svm", "results": reports}, handle, indent=1)
        if csv_path:
            _write_csv(csv_path, reports, bool(aslan_pairs))
    # the package's errors and the disk's are SvmCommand's; a ValueError outside the family
    # (scikit-learn's, on a NaN in a feature file) also ends with its one line and exit status 1
    except ValueError as exc:
        if isinstance(exc, C3DError):
            raise
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":
    main()
