"""The `seti-fastai` command line. Each command parses flags, calls the library, and prints; nothing else.

A user error (a `SetiError`, a file that already exists) ends in one line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations checks for updates over the network

from seti_fastai.errors import SetiError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train, evaluate and ensemble spectrogram classifiers for the SETI Breakthrough Listen data.",
)


def fail(message: str) -> None:
    """Print one line on stderr and exit 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the errors a user can cause into one line and a non-zero exit, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (SetiError, FileExistsError) as e:
            fail(str(e))
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


def command(name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a Typer command whose user errors end in one line."""

    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        return app.command(name)(user_errors(func))

    return register


@command("synth")
def synth_cmd(
    out: Annotated[Path, typer.Argument(help="Folder to write the data set to (Kaggle layout).")],
    n_train: Annotated[int, typer.Option(help="Cadences in train/.")] = 400,
    n_test: Annotated[int, typer.Option(help="Cadences in test/.")] = 100,
    pos_rate: Annotated[float, typer.Option(help="Share of positives (needles) in every split.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Everything written depends on this seed only.")] = 0,
    old: Annotated[bool, typer.Option("--old", help="Also write old_leaky_data/ (12-character ids).")] = False,
    n_old_train: Annotated[int | None, typer.Option(help="Cadences in train_old/ (default: --n-train).")] = None,
    n_old_test: Annotated[int | None, typer.Option(help="Cadences in test_old/ (default: --n-test).")] = None,
    difficulty: Annotated[str, typer.Option(help="Needle brightness range: easy, realistic or hard.")] = "realistic",
    hidden: Annotated[Path | None, typer.Option(help="Folder for test labels and metadata [OUT_hidden].")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = min(4, os.cpu_count() or 1),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT and the hidden folder.")] = False,
    preview: Annotated[Path | None, typer.Option(help="Also save a PNG of a few positives and negatives.")] = None,
) -> None:
    """Write a synthetic data set in the exact Kaggle layout, made with setigen."""
    from tqdm import tqdm

    from seti_fastai.synth import SynthConfig, output_dirs, write_synthetic

    cfg = SynthConfig(
        n_train=n_train,
        n_test=n_test,
        pos_rate=pos_rate,
        seed=seed,
        old=old,
        n_old_train=n_old_train,
        n_old_test=n_old_test,
        difficulty=difficulty,
    )
    cfg.validate()
    output_dirs(out, hidden, overwrite)
    total = sum(cfg.split_sizes().values())
    with tqdm(total=total, unit="cadence", desc="synth", file=sys.stderr) as bar:
        out, hidden_dir = write_synthetic(cfg, out, hidden, workers=workers, overwrite=overwrite, progress=bar.update)
    typer.echo(f"wrote {total} cadences to {out}; test labels and metadata in {hidden_dir}")
    if preview is not None:
        from seti_fastai.plots import preview_synthetic

        typer.echo(f"preview: {preview_synthetic(out, hidden_dir, preview)}")


@command("folds")
def folds_cmd(
    data: Annotated[Path, typer.Argument(help="Data folder in the Kaggle layout.")],
    k: Annotated[int, typer.Option("--k", help="Number of folds.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the stratified split.")] = 42,
    split: Annotated[str, typer.Option(help="Labelled split to fold: train or old-train.")] = "train",
) -> None:
    """Check every listed file exists, then make (or reuse) stratified folds and show the class balance."""
    from seti_fastai.cadence import KaggleData
    from seti_fastai.folds import fold_summary, load_or_make_folds

    kaggle = KaggleData(data)
    labels = kaggle.read_labels(split)
    kaggle.check_files(split, labels["id"])
    folds, path, created = load_or_make_folds(labels, data, k=k, seed=seed, split=split)
    typer.echo(f"{'wrote' if created else 'reusing'} {path}")
    typer.echo(fold_summary(folds).to_string())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
