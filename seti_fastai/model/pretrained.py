"""timm backbones and their weights: the architecture check, the pretrained variant of a name, weights from a local
file or folder, from timm's hub (or its cache), a one-line error that names the offline way when the network is out
of reach, and `create_backbone`, which puts these together."""

from __future__ import annotations

import difflib
import re
import socket
import urllib.error
from pathlib import Path

import timm
import torch
from torch import nn

from seti_fastai.errors import ConfigError

# timm names without pretrained weights -> the variant that has them (same tensors; TF "same" padding)
PRETRAINED_VARIANTS = {
    "efficientnetv2_s": "tf_efficientnetv2_s",
    "efficientnetv2_m": "tf_efficientnetv2_m",
    "efficientnetv2_l": "tf_efficientnetv2_l",
    "efficientnetv2_xl": "tf_efficientnetv2_xl",
}


PREFERRED_TAG = "in21k_ft_in1k"  # ImageNet-21k pre-training fine-tuned on 1k, where timm has it


WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")  # in order of preference inside a folder


OFFLINE_HINT = (
    "pass --pretrained-weights FILE (a .pth/.safetensors state dict, or a timm/Hugging Face cache folder) "
    "or --no-pretrained"
)


def check_arch(arch: str) -> None:
    """Raise a clear error for a name timm does not know, suggesting close names."""
    if timm.is_model(arch):
        return
    close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
    raise ConfigError(f"unknown architecture {arch!r}{hint}")


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:160] if lines else ""


_NETWORK_MODULES = ("requests", "urllib3", "httpx", "httpx2", "httpcore", "httpcore2", "huggingface_hub", "aiohttp")


_NETWORK_NAMES = re.compile(r"Connect|Timeout|Network|Offline|LocalEntryNotFound|Proxy|SSL|MaxRetry|RemoteDisconnected")


def is_network_error(error: BaseException) -> bool:
    """Whether `error`, or an error it was raised from, means the network could not be reached.

    Builtin socket and urllib errors by type; requests, urllib3, httpx and huggingface_hub errors by module and
    name (their classes differ between versions). A 404, a full disk or a corrupt cached file are not.
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, ConnectionError | TimeoutError | socket.gaierror | socket.herror):
            return True
        if isinstance(error, urllib.error.URLError) and not isinstance(error, urllib.error.HTTPError):  # not a 404
            return True
        for cls in type(error).__mro__:
            if cls.__module__.split(".")[0] in _NETWORK_MODULES and _NETWORK_NAMES.search(cls.__name__):
                return True
        error = error.__cause__ or error.__context__
    return False


def pretrained_name(arch: str, required: bool = True) -> str:
    """The timm `name.tag` whose weights a pretrained `arch` starts from, which is also the model built.

    A name timm has no weights for goes to its variant that has them (`efficientnetv2_m` ->
    `tf_efficientnetv2_m`, see `PRETRAINED_VARIANTS`, or the `tf_` name); the tag is `in21k_ft_in1k` where there
    is one, else timm's default. A name that already carries a tag is kept, if timm has its weights. A name with no
    weights anywhere is an error, or itself when not `required` (its weights come from a local file).
    """
    check_arch(arch)
    base = arch.split(".")[0]
    if "." not in arch:
        for name in (arch, PRETRAINED_VARIANTS.get(arch), f"tf_{arch}"):
            if name and timm.is_model(name) and timm.list_pretrained(f"{name}.*"):
                base = name
                break
    tags = [n for n in timm.list_pretrained(f"{base}.*") if n.split(".")[0] == base]
    if "." in arch:
        if arch not in tags:
            raise ConfigError(f"timm has no pretrained weights {arch}; tags of {base}: {', '.join(tags) or 'none'}")
        return arch
    if not tags and not required:
        return arch
    if not tags:
        raise ConfigError(f"timm has no pretrained weights for {arch}; pick another --arch or pass --no-pretrained")
    if f"{base}.{PREFERRED_TAG}" in tags:
        return f"{base}.{PREFERRED_TAG}"
    default = timm.models.get_pretrained_cfg(base)
    return f"{base}.{default.tag}" if default is not None and f"{base}.{default.tag}" in tags else tags[0]


def weights_file(path: str | Path, name: str) -> Path:
    """The weights file of `--pretrained-weights`: the file itself, or the one inside a folder.

    A folder may be a Hugging Face cache (`HF_HOME`, its `hub/`, or one model's `models--timm--NAME`), a torch hub
    cache (`checkpoints/`, the file named as in timm's download URL is chosen) or any folder with one weights file
    (`.safetensors` preferred over `.pth`, `.pt`, `.bin` in the same folder).
    """
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise ConfigError(f"{path}: pretrained weights not found (give a .pth/.safetensors file or a cache folder)")
    for sub in (path / f"models--timm--{name}", path / "hub" / f"models--timm--{name}"):
        if sub.is_dir():
            path = sub
            break
    files = sorted(
        p for p in path.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file() and ".no_exist" not in p.parts
    )
    cfg = timm.models.get_pretrained_cfg(name)
    url_name = Path(cfg.url).name if cfg is not None and cfg.url else None
    named = [p for p in files if p.name == url_name]
    if named:
        return named[0]
    folders = sorted({p.parent for p in files})
    if not files:
        raise ConfigError(f"{path}: no weights file ({', '.join(WEIGHT_SUFFIXES)}) in this folder")
    if len(folders) > 1:
        shown = ", ".join(str(p.relative_to(path)) for p in files[:3])
        raise ConfigError(f"{path}: {len(files)} weights files in several folders ({shown}, ...); pass one file")
    return min(files, key=lambda p: WEIGHT_SUFFIXES.index(p.suffix))


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a `.safetensors` or `.pth` file (timm's loader: `weights_only=True`, unwraps `state_dict` /
    `model` entries); one line naming the file when it cannot be read."""
    from timm.models import load_state_dict

    try:
        state = load_state_dict(str(path))
    except Exception as e:  # safetensors, zip, unpickling (refused code), permission errors...
        raise ConfigError(f"{path}: cannot read pretrained weights ({type(e).__name__}: {_first_line(e)})") from e
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path}: cannot read pretrained weights (no tensors in it)")
    return state


def _load_file(name: str, path: Path, kwargs: dict) -> nn.Module:
    """`name` with the weights of a local file; a file of another architecture is one clear error."""
    state = read_state_dict(path)
    given = set(state)
    # timm adapts the first conv's RGB kernels to in_chans (1: summed; 2: repeated, scaled) and drops a mismatched
    # classifier
    try:
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(state_dict=state), **kwargs)
    except RuntimeError as e:
        mismatch = re.search(r"size mismatch for ([\w.]+)", str(e))
        detail = f"size mismatch for {mismatch.group(1)}" if mismatch else _first_line(e)
        raise ConfigError(f"{path}: weights of another architecture, not {name} ({detail})") from e
    if isinstance(getattr(model, "pretrained_cfg", None), dict):
        model.pretrained_cfg.pop("state_dict", None)  # do not keep a second copy of the weights alive
    classifier = model.default_cfg.get("classifier", "") if isinstance(model.default_cfg, dict) else ""
    own = [k for k in model.state_dict() if not k.startswith(f"{classifier}.")]
    found = sum(k in given for k in own)
    if found < 0.9 * len(own):
        raise ConfigError(
            f"{path}: weights of another architecture, not {name} (only {found} of its {len(own)} tensors named "
            "in the file); pass the matching --arch"
        )
    return model


