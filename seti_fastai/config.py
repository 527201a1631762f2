"""The training configuration: one typed dataclass, code defaults < YAML file < command-line flags.

The resolved configuration is saved as `config.yaml` in every run directory; loading it back reproduces the run.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from seti_fastai.data.layouts import BACKGROUNDS, LAYOUTS, ImageRecipe
from seti_fastai.errors import ConfigError

HEADS = ("bce", "ce")
STAGES = ("finetune", "pretrain")
MIXUP_LABELS = ("max", "lerp")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUG_DEVICES = ("cpu", "gpu")
PACKED = ("auto", "on", "off")
LOGS = ("csv", "tensorboard", "wandb")
BACKGROUND_CHOICES = ("auto", *BACKGROUNDS)  # auto is resolved by the run plan (`learn.datablock.resolve_background`)


def opt(default: Any, help: str) -> Any:
    """A config field with its help text (the `--help` of the matching command-line flag)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Everything one training run needs; each field is also a command-line flag (`--field-name`)."""

    # data
    data: str = opt("data", "data root in the Kaggle layout")
    out: str = opt("runs", "runs are written to OUT/NAME/fold<k> (or OUT/NAME/pretrain)")
    name: str = opt("exp", "experiment name")
    stage: str = opt("finetune", "finetune: train/ by fold; pretrain: old_leaky_data, validated on test_old")
    fold: int = opt(0, "validation fold (finetune stage)")
    n_folds: int = opt(4, "number of stratified folds")
    fold_seed: int = opt(42, "seed of the fold split (the fold CSV is reused once written)")
    panels: str = opt("on", "on: panels 0, 2, 4; all: the six panels")
    layout: str = opt("dedoppler", "; ".join(f"{name}: {layout.help}" for name, layout in LAYOUTS.items()))
    background: str = opt(
        "auto",
        "subtract: remove the background shared with overlapping cadences (needs matches.csv); auto: subtract, "
        "matching the data first when no matches.csv is found (beside the data or in --out); none. config.yaml "
        "records what auto resolved to",
    )
    matches: str | None = opt(None, "matches.csv of `seti-fastai match` [default: beside the data, else in --out]")
    max_partners: int = opt(2, "overlapping partners used to cover the band when subtracting the background")
    rows: int | None = opt(
        None, "time rows per panel of the cadences [default: found from the data; 273 on Kaggle, 16 in GBT files]"
    )
    standardize: bool = opt(False, "re-standardise each panel on load (the Kaggle files already are)")
    pos_share: float | None = opt(0.25, "share of positives per training batch (weighted sampling); 0: plain shuffling")
    workers: int = opt(min(8, os.cpu_count() or 1), "DataLoader worker processes")
    # fast data path: the packed cache of `seti-fastai pack`
    packed: str = opt(
        "auto",
        "auto: read a split's packed cache (`seti-fastai pack`) when there is one, beside the data or in --out; "
        "on: require it; off: read the .npy files",
    )
    # model
    arch: str = opt("efficientnetv2_s", "any timm architecture name")
    pretrained: bool = opt(
        True, "ImageNet weights from timm's hub or cache; offline: --pretrained-weights or --no-pretrained"
    )
    pretrained_weights: str | None = opt(
        None, "local backbone weights (no network): a .pth/.safetensors state dict or a timm/Hugging Face cache folder"
    )
    drop_rate: float = opt(0.2, "dropout before the classifier")
    drop_path_rate: float = opt(0.1, "stochastic depth, where the architecture supports it")
    resizer: bool = opt(True, "learned resizing network (Talebi & Milanfar 2021) in front of the backbone")
    resize_mode: str = opt("bilinear", "how the image is brought to --size: bilinear, antialias (bilinear) or area")
    head: str = opt("bce", "bce: 1 logit + BCE with logits; ce: 2 logits + cross-entropy")
    pos_weight: float | None = opt(None, "positive-class weight of the loss (the seed's weighted CE)")
    # schedule
    epochs: int = opt(20, "training epochs (one-cycle schedule)")
    lr: float = opt(1e-3, "peak one-cycle learning rate of the head (and resizer)")
    body_lr_mult: float = opt(1.0, "the backbone's learning rate is lr * body_lr_mult (discriminative rates)")
    wd: float = opt(1e-2, "weight decay")
    pct_start: float = opt(0.25, "share of the one-cycle schedule spent warming up")
    bs: int = opt(32, "batch size")
    size: list[int] = opt([512], "model input size; a comma list (128,256) is a progressive-resizing schedule")
    # augmentation (training split only)
    freq_flip_p: float = opt(0.5, "probability of a frequency flip (the seed's vflip)")
    affine_p: float = opt(0.5, "probability of a shift/scale (no rotation)")
    motion_blur_p: float = opt(0.5, "probability of motion blur")
    spec_augment_p: float = opt(0.5, "probability of SpecAugment (a random time band and frequency band zeroed)")
    spec_alpha: float = opt(0.1, "largest band, as a share of the image height or width")
    mixup_p: float = opt(0.5, "share of training batches mixed")
    mixup_alpha: float = opt(1.0, "Beta(alpha, alpha) mixing weights")
    mixup_label: str = opt("max", "max: OR of the two labels (top teams); lerp: weighted mean")
    aug_off_last: int = opt(0, "switch augmentation and mixup off for the last k epochs")
    inject: float = opt(0.0, "probability that a negative training cadence gets a setigen needle and becomes positive")
    inject_shapes: str = opt("line=1,squared=1,sine=1,random_walk=1", "needle shapes injected, as shape=weight pairs")
    inject_brightness: list[float] = opt([0.25, 2.0], "injected needle brightness range, noise std (log-uniform)")
    inject_max_drift: float = opt(0.12, "injected needles drift up to this many channels per row, either sign")
    # run
    seed: int = opt(42, "seed of weights, sampling, augmentation and mixup")
    init_from: str | None = opt(
        None, "run directory (pre-training, or this fold) or .pth state dict that starts this run (same architecture)"
    )
    init_min_share: float = opt(0.5, "--init-from fails when fewer than this share of the model's tensors load")
    resume: bool = opt(False, "go on from the last finished epoch of an interrupted run")
    precision: str = opt("auto", "auto: bf16 (or fp16) on CUDA, fp32 on CPU")
    lr_find_iters: int = opt(100, "iterations of lr-find")
    # GPU speed (issue 9): memory format, compilation, where the augmentations run
    channels_last: bool | None = opt(
        None, "channels-last model memory format; unset: on CUDA only (bench/channels_last.py)"
    )
    compile: bool = opt(False, "torch.compile the model (first batches are slow while it compiles)")
    aug_device: str = opt(
        "cpu", "cpu: augment items in the DataLoader workers; gpu: augment batches on the device (workers only load)"
    )
    # pseudo-labels (seti-fastai pseudo-label)
    pseudo: str | None = opt(
        None, "CSV of pseudo-labelled test cadences (id,target in [0, 1]) added to the training split of every fold"
    )
    sample_weights: str | None = opt(
        None,
        "CSV of training weights (id,weight > 0; e.g. adversarial_weights.csv of `seti-fastai adversarial --weights`):"
        " each cadence is drawn in proportion to its weight within its class; cadences not listed weigh 1",
    )
    # pretrained weights and experiment logs
    pretrained_source: str | None = opt(
        None,
        "timm name.tag of the pretrained weights, also the model built (efficientnetv2_m -> "
        "tf_efficientnetv2_m.in21k_ft_in1k) [default: resolved from --arch and saved in config.yaml]",
    )
    log: list[str] = opt([], "experiment logs in the run directory, a comma list of csv, tensorboard, wandb (offline)")

    def validate(self) -> TrainConfig:
        """Raise `ConfigError` naming the first bad value; return self."""

        def choose(name: str, options: tuple[str, ...]) -> None:
            if getattr(self, name) not in options:
                raise ConfigError(f"{name} must be one of {', '.join(options)}; got {getattr(self, name)!r}")

        choose("background", BACKGROUND_CHOICES)
        ImageRecipe.from_config(self, background="none")  # panels, layout, resize_mode
        choose("head", HEADS)
        choose("stage", STAGES)
        choose("mixup_label", MIXUP_LABELS)
        choose("precision", PRECISIONS)
        choose("aug_device", AUG_DEVICES)
        choose("packed", PACKED)
        for name, least in (("epochs", 1), ("bs", 1), ("n_folds", 2)):
            if getattr(self, name) < least:
                raise ConfigError(f"{name} must be >= {least}; got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0; got {self.lr}")
        if not self.size or any(s < 32 for s in self.size):
            raise ConfigError(f"size must be one or more sizes of at least 32; got {self.size}")
        if len(self.size) > self.epochs:
            raise ConfigError(f"size schedule has {len(self.size)} sizes for {self.epochs} epochs")
        if self.pos_share is not None and not 0.0 < self.pos_share < 1.0:
            raise ConfigError(f"pos_share must be in (0, 1) or empty; got {self.pos_share}")
        probabilities = [f.name for f in dataclasses.fields(self) if f.name.endswith("_p")]  # augmentations, mixup
        for name in [*probabilities, "pct_start"]:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1]; got {getattr(self, name)}")
        if self.workers < 0 or self.aug_off_last < 0 or self.mixup_alpha <= 0:
            raise ConfigError("workers and aug_off_last must be >= 0, mixup_alpha > 0")
        if not 0.0 <= self.init_min_share <= 1.0:
            raise ConfigError(f"init_min_share must be in [0, 1]; got {self.init_min_share}")
        if self.max_partners < 1:
            raise ConfigError(f"max_partners must be at least 1; got {self.max_partners}")
        if not 0.0 <= self.inject <= 1.0:
            raise ConfigError(f"inject must be in [0, 1]; got {self.inject}")
        if self.inject > 0 and not LAYOUTS[self.layout].linear:
            linear = " or ".join(name for name, layout in LAYOUTS.items() if layout.linear)
            raise ConfigError(
                f"--inject adds a needle's image to the cadence's: layout {self.layout!r} is not linear "
                f"(use --layout {linear})"
            )
        if len(self.inject_brightness) != 2:
            raise ConfigError(f"inject_brightness must be two numbers, low,high; got {self.inject_brightness}")
        self.needle_spec()  # raises on bad shapes, brightness or drift
        bad_logs = [v for v in self.log if v not in LOGS]
        if bad_logs:
            raise ConfigError(f"log must be a comma list of {', '.join(LOGS)}; got {','.join(self.log)!r}")
        return self

    def needle_spec(self):
        """The `NeedleSpec` of `--inject` (shapes, brightness, drift), validated."""
        from seti_fastai.data.inject import NeedleSpec, parse_shape_weights

        lo, hi = self.inject_brightness
        shapes = parse_shape_weights(self.inject_shapes, "inject_shapes")
        return NeedleSpec(shapes, (lo, hi), self.inject_max_drift).validate()

    def size_schedule(self) -> list[int]:
        """The input size of each epoch: the sizes share the epochs evenly, the last size taking the remainder."""
        per = self.epochs // len(self.size)
        sizes = [s for s in self.size[:-1] for _ in range(per)]
        return sizes + [self.size[-1]] * (self.epochs - len(sizes))

    def run_dir(self) -> Path:
        leaf = "pretrain" if self.stage == "pretrain" else f"fold{self.fold}"
        return Path(self.out) / self.name / leaf

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _coerce(name: str, value: Any) -> Any:
    """Check (and gently convert) one value against the field's type hint."""
    hint = typing.get_type_hints(TrainConfig)[name]
    optional = isinstance(hint, types.UnionType) and type(None) in hint.__args__
    if name == "pos_share" and value == 0:
        value = None
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name} cannot be empty")
    base = next(a for a in hint.__args__ if a is not type(None)) if optional else hint
    if typing.get_origin(base) is list:
        items = value if isinstance(value, list) else str(value).split(",")
        kind = typing.get_args(base)[0]
        what = "integers" if kind is int else "numbers"
        try:
            values = [kind(v) for v in items]
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{name} must be a list of {what}; got {value!r}") from None
        if kind in (int, float) and not all(math.isfinite(v) for v in values):
            raise ConfigError(f"{name} must be a list of finite {what}; got {value!r}")
        return values
    if base is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false; got {value!r}")
        return value
    if base in (int, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name} must be a number; got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number; got {value!r}")
        if base is int and float(value) != int(value):
            raise ConfigError(f"{name} must be an integer; got {value!r}")
        return base(value)
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string; got {value!r}")
    return value


