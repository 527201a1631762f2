"""Every read and write of weights and resume state: `model.pth` (a plain state dict) and `last.pth` (model,
optimizer, epoch, best AUC), always loaded with `weights_only=True`, so a file from someone else cannot run code."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from seti_fastai.errors import ConfigError, RunDirError, first_sentence
from seti_fastai.io import atomic_path


def _torch_load(path: Path) -> Any:
    """`torch.load(weights_only=True)` with one clear error per way a file can be bad."""
    if not path.is_file():
        raise RunDirError(f"{path}: file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" in str(e).lower():  # the safe loader stopped: never unpickle it
            called = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
            if called:
                raise RunDirError(f"{path}: refused: it would run code (it calls {called.group(1)})") from e
            detail = re.search(r"WeightsUnpickler error: \s*(.+)", str(e))
            why = detail.group(1).strip()[:80] if detail else "not plain tensors"
            raise RunDirError(f"{path}: refused: the safe loader cannot read it ({why}); it may run code") from e
        raise RunDirError(f"{path}: truncated or corrupt ({first_sentence(e)})") from e
    except (PermissionError, IsADirectoryError) as e:
        raise RunDirError(f"{path}: cannot read ({e.strerror})") from e
    except Exception as e:  # zip errors (RuntimeError), EOFError, KeyError of a garbled legacy pickle, ...
        raise RunDirError(f"{path}: truncated or corrupt ({first_sentence(e)})") from e


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and any(isinstance(v, torch.Tensor) for v in obj.values())
        and all(
            isinstance(k, str) and (isinstance(v, torch.Tensor) or k.endswith("_extra_state")) for k, v in obj.items()
        )
    )


def load_weights(path: Path | str) -> dict[str, torch.Tensor]:
    """A plain state dict (names to tensors), loaded with `weights_only=True`: a file that would run code is refused.

    Errors name the file and say which case it is: not found, truncated or corrupt, refused (it would run code),
    or not a state dict.
    """
    path = Path(path)
    obj = _torch_load(path)
    if not _is_state_dict(obj):
        what = "a resume checkpoint (use model.pth)" if isinstance(obj, dict) and "opt" in obj else type(obj).__name__
        raise RunDirError(f"{path}: not a state dict of tensors; it holds {what}")
    return obj


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """The resume checkpoint `last.pth`: model state dict, optimizer state, epoch, best AUC and its epoch."""
    path = Path(path)
    obj = _torch_load(path)
    keys = {"model", "opt", "epoch", "best", "best_epoch"}
    if not (isinstance(obj, dict) and keys <= set(obj) and _is_state_dict(obj["model"])):
        raise RunDirError(f"{path}: not a resume checkpoint (needs {', '.join(sorted(keys))})")
    return obj


def _plain(value):
    if isinstance(value, np.generic):  # before float: np.float64 is a float subclass torch will not unpickle
        return value.item()
    if isinstance(value, torch.Tensor | bool | int | float | str | None):
        return value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value]  # lists, tuples, fastcore's L


def plain_opt_state(opt) -> dict:
    """A fastai optimizer's state as plain lists, dicts and tensors, loadable with `weights_only=True`."""
    return _plain(dict(opt.state_dict()))


def load_opt_state(opt, state: dict) -> None:
    from fastcore.foundation import L

    opt.load_state_dict({"state": state["state"], "hypers": L(state["hypers"])})


class InitResult(NamedTuple):
    """What `--init-from` loaded: the weights file, tensors loaded, tensors the model has."""

    source: str
    loaded: int
    total: int


def load_matching(model: torch.nn.Module, weights: Path, min_share: float) -> InitResult:
    """Load the tensors of a weights file (a run's model.pth, or a bare timm backbone) whose name and shape fit
    `model`; the others (a different head) are skipped. Fewer than `min_share` of the model's tensors is an error."""
    state = load_weights(weights)
    own = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}

    def matching(prefix: str) -> dict[str, torch.Tensor]:
        pairs = ((prefix + k, v) for k, v in state.items() if isinstance(v, torch.Tensor))
        return {k: v for k, v in pairs if k in own and own[k].shape == v.shape}

    loaded = max((matching(p) for p in ("", "backbone.")), key=len)
    share = len(loaded) / max(len(own), 1)
    if share < min_share:
        raise ConfigError(
            f"--init-from {weights}: only {len(loaded)} of the model's {len(own)} tensors match ({share:.0%}); "
            f"check --arch and the input layout, or lower --init-min-share (now {min_share:g})"
        )
    model.load_state_dict(loaded, strict=False)
    return InitResult(str(weights), len(loaded), len(own))


def save_weights(model: torch.nn.Module, path: Path) -> Path:
    """`model.pth`: the model's plain state dict, written atomically."""
    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)
    return path


def save_resume(path: Path, model: torch.nn.Module, opt, epoch: int, best: float, best_epoch: int, scaler=None) -> Path:
    """`last.pth`, written atomically: what `--resume` needs to go on after `epoch` (model, fastai optimizer state,
    best AUC and its epoch, and the fp16 gradient scaler's state when one is enabled), all loadable with
    `weights_only=True`."""
    checkpoint = dict(model=model.state_dict(), opt=plain_opt_state(opt), epoch=epoch, best=best, best_epoch=best_epoch)
    if scaler is not None and scaler.is_enabled():
        checkpoint["scaler"] = _plain(scaler.state_dict())
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)
    return path