def _from_hub(name: str, kwargs: dict) -> nn.Module:
    """`name` with timm's weights: from the Hugging Face cache without the network when they are there, else
    downloaded once one plain request shows the hub answers (the hub client retries a refused connection for about
    25 s per file, a minute in all; offline, this fails at once)."""
    import huggingface_hub.constants as hub

    online = not hub.HF_HUB_OFFLINE
    try:
        hub.HF_HUB_OFFLINE = True  # the cache only
        return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as e:
        if not (online and is_network_error(e)):  # a corrupt cached file, or offline by the user's choice
            raise
    finally:
        hub.HF_HUB_OFFLINE = not online
    from huggingface_hub.utils import get_session

    get_session().head(hub.ENDPOINT, timeout=10)  # raises a network error when the hub is out of reach
    return timm.create_model(name, pretrained=True, **kwargs)


def describe_pretrained(cfg) -> str | None:
    """One line for the start of training: the pretrained weights and the model built from them; None when the
    weights are random or come from a run (`--init-from`, `--resume`) and the architecture is the one asked for."""
    fetch = cfg.pretrained or cfg.pretrained_weights
    name = cfg.pretrained_source or (pretrained_name(cfg.arch, not cfg.pretrained_weights) if fetch else cfg.arch)
    base = name.split(".")[0]
    built = "" if base == cfg.arch.split(".")[0] else f", built as {base} (timm has no weights for {cfg.arch})"
    if cfg.resume or cfg.init_from or not fetch:
        start = "the interrupted run's last.pth" if cfg.resume else cfg.init_from or "random weights"
        return f"{cfg.arch}: weights from {start}{built}" if built else None
    where = cfg.pretrained_weights or "timm's hub (or its cache)"
    return f"{cfg.arch}: pretrained weights {name} from {where}{built}"


def create_backbone(
    arch: str,
    in_chans: int,
    n_out: int,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    pretrained: bool = False,
    pretrained_weights: str | Path | None = None,
    pretrained_source: str | None = None,
) -> nn.Module:
    """A timm model with `in_chans` input channels and `n_out` outputs.

    With `pretrained` or `pretrained_weights` the model built is `pretrained_source` (default: `pretrained_name(arch)`)
    and starts from the weights of the file, else of timm's hub (or its cache); without either it is
    `pretrained_source` (the architecture a pretrained run was built as) or `arch`, with random weights. The name is
    checked where it comes in (the run plan, `read_run`): an unknown one here is timm's own error.
    """
    kwargs: dict = dict(in_chans=in_chans, num_classes=n_out, drop_rate=drop_rate)
    if drop_path_rate > 0:
        kwargs["drop_path_rate"] = drop_path_rate
    if pretrained_weights is not None or pretrained:
        name = pretrained_source or pretrained_name(arch, required=pretrained_weights is None)
    else:
        name = pretrained_source or arch
    if pretrained_weights is not None:
        return _load_file(name, weights_file(pretrained_weights, name), kwargs)
    if pretrained:
        try:
            return _from_hub(name, kwargs)
        except Exception as e:
            detail = f"{type(e).__name__}: {_first_line(e)}"
            if is_network_error(e):
                offline = f"could not download pretrained weights for {name} (offline?): no network ({detail})"
                raise ConfigError(f"{offline}; {OFFLINE_HINT}") from e
            raise ConfigError(f"pretrained weights for {name} failed to load ({detail})") from e
    return timm.create_model(name, pretrained=False, **kwargs)