def read_mapping(path: Path | str, kind: str = "config", missing_hint: str = "") -> dict[str, Any]:
    """The YAML mapping in a `kind` file (config, recipe), not yet checked against the fields; every way of failing
    is one ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {kind} file not found{missing_hint}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text file (byte {e.start} is not UTF-8); give a YAML {kind} file") from e
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of {kind} keys")
    return raw


def read_yaml(path: Path | str) -> dict[str, Any]:
    """A YAML mapping of config fields, checked for unknown keys."""
    raw = read_mapping(path)
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"{path}: unknown config field(s) {', '.join(unknown)}")
    return raw


def given_values(yaml_path: Path | str | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The fields the user set: the YAML file's, then `overrides` (None values mean "not given"), not yet checked."""
    values: dict[str, Any] = {}
    if yaml_path is not None:
        values.update(read_yaml(yaml_path))
    for key, value in (overrides or {}).items():
        if key not in _FIELDS:
            raise ConfigError(f"unknown config field {key}")
        if value is not None:
            values[key] = value
    return values


def build_config(yaml_path: Path | str | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Code defaults, then the YAML file, then `overrides` (None values mean "not given"), checked."""
    return config_from(given_values(yaml_path, overrides))


def config_from(values: dict[str, Any]) -> TrainConfig:
    """The checked config of the fields the user set (`given_values`), defaults for the rest."""
    return TrainConfig(**{k: _coerce(k, v) for k, v in values.items()}).validate()


RESUME_SAFE = ("workers", "resume")  # what a resumed run may take from the command instead of its config.yaml
RUN_IDENTITY = ("out", "name", "fold", "stage")  # these found the run directory, spelled as the user likes
PATH_FIELDS = ("data", "matches", "pseudo", "sample_weights", "init_from", "pretrained_weights")


def resume_conflicts(saved: TrainConfig, cfg: TrainConfig, given: Collection[str] | None = None) -> list[str]:
    """The `--flag value (saved value)` of each field of `cfg` that differs from a run's saved config and that
    resuming cannot change: among `given` (the fields the user set), or every field when None."""
    derived = ("pretrained_source",)  # resolved from --arch when the run started
    names = [n for n in (given if given is not None else _FIELDS) if n not in (*RESUME_SAFE, *RUN_IDENTITY, *derived)]
    conflicts = []
    for name in names:
        mine, theirs = getattr(cfg, name), getattr(saved, name)
        if (name, mine) in (("background", "auto"), ("rows", None)):  # the saved run holds what these resolved to
            continue
        if name in PATH_FIELDS and mine is not None and theirs is not None:
            mine, theirs = Path(mine).resolve(), Path(theirs).resolve()
        if mine != theirs:
            conflicts.append(f"--{name.replace('_', '-')} {getattr(cfg, name)} (saved {getattr(saved, name)})")
    return conflicts


def save_config(cfg: TrainConfig, path: Path | str) -> Path:
    from seti_fastai.io import atomic_write_text

    return atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def load_run_config(run_dir: Path | str) -> TrainConfig:
    """The configuration saved in a run directory."""
    path = Path(run_dir) / "config.yaml"
    return build_config(path)
