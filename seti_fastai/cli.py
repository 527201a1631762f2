"""The `seti-fastai` command line. Each command parses flags, calls the library, and prints; nothing else.

A user error (a `SetiError`, a file that already exists) ends in one line on stderr and exit code 2.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import sys
import types
import typing
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations checks for updates over the network
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated")  # raised by a dependency's import

from seti_fastai.data.background import DEFAULT_MIN_OVERLAP, DEFAULT_MIN_SIMILARITY  # noqa: E402
from seti_fastai.data.drift_grid import DedopplerConfig  # noqa: E402
from seti_fastai.data.folds import DEFAULT_K, DEFAULT_SEED, folds_name  # noqa: E402
from seti_fastai.data.synth import DIFFICULTY, SynthConfig  # noqa: E402
from seti_fastai.errors import SetiError  # noqa: E402
from seti_fastai.observe.scan_config import ScanConfig  # noqa: E402

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts hold "[default: ...]", which rich markup would swallow as a tag
    help="Train, evaluate and ensemble spectrogram classifiers for the SETI Breakthrough Listen data.",
)


def fail(message: str) -> None:
    """Print one line on stderr and exit 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def one_line(error: BaseException) -> str:
    """The message of a user error on one line. An error raised in a DataLoader worker comes back wrapped in the
    worker's traceback: its own message is the last line, after the exception's name."""
    text = str(error).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text.splitlines()[0] if text else type(error).__name__


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the errors a user can cause into one line and a non-zero exit, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (SetiError, FileExistsError) as e:
            fail(one_line(e))
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


# ----------------------------------------------------------------------------------------------------------------
# options several commands share, declared once (defaults stay with each command: they differ)

CPUS = os.cpu_count() or 1
LOADER_WORKERS, POOL_WORKERS = min(8, CPUS), min(4, CPUS)
DataArg = Annotated[Path, typer.Argument(help="Data folder in the Kaggle layout.")]
DataOpt = Annotated[Path, typer.Option(help="Data root in the Kaggle layout.")]
RunDirs = Annotated[list[Path], typer.Argument(help="Run directories (folds); their predictions are averaged.")]
WorkDir = Annotated[
    Path | None,
    typer.Option(help="Folder for what this writes; given, it wins [default: beside DATA when writable, else runs]."),
]
OverwriteInput = Annotated[
    bool, typer.Option("--overwrite-input", help="Let --out replace a file the data folder reads from.")
]


def work_folder(work_dir: Path | None) -> tuple[Path, bool]:
    """(the work folder, whether the user chose it): the default `runs` is only a fallback for read-only data."""
    return (Path("runs"), False) if work_dir is None else (work_dir, True)


LoaderWorkers = Annotated[int, typer.Option("--workers", help="DataLoader worker processes.")]
PoolWorkers = Annotated[int, typer.Option("--workers", help="Worker processes (or threads) for the work.")]
BatchSize = Annotated[int, typer.Option("--bs", help="Cadences per batch (flip views multiply it on the device).")]
Device = Annotated[str | None, typer.Option(help="cpu or cuda [default: cuda when available].")]
Tta = Annotated[str, typer.Option(help="none, flips (batched flip views) or N (fastai TTA, N passes).")]
Calibration = Annotated[
    str,
    typer.Option(
        help="auto (per-run when every run has calibration.json, else the pooled calibration.json beside the runs "
        "if present, else none), per-run, pooled, none, or a pooled calibration file."
    ),
]
NoCalibration = Annotated[bool, typer.Option("--no-calibration", help="Same as --calibration none.")]


def command(name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a Typer command whose user errors end in one line."""

    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        return app.command(name)(user_errors(func))

    return register


@command("synth")
def synth_cmd(
    out: Annotated[Path, typer.Argument(help="Folder to write the data set to (Kaggle layout).")],
    n_train: Annotated[int, typer.Option(help="Cadences in train/.")] = SynthConfig.n_train,
    n_test: Annotated[int, typer.Option(help="Cadences in test/.")] = SynthConfig.n_test,
    pos_rate: Annotated[
        float, typer.Option(help="Share of positives (needles) in every split.")
    ] = SynthConfig.pos_rate,
    seed: Annotated[int, typer.Option(help="Everything written depends on this seed only.")] = SynthConfig.seed,
    old: Annotated[bool, typer.Option("--old", help="Also write old_leaky_data/ (12-character ids).")] = False,
    n_old_train: Annotated[int | None, typer.Option(help="Cadences in train_old/ (default: --n-train).")] = None,
    n_old_test: Annotated[int | None, typer.Option(help="Cadences in test_old/ (default: --n-test).")] = None,
    difficulty: Annotated[
        str, typer.Option(help=f"Needle brightness range: {', '.join(DIFFICULTY)}.")
    ] = SynthConfig.difficulty,
    shape_weights: Annotated[
        str | None,
        typer.Option(help="Needle shapes of every split, e.g. line=0.45,squared=0.15,sine=0.25,random_walk=0.15."),
    ] = None,
    test_shape_weights: Annotated[
        str | None,
        typer.Option(help="Needle shapes of the test split only (a train/test shift), e.g. sine=0.6,line=0.4."),
    ] = None,
    rows: Annotated[
        int, typer.Option(help="Time rows per panel: 273 as on Kaggle, 16 as Green Bank's files (binned in time).")
    ] = SynthConfig.rows,
    hidden: Annotated[Path | None, typer.Option(help="Folder for test labels and metadata [OUT_hidden].")] = None,
    workers: PoolWorkers = POOL_WORKERS,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT and the hidden folder.")] = False,
    preview: Annotated[Path | None, typer.Option(help="Also save a PNG of a few positives and negatives.")] = None,
) -> None:
    """Write a synthetic data set in the exact Kaggle layout, made with setigen."""
    from tqdm import tqdm

    from seti_fastai.data.inject import parse_shape_weights
    from seti_fastai.data.synth import output_dirs, write_synthetic

    shapes = {}
    if shape_weights is not None:
        shapes["shape_weights"] = parse_shape_weights(shape_weights, "--shape-weights")
    if test_shape_weights is not None:
        shapes["test_shape_weights"] = parse_shape_weights(test_shape_weights, "--test-shape-weights")
    cfg = SynthConfig(
        n_train=n_train,
        n_test=n_test,
        pos_rate=pos_rate,
        seed=seed,
        old=old,
        n_old_train=n_old_train,
        n_old_test=n_old_test,
        difficulty=difficulty,
        rows=rows,
        **shapes,
    )
    cfg.validate()
    output_dirs(out, hidden, overwrite)
    total = sum(cfg.split_sizes().values())
    with tqdm(total=total, unit="cadence", desc="synth", file=sys.stderr) as bar:
        out, hidden_dir = write_synthetic(cfg, out, hidden, workers=workers, overwrite=overwrite, progress=bar.update)
    typer.echo(f"wrote {total} cadences to {out}; test labels and metadata in {hidden_dir}")
    if preview is not None:
        from seti_fastai.evaluate.plots import preview_synthetic

        typer.echo(f"preview: {preview_synthetic(out, hidden_dir, preview)}")


@command("folds")
def folds_cmd(
    data: DataArg,
    k: Annotated[int, typer.Option("--k", help="Number of folds.")] = DEFAULT_K,
    seed: Annotated[int, typer.Option(help="Seed of the stratified split.")] = DEFAULT_SEED,
    split: Annotated[str, typer.Option(help="Labelled split to fold: train or old-train.")] = "train",
    check_arrays: Annotated[
        bool, typer.Option("--check-arrays", help="Also load every cadence: shape, dtype, NaN/inf (slow).")
    ] = False,
    work_dir: WorkDir = None,
) -> None:
    """Check every listed file exists, then make (or reuse) stratified folds and show the class balance."""
    from tqdm import tqdm

    from seti_fastai.data.cadence import KaggleData
    from seti_fastai.data.folds import fold_summary, load_or_make_folds

    work, chosen = work_folder(work_dir)
    kaggle = KaggleData(data)
    labels = kaggle.read_labels(split)
    if check_arrays:  # every file, then one report of all that are bad
        with tqdm(total=len(labels), unit="cadence", desc="check", file=sys.stderr) as bar:
            kaggle.check_arrays(split, work, progress=bar.update)
    else:
        kaggle.check_files(split, labels["id"])
    folds, path, created = load_or_make_folds(labels, data, k, seed, split, work, chosen)
    typer.echo(f"{'wrote' if created else 'reusing'} {path}")
    typer.echo(fold_summary(folds).to_string())


# ----------------------------------------------------------------------------------------------------------------
# training commands: every TrainConfig field is a flag; flags override --config YAML, which overrides defaults


def field_parameters(cls: type) -> list[inspect.Parameter]:
    """One `--flag` per field of a settings dataclass (`TrainConfig`, `DedopplerConfig`), its help the field's
    `help` metadata and its default the field's; unset (None) unless given, so a YAML file or the class fills it."""
    hints = typing.get_type_hints(cls)
    params = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        optional = isinstance(hint, types.UnionType)
        base = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        flag = "--" + f.name.replace("_", "-")
        if typing.get_origin(base) is list:
            base, default = str, None if default is None else ",".join(map(str, default))
        shown = "" if default is None and "[default:" in f.metadata.get("help", "") else f" [default: {default}]"
        decls = [f"{flag}/--no-{flag[2:]}"] if base is bool else [flag]
        option = typer.Option(*decls, help=f"{f.metadata.get('help', '')}{shown}", show_default=False)
        params.append(
            inspect.Parameter(
                f.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[base | None, option]
            )
        )
    return params


def _train_config() -> type:
    from seti_fastai.config import TrainConfig

    return TrainConfig


def settings_command(name: str, cls: type, param: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `func(..., param=cls(...))` as a command whose options are func's own and one per field of `cls`."""

    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(func, include_extras=True)  # the Annotated options, not their names
        own = [
            p.replace(annotation=hints[p.name]) for p in inspect.signature(func).parameters.values() if p.name != param
        ]
        names = [f.name for f in dataclasses.fields(cls)]

        def wrapper(**kwargs: Any) -> Any:
            given = {k: kwargs.pop(k) for k in names}
            return func(**kwargs, **{param: cls(**{k: v for k, v in given.items() if v is not None})})

        wrapper.__signature__ = inspect.Signature([*own, *field_parameters(cls)])
        wrapper.__doc__ = func.__doc__
        return app.command(name)(user_errors(wrapper))

    return register


CONFIG_FILE = inspect.Parameter(
    "config", inspect.Parameter.KEYWORD_ONLY, default=None,
    annotation=Annotated[Path | None, typer.Option(help="YAML file of config fields (flags override it).")],
)  # fmt: skip
QUIET = inspect.Parameter(
    "quiet", inspect.Parameter.KEYWORD_ONLY, default=False,
    annotation=Annotated[bool, typer.Option("--quiet", help="No progress bars or epoch table.")],
)  # fmt: skip


def config_command(name: str, *extra: inspect.Parameter) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `func(cfg_overrides, config_file, **extra)` as a command taking every TrainConfig flag."""

    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        extra_names = {p.name for p in extra} | {"config"}

        def wrapper(**kwargs: Any) -> Any:
            extras = {k: kwargs.pop(k) for k in extra_names}
            return func(kwargs, **extras)

        wrapper.__signature__ = inspect.Signature([CONFIG_FILE, *extra, *field_parameters(_train_config())])
        wrapper.__doc__ = func.__doc__
        return app.command(name)(user_errors(wrapper))

    return register


ALL_FOLDS = inspect.Parameter(
    "all_folds", inspect.Parameter.KEYWORD_ONLY, default=False,
    annotation=Annotated[bool, typer.Option("--all-folds", help="Train every fold in sequence (finetune stage).")],
)  # fmt: skip


@config_command("train", ALL_FOLDS, QUIET)
def train_cmd(overrides: dict[str, Any], config: Path | None, all_folds: bool, quiet: bool) -> None:
    """Train one fold (or --all-folds, or --stage pretrain) and write its run directory."""
    from seti_fastai.config import config_from, given_values
    from seti_fastai.learn.distributed import is_main
    from seti_fastai.learn.train import train_folds

    echo = typer.echo if is_main() else lambda *_, **__: None  # under accelerate launch / torchrun: rank 0 prints
    given = given_values(config, overrides)  # what the user set: --resume refuses what differs from the saved run
    train_folds(config_from(given), given, all_folds, say=echo, quiet=quiet)


def _run_recipe_cmd(data: Path, recipe: Path | None, quiet: bool, **overrides: Any) -> None:
    """From a data folder to a calibrated submission.csv in one command: folds, background matching, every fold
    trained (finished ones skipped, an interrupted one resumed), calibration (stacked with the de-Doppler reference
    where it helps), prediction of the test split and the report; each step skipped when its output is current."""
    from tqdm import tqdm

    from seti_fastai.pipeline import build_recipe, run_recipe

    plan = build_recipe(recipe, dict(overrides, data=str(data)))
    typer.echo(f"run {plan.exp_dir}: folds {', '.join(map(str, plan.pipe.fold_list(plan.cfg.n_folds)))}")

    def bar(step: str, total: int):
        return tqdm(total=total or None, unit="cadence", desc=step, file=sys.stderr, disable=quiet)

    result = run_recipe(plan, say=typer.echo, progress=bar, quiet=quiet)
    typer.echo(result["table"])
    typer.echo(f"submission: {result['submission']}")


def _register_run() -> None:
    from seti_fastai.pipeline import PipelineConfig

    own = [
        inspect.Parameter("data", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=DataArg),
        inspect.Parameter(
            "recipe", inspect.Parameter.KEYWORD_ONLY, default=None,
            annotation=Annotated[
                Path | None, typer.Option(help="Recipe YAML (recipes/*.yaml): training flags and pipeline keys.")
            ],
        ),
        QUIET,
    ]  # fmt: skip
    train_flags = [p for p in field_parameters(_train_config()) if p.name != "data"]

    def wrapper(**kwargs: Any) -> Any:
        return _run_recipe_cmd(**kwargs)

    wrapper.__signature__ = inspect.Signature([*own, *field_parameters(PipelineConfig), *train_flags])
    wrapper.__doc__ = _run_recipe_cmd.__doc__
    app.command("run")(user_errors(wrapper))


_register_run()


@config_command("lr-find", QUIET)
def lr_find_cmd(overrides: dict[str, Any], config: Path | None, quiet: bool) -> None:
    """Run fastai's lr_find on a run's data and model; save lr_find.png and lr_find.json in its run directory."""
    from seti_fastai.config import build_config
    from seti_fastai.learn.lr_find import run_lr_find
    from seti_fastai.learn.plan import plan_run
    from seti_fastai.model.pretrained import describe_pretrained

    plan = plan_run(build_config(config, overrides), fresh=False, say=typer.echo)
    if line := describe_pretrained(plan.cfg):
        typer.echo(line)
    result = run_lr_find(plan, quiet=quiet)
    shown = ", ".join(f"{k} {v:.2e}" for k, v in result["suggestions"].items() if v)
    typer.echo(f"lr_find: {shown or 'no suggestion (curve too short)'}; saved {plan.run_dir / 'lr_find.png'}")
    if result["suggested_lr"]:
        typer.echo(f"suggested --lr {result['suggested_lr']:.2e}")


# ----------------------------------------------------------------------------------------------------------------
# inference commands


def prediction_bar(plan):
    """A progress bar over the cadences a prediction passes through its models (none for fastai's TTA, which
    reports no progress)."""
    from tqdm import tqdm

    passes = 0 if plan.tta.isdigit() else len(plan.runs)
    return tqdm(total=len(plan.ids) * passes or None, unit="cadence", desc="predict", file=sys.stderr,
                disable=not passes)  # fmt: skip


@command("predict")
def predict_cmd(
    run_dirs: RunDirs,
    data: DataOpt = Path("data"),
    out: Annotated[Path, typer.Option(help="CSV to write (id,target).")] = Path("submission.csv"),
    overwrite_input: OverwriteInput = False,
    split: Annotated[str, typer.Option(help="test, train, old-train or old-test.")] = "test",
    ids: Annotated[Path | None, typer.Option(help="CSV with an id column: predict these ids of --split.")] = None,
    tta: Tta = "none",
    combine: Annotated[str, typer.Option(help="Average views and folds as prob(abilities) or logit(s).")] = "prob",
    beta: Annotated[float, typer.Option(help="--tta N: weight of the plain prediction (fastai's beta).")] = 0.25,
    calibration: Calibration = "auto",
    no_calibration: NoCalibration = False,
    bs: BatchSize = 64,
    workers: LoaderWorkers = LOADER_WORKERS,
    device: Device = None,
    packed: Annotated[
        str, typer.Option(help="auto: read the split's packed cache (`pack`) when there is one; on: require it; off.")
    ] = "auto",
) -> None:
    """Predict ids with trained folds (config.yaml + model.pth only) and write a submission CSV atomically."""
    from seti_fastai.data.cadence import KaggleData
    from seti_fastai.evaluate.predict import plan_prediction, run_prediction, write_submission

    KaggleData(data).check_not_input(out, force=overwrite_input)
    mode = "none" if no_calibration else calibration
    plan = plan_prediction(run_dirs, data, split, ids, tta, combine, beta, mode, packed)
    if plan.calibration.mode != "none":
        typer.echo(plan.calibration.describe())
    with prediction_bar(plan) as bar:
        predictions = run_prediction(plan, bs, workers, device, progress=bar.update)
    write_submission(predictions, out)
    typer.echo(f"wrote {len(predictions)} predictions from {len(plan.runs)} run(s) to {out}")


@command("calibrate")
def calibrate_cmd(
    run_dirs: RunDirs,
    tta: Annotated[str, typer.Option(help="none or flips: the TTA views predict will use.")] = "none",
    combine: Annotated[str, typer.Option(help="prob or logit: the combine rule predict will use.")] = "prob",
    data: Annotated[Path | None, typer.Option(help="Data root [default: each run's own --data].")] = None,
    pooled: Annotated[
        bool, typer.Option("--pooled", help="Instead: one temperature on the pooled oof.csv logits, beside the runs.")
    ] = False,
    out: Annotated[
        Path | None, typer.Option(help="--pooled: output file [default: calibration.json beside the runs].")
    ] = None,
    stack: Annotated[
        str,
        typer.Option(
            help="on: stack each run with the de-Doppler reference (its score joins the calibration's logistic "
            "fit); auto: stack where that lowers the cross-validated out-of-fold log-loss; off."
        ),
    ] = "auto",
    bs: BatchSize = 64,
    workers: LoaderWorkers = LOADER_WORKERS,
    device: Device = None,
) -> None:
    """Fit each run's temperature and bias (stacked with the de-Doppler reference where it helps) on its own
    out-of-fold cadences, predicted with --tta and --combine as predict will, and save calibration.json in each run
    directory (--pooled: one temperature for all runs)."""
    from seti_fastai.evaluate.calibration import calibrate

    if pooled:
        r = calibrate(run_dirs, out)
        typer.echo(f"temperature {r['temperature']:.4f} on {r['n']} out-of-fold cadences -> {r['path']}")
        typer.echo(
            f"log-loss {r['logloss_before']:.4f} -> {r['logloss_after']:.4f}; "
            f"ECE {r['ece_before']:.4f} -> {r['ece_after']:.4f}"
        )
        return
    if out is not None:
        fail("--out applies to --pooled; per-run calibration is written to calibration.json in each run directory")
    from tqdm import tqdm

    from seti_fastai.evaluate.calibrate import calibrate_runs

    with tqdm(unit="cadence", desc="calibrate", file=sys.stderr) as bar:
        r = calibrate_runs(run_dirs, tta, combine, data, bs, workers, device, progress=bar.update, stack=stack)
    for rec in r["runs"]:
        flat = "; T at its bound: no better than chance on its OOF, flattened to the prior" if rec["flat"] else ""
        stacked = f", reference weight {rec['reference_weight']:.3f}" if rec["stacked"] else ""
        if "cv_logloss_stacked" in rec:
            stacked += (
                f" (cross-validated log-loss {rec['cv_logloss_plain']:.4f} plain, {rec['cv_logloss_stacked']:.4f} "
                f"stacked: {'stacked' if rec['stacked'] else 'not stacked'})"
            )
        typer.echo(
            f"{rec['run']}: T {rec['temperature']:.4f}, b {rec['bias']:+.4f}{stacked} on {rec['n']} cadences; "
            f"log-loss {rec['logloss_before']:.4f} -> {rec['logloss_after']:.4f}, "
            f"ECE {rec['ece_before']:.4f} -> {rec['ece_after']:.4f}{flat}"
        )
    typer.echo(f"ensemble out-of-fold ({r['n']} cadences, tta {r['tta']}, combine {r['combine']}):")
    for name, m in r["ensemble"].items():
        typer.echo(f"  {name:<16} AUC {m['auc']:.4f}  log-loss {m['logloss']:.4f}  ECE {m['ece']:.4f}")


@command("evaluate")
def evaluate_cmd(
    predictions: Annotated[
        Path, typer.Argument(help="Score CSV: a submission, oof.csv, dedoppler_<split>.csv or a blend.")
    ],
    labels: Annotated[Path, typer.Argument(help="CSV with id,target (0/1).")],
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for the confidence interval.")] = 1000,
    reference: Annotated[
        list[Path] | None,
        typer.Option(help="Score file (id,score, e.g. from `dedoppler`) to compare on the same ids; repeatable."),
    ] = None,
) -> None:
    """ROC AUC with a 95 % bootstrap confidence interval (and log-loss, ECE for a prediction's probabilities)."""
    from seti_fastai.data.cadence import read_id_csv
    from seti_fastai.evaluate.dedoppler import reference_auc
    from seti_fastai.evaluate.metrics import evaluate

    r = evaluate(predictions, labels, n_boot)
    line = f"AUC {r['auc']:.4f} (95% CI {r['ci_low']:.4f}-{r['ci_high']:.4f}) on {r['n']} cadences"
    line += f", {r['positives']} positive"
    if "logloss" in r:
        line += f"; log-loss {r['logloss']:.4f}, ECE {r['ece']:.4f}"
    else:
        line += f" (its {r['column']} column is not a probability: no log-loss or ECE)"
    refs = [(path, reference_auc(path, read_id_csv(labels), n_boot)) for path in reference or []]
    typer.echo(line)
    for path, ref in refs:
        typer.echo(f"reference {path}: AUC {ref['auc']:.4f} (95% CI {ref['ci_low']:.4f}-{ref['ci_high']:.4f})")


@command("report")
def report_cmd(
    runs_dir: Annotated[Path, typer.Argument(help="Experiment folder holding fold*/ (and pretrain/) runs.")],
) -> None:
    """Per-fold and out-of-fold AUC table, ROC curve, reliability diagram and loss/lr plots, as PNG + markdown."""
    from seti_fastai.evaluate.report import write_report

    path, table = write_report(runs_dir)
    typer.echo(table)
    typer.echo(f"report: {path}")


# ----------------------------------------------------------------------------------------------------------------
# background matching


@command("match")
def match_cmd(
    data: DataArg,
    splits: Annotated[
        str | None, typer.Option(help="Comma-separated splits to match across [default: all present].")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="CSV to write [default: matches.csv beside the data].")] = None,
    work_dir: WorkDir = None,
    overwrite_input: OverwriteInput = False,
    min_overlap: Annotated[int, typer.Option(help="Fewest overlapping channels of a pair.")] = DEFAULT_MIN_OVERLAP,
    min_similarity: Annotated[
        float, typer.Option(help="Lowest fingerprint similarity of a pair, -1..1.")
    ] = DEFAULT_MIN_SIMILARITY,
    workers: PoolWorkers = POOL_WORKERS,
) -> None:
    """Find cadences that share a background (shifted in frequency) across splits and write matches.csv."""
    import time

    from tqdm import tqdm

    from seti_fastai.data.background import match_cadences, splits_to_match
    from seti_fastai.data.cadence import KaggleData
    from seti_fastai.io import atomic_write_csv, derived_path

    kaggle = KaggleData(data)
    path = out if out is not None else derived_path(data, "matches.csv", *work_folder(work_dir))
    if out is not None:
        kaggle.check_not_input(out, force=overwrite_input)
    chosen = splits_to_match(kaggle, splits)
    total = sum(len(kaggle.read_labels(s)) for s in chosen)
    start = time.perf_counter()
    with tqdm(total=total, unit="cadence", desc="match", file=sys.stderr) as bar:
        matches = match_cadences(kaggle, chosen, min_overlap, min_similarity, workers=workers, progress=bar.update)
    seconds = time.perf_counter() - start
    path = atomic_write_csv(matches, path)
    found = matches["id"].nunique()
    typer.echo(f"wrote {len(matches)} matches of {', '.join(chosen)} to {path}")
    typer.echo(
        f"{found} of {total} cadences ({found / total:.1%}) have at least one partner; "
        f"{seconds:.1f} s, {total / seconds:.0f} cadences/s"
    )


# ----------------------------------------------------------------------------------------------------------------
# the physics reference


@settings_command("dedoppler", DedopplerConfig, "grid")
def dedoppler_cmd(
    data: DataArg,
    split: Annotated[str, typer.Option(help="train, test, old-train or old-test.")] = "train",
    out: Annotated[
        Path | None, typer.Option(help="CSV to write [default: dedoppler_<split>.csv beside the data].")
    ] = None,
    work_dir: WorkDir = None,
    overwrite_input: OverwriteInput = False,
    bs: BatchSize = 32,
    workers: LoaderWorkers = POOL_WORKERS,
    device: Device = None,
    *,
    grid: DedopplerConfig,
) -> None:
    """Score a split with an incoherent de-Doppler search (ON minus OFF panels); write id,score,drift,channel."""
    import time

    from tqdm import tqdm

    from seti_fastai.data.cadence import KaggleData, split_layout
    from seti_fastai.evaluate.dedoppler import auc_by_fold, score_files
    from seti_fastai.io import atomic_write_csv, derived_path

    grid.validate()
    work, chosen = work_folder(work_dir)
    kaggle = KaggleData(data)
    if out is not None:
        kaggle.check_not_input(out, force=overwrite_input)
    path = out if out is not None else derived_path(data, f"dedoppler_{split}.csv", work, chosen)
    ids = kaggle.read_labels(split)["id"]
    kaggle.check_files(split, ids)
    start = time.perf_counter()
    with tqdm(total=len(ids), unit="cadence", desc="dedoppler", file=sys.stderr) as bar:
        chosen_grid = grid if grid != DedopplerConfig() else None  # the defaults follow the data's rows
        scores = score_files(kaggle.paths(split, ids), chosen_grid, bs, workers, device, progress=bar.update)
    seconds = time.perf_counter() - start
    path = atomic_write_csv(scores.assign(id=ids.to_numpy())[["id", "score", "drift", "channel"]], path)
    typer.echo(f"wrote {len(scores)} scores to {path}; {seconds:.1f} s, {len(scores) / seconds:.1f} cadences/s")
    if split_layout(split).has_labels:
        r = auc_by_fold(path, data, split, work)
        folds = ", ".join(f"fold {k} {v:.4f}" for k, v in r["folds"].items())
        typer.echo(f"AUC {r['auc']:.4f} on {r['n']} cadences" + (f" ({folds})" if folds else ""))


@settings_command("scan", ScanConfig, "scan")
def scan_cmd(
    files: Annotated[
        list[Path] | None, typer.Argument(help="The six .h5 / .fil files of one cadence, in ABACAD order.")
    ] = None,
    cadences: Annotated[
        Path | None, typer.Option(help="CSV of many cadences: columns cadence,path, six rows each in ABACAD order.")
    ] = None,
    run: Annotated[
        list[Path] | None, typer.Option("--run", help="Trained run directory scoring every window; repeatable.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Event table to write (CSV).")] = Path("events.csv"),
    resample: Annotated[
        bool, typer.Option("--resample", help="Stretch each window's time rows to a run's trained on other rows.")
    ] = False,
    turboseti_csv: Annotated[
        Path | None, typer.Option(help="Also write the events in the columns of turboSETI's find_event CSV.")
    ] = None,
    device: Device = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
    *,
    scan: ScanConfig,
) -> None:
    """Search observed cadences (Breakthrough Listen .h5 / .fil files) for drifting needles in the ON files only:
    every window scored by the de-Doppler reference (and by --run models); write the events, best first."""
    from tqdm import tqdm

    from seti_fastai.evaluate.dedoppler import resolve_device
    from seti_fastai.io import atomic_write
    from seti_fastai.observe.survey import Survey, cadence_name, read_cadence_list, run_survey
    from seti_fastai.observe.turboseti import to_event_csv

    if (not files) == (cadences is None):
        fail("give the six files of one cadence, or --cadences LIST.csv (not both)")
    listed = read_cadence_list(cadences) if cadences else ((cadence_name(files), tuple(files)),)
    survey = Survey(listed, out, scan, tuple(run or ()), resample)

    def bar(total: int):
        return tqdm(total=total, unit="channel", unit_scale=True, desc="scan", file=sys.stderr, disable=quiet).update

    table = run_survey(survey, resolve_device(device), progress=bar, say=typer.echo)
    if table is None:  # another rank than 0 under torchrun: rank 0 writes
        return
    if turboseti_csv is not None:
        files_of = {name: [str(p) for p in paths] for name, paths in listed}
        atomic_write(turboseti_csv, to_event_csv(table, files_of).to_csv)  # with find_event's index column
    typer.echo(f"wrote {len(table)} events of {len(listed)} cadence(s) to {out}")
    if len(table):
        typer.echo(table.drop(columns=["files"]).head(10).to_string(index=False))


@command("blend")
def blend_cmd(
    predictions: Annotated[
        list[Path], typer.Argument(help="Score CSVs over the same ids: submission.csv, dedoppler_test.csv, ...")
    ],
    out: Annotated[Path, typer.Option(help="CSV to write (id,rank: the blended rank in (0, 1]).")] = Path("blend.csv"),
    kaggle: Annotated[
        bool, typer.Option("--kaggle", help="Name the rank column target, as Kaggle's submission wants.")
    ] = False,
    weights: Annotated[
        str | None, typer.Option(help="Comma list, one weight per input [default: equal, or tuned with --valid].")
    ] = None,
    valid: Annotated[
        list[Path] | None,
        typer.Option(help="Validation scores of the same two inputs (oof.csv, dedoppler_train.csv), in order."),
    ] = None,
    labels: Annotated[Path | None, typer.Option(help="Labels of the validation ids (train_labels.csv).")] = None,
) -> None:
    """Blend score files by weighted normalised rank, e.g. a model stacked with the de-Doppler reference.

    With --valid and --labels the weight of a two-input blend is chosen by validation AUC (step 0.05)."""
    from seti_fastai.evaluate.blend import blend, choose_weights
    from seti_fastai.io import atomic_write_csv

    chosen, tuned = choose_weights(len(predictions), weights, valid, labels)
    if tuned is not None:
        aucs = ", ".join(f"{a:.4f}" for a in tuned["input_aucs"])
        typer.echo(
            f"weights {chosen[0]:.2f},{chosen[1]:.2f}: validation AUC {tuned['valid_auc']:.4f} on {tuned['n']} "
            f"cadences (inputs alone: {aucs})"
        )
    path = atomic_write_csv(blend(predictions, chosen, "target" if kaggle else "rank"), out)
    typer.echo(f"wrote {path}")


@command("pack")
def pack_cmd(
    data: DataArg,
    split: Annotated[str, typer.Option(help="train, test, old-train, old-test or all (every split present).")] = "all",
    out: Annotated[
        Path | None,
        typer.Option(
            help="Folder for the cache; given, it wins (train/predict look in their --out) [default: beside DATA "
            "when writable, else runs]."
        ),
    ] = None,
    workers: PoolWorkers = POOL_WORKERS,
) -> None:
    """Pack a split's cadences into one memory-mapped float16 file + id index, read instead of the files."""
    import time

    from tqdm import tqdm

    from seti_fastai.data.cadence import KaggleData
    from seti_fastai.data.pack import array_path, pack_split, packable_splits

    work, chosen = work_folder(out)
    for name in packable_splits(data, split):
        total = len(KaggleData(data).read_labels(name))
        start = time.perf_counter()
        with tqdm(total=total, unit="cadence", desc=f"pack {name}", file=sys.stderr) as bar:
            index, n, written = pack_split(data, name, work, workers, bar.update, chosen)
        if written:
            seconds = time.perf_counter() - start
            typer.echo(f"wrote {n} cadences of {name} to {array_path(index)} + {index.name}; {seconds:.1f} s")
        else:
            typer.echo(f"reusing {array_path(index)}: up to date with {name} ({n} cadences)")


# ----------------------------------------------------------------------------------------------------------------
# pseudo-labels and adversarial validation


@command("pseudo-label")
def pseudo_label_cmd(
    run_dirs: RunDirs,
    data: DataOpt = Path("data"),
    out: Annotated[Path, typer.Option(help="CSV to write (id,target,prob,round).")] = Path("pseudo.csv"),
    overwrite_input: OverwriteInput = False,
    pos_threshold: Annotated[
        float | None, typer.Option(help="Positive when the probability is at least this [default: 0.9].")
    ] = None,
    neg_threshold: Annotated[
        float | None, typer.Option(help="Negative when the probability is at most this [default: 0.1].")
    ] = None,
    top_k_pos: Annotated[int | None, typer.Option(help="Instead of thresholds: the N most probable cadences.")] = None,
    top_k_neg: Annotated[int | None, typer.Option(help="Instead of thresholds: the M least probable cadences.")] = None,
    soft: Annotated[bool, typer.Option("--soft", help="Write the probability as the target, not 0/1.")] = False,
    tta: Tta = "none",
    calibration: Calibration = "auto",
    no_calibration: NoCalibration = False,
    bs: BatchSize = 64,
    workers: LoaderWorkers = LOADER_WORKERS,
    device: Device = None,
) -> None:
    """Predict the test split with trained runs and write the confident cadences as pseudo-labels (train with
    --pseudo FILE: they join the training split of every fold, never its validation)."""
    from seti_fastai.data.cadence import KaggleData
    from seti_fastai.evaluate.predict import plan_prediction
    from seti_fastai.evaluate.pseudo import Selection, pseudo_label
    from seti_fastai.io import atomic_write_csv

    selection = Selection(pos_threshold, neg_threshold, top_k_pos, top_k_neg, soft).validate()
    KaggleData(data).check_not_input(out, force=overwrite_input)
    plan = plan_prediction(
        run_dirs, data, "test", None, tta, "prob", calibration="none" if no_calibration else calibration
    )
    if plan.calibration.mode != "none":
        typer.echo(plan.calibration.describe())
    with prediction_bar(plan) as bar:
        labels = pseudo_label(plan, selection, bs=bs, workers=workers, device=device, progress=bar.update)
    atomic_write_csv(labels, out)
    n_pos = int((labels["target"] >= 0.5).sum())
    typer.echo(
        f"wrote {len(labels)} pseudo-labels of {len(plan.ids)} test cadences "
        f"({n_pos} positive, {len(labels) - n_pos} negative, {'soft' if soft else 'hard'}, "
        f"round {labels['round'].iloc[0]}) to {out}; train with --pseudo {out}"
    )


@command("adversarial")
def adversarial_cmd(
    data: Annotated[Path, typer.Argument(help="Data folder in the Kaggle layout (train and test).")],
    out: Annotated[Path, typer.Option(help="Folder for the results.")] = Path("runs/adversarial"),
    weights: Annotated[
        bool, typer.Option("--weights", help="Also write adversarial_weights.csv (density ratio test/train).")
    ] = False,
    valid_share: Annotated[
        float, typer.Option(help="Share of each class of train put in the test-like validation fold.")
    ] = 0.25,
    n_splits: Annotated[int, typer.Option(help="Cross-validation folds of the train-vs-test classifier.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the folds, the classifier and the bootstrap.")] = 0,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for the AUC confidence interval.")] = 1000,
    top: Annotated[int, typer.Option(help="Most test-like train cadences to show.")] = 10,
    workers: PoolWorkers = POOL_WORKERS,
) -> None:
    """Adversarial validation: gradient-boosted trees on cheap per-cadence statistics tell train from test; prints
    the out-of-fold ROC AUC and the most test-like train cadences, writes a test-like validation fold."""
    from tqdm import tqdm

    from seti_fastai.data.cadence import KaggleData
    from seti_fastai.evaluate.adversarial import TEST_LIKE_SEED, adversarial_validation, check_options

    check_options(n_splits, valid_share)
    kaggle = KaggleData(data)
    total = len(kaggle.read_labels("train")) + len(kaggle.read_labels("test"))
    with tqdm(total=total, unit="cadence", desc="statistics", file=sys.stderr) as bar:
        r = adversarial_validation(
            data, out, n_splits, seed, valid_share, weights, n_boot, workers, progress=bar.update
        )
    verdict = "the splits look alike to these statistics" if r["ci_low"] <= 0.55 else "train and test differ"
    typer.echo(
        f"adversarial AUC {r['auc']:.4f} (95% CI {r['ci_low']:.4f}-{r['ci_high']:.4f}) on {r['n_train']} train and "
        f"{r['n_test']} test cadences: {verdict}"
    )
    shown = ", ".join(f"{f['feature']} {f['auc_drop']:+.3f}" for f in r["top_features"][:5])
    typer.echo(f"features that separate most (AUC drop when shuffled): {shown}")
    typer.echo(f"most test-like train cadences:\n{r['most_test_like'].head(top).to_string(index=False)}")
    typer.echo(
        f"wrote {out}/adversarial.json, adversarial_oof.csv, adversarial_folds.csv"
        + (", adversarial_weights.csv" if weights else "")
        + f"; to validate on the test-like fold: cp OUT/adversarial_folds.csv RUNS/{folds_name(2, TEST_LIKE_SEED)} and "
        f"train with --out RUNS --n-folds 2 --fold-seed {TEST_LIKE_SEED} --fold 0"
    )


def run_command(name: str) -> None:
    """Entry point of the thin `scripts/<name>.py` wrappers: `python scripts/train.py ...` = `seti-fastai train ...`."""
    app([name, *sys.argv[1:]], prog_name=f"{Path(sys.argv[0]).name}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
