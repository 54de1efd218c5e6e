"""Checkpoints: atomic writes, `weights_only` loading, and the model arguments needed to rebuild the network."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import shutil
import struct
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mde import __version__
from mde.errors import InputError, ModelError
from mde.io import atomic_path, require_file
from mde.runtime.metadata import MAX_INPUT_SIDE, MIN_DEPTH_RANGE
from mde.train.config import MAX_DEPTH_LIMIT
from mde.train.model import BACKBONES, DECODERS, DepthNet, ModelArgs, build_model

FORMAT = "mde.checkpoint/1"
ARTIFACT_SUFFIXES = (".onnx", ".engine", ".plan")  # what `mde export` writes: not loadable as a checkpoint


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` (must hold `model_args` and `model`) atomically: temp file, fsync, rename."""
    state = {"format": FORMAT, "mde_version": __version__, **state}
    with atomic_path(path) as tmp:
        try:
            torch.save(state, tmp)
        except RuntimeError as err:  # torch's zip writer reports a failed write (a full disk) without an errno
            if not any(sign in str(err) for sign in ("PytorchStreamWriter", "unexpected pos", "write failed")):
                raise
            free = shutil.disk_usage(tmp.parent).free / 2**20
            raise InputError(f"cannot write the checkpoint ({free:.0f} MiB free there; torch: "
                             f"{str(err).splitlines()[0]})", path) from None


def checkpoint_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer, replacing: bool = False) -> int:
    """About what a run's two checkpoints take on disk: best.pt (the weights) and last.pt (the weights and the
    optimizer's state), with a tenth for pickling's headroom; `replacing`: with the new copy of last.pt that is
    written beside the old one before it takes its place. Before the first step, the optimizer's state is
    counted as it will be (AdamW: two moments per trained weight; SGD: one momentum)."""
    def size(tensors: Any) -> int:
        return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))

    weights = size(model.state_dict().values())
    moments = size(v for state in optimizer.state_dict()["state"].values() for v in state.values())
    if not moments:  # no step taken yet
        per_weight = 2 if isinstance(optimizer, torch.optim.AdamW) else 1
        moments = per_weight * size(p for group in optimizer.param_groups for p in group["params"])
    last = weights + moments
    return int(1.1 * (weights + last + (last if replacing else 0)))


def save_untrained(path: str | Path, args: ModelArgs, images: np.ndarray | None = None, *,
                   device: str | torch.device = "cpu", config: dict[str, Any] | None = None) -> DepthNet:
    """Write a checkpoint of a random-weight DepthNet (seed 0), for tests, benchmarks and dry runs.

    Args:
        path: where the checkpoint goes.
        args: the network to build.
        images: N x 3 x H x W float32 in [0, 1], as `preprocess` makes them; when given, the
            BatchNorm statistics come from them (in batches of 8), so the outputs vary with the
            image as a trained network's do. Without them BatchNorm is the identity.
        device: where the statistics are gathered.
        config: stored as the checkpoint's `config`.

    Returns:
        the network, in eval mode on `device`.
    """
    torch.manual_seed(0)
    model = build_model(args).to(device)
    if images is not None:
        model.train()
        with torch.no_grad():
            for chunk in torch.split(torch.from_numpy(images), 8):
                model(chunk.to(device))
    model.eval()
    save_checkpoint(path, {"model_args": asdict(args), "config": config or {}, "epoch": 0, "metrics": {},
                           "model": {k: v.cpu() for k, v in model.state_dict().items()}})
    return model


def weights_sha256(model: DepthNet) -> str:
    """SHA-256 of a loaded model: its arguments and every weight, in order.

    `best.pt` and `last.pt` of one epoch differ as files (`last.pt` adds the optimizer) but hold
    the same model; export records this and parity compares artifacts to checkpoints by it.
    """
    digest = hashlib.sha256(json.dumps(asdict(model.args), sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with `weights_only=True` (no pickled code runs); raise `ModelError` if unusable."""
    path = require_file(path, "checkpoint")
    if path.suffix.lower() in ARTIFACT_SUFFIXES:
        if _starts_like_a_checkpoint(path, unreadable=False):  # a checkpoint saved under an artifact's name
            raise ModelError(f"this is a PyTorch checkpoint named {path.suffix}; rename it to .pt (an {path.suffix} "
                             "is an exported model, which mde never reads as a checkpoint)", path)
        raise ModelError(f"this is an exported model ({path.suffix}); expected a PyTorch checkpoint (.pt)", path)
    if _is_numpy_archive(path):  # export's golden.npz beside the models: torch.load called it a corrupt checkpoint
        raise ModelError("this is a numpy archive (.npz: export's golden.npz holds PyTorch's outputs, not its "
                         "weights); expected a PyTorch checkpoint (.pt)", path)
    try:
        with warnings.catch_warnings():  # a stray first byte reads as "pickle protocol 222", a warning before the error
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not _starts_like_a_checkpoint(path) and "GLOBAL" not in str(err):  # not code a pickle refers to, but
            raise ModelError(NOT_A_CHECKPOINT, path) from None  # a PNG renamed .pt ("Unsupported operand 80")
        raise ModelError(f"refused: not a plain weights checkpoint ({_unpickling_reason(err)}); mde does not "
                         "unpickle Python objects", path) from None
    except (KeyError, IndexError, struct.error):  # the weights-only unpickler on bytes that are no pickle at all
        raise ModelError(NOT_A_CHECKPOINT, path) from None
    except OSError as err:  # the file, not its content: permissions, an I/O error
        raise ModelError(f"cannot read the checkpoint ({err.strerror or err})", path) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as err:
        if not _starts_like_a_checkpoint(path):  # zeros: torch blamed a "legacy .tar format", with its unsafe advice
            raise ModelError(NOT_A_CHECKPOINT, path) from None
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelError(f"corrupt or truncated checkpoint ({first})", path) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ModelError(f"not an mde checkpoint (expected format {FORMAT})", path)
    return state


NOT_A_CHECKPOINT = "not a PyTorch checkpoint (neither a zip archive nor a pickle)"


def _is_numpy_archive(path: Path) -> bool:
    """Whether `path` is numpy's `.npz` (a zip of `.npy` members), which `torch.save`'s zip never is."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    return bool(names) and all(name.endswith(".npy") for name in names)


def _starts_like_a_checkpoint(path: Path, unreadable: bool = True) -> bool:
    """Whether `path` begins as `torch.save` writes: a zip archive (`PK`), or a pickle of protocol 2 or later
    (the PROTO opcode, 0x80); `unreadable` where it cannot be read (not for this check to say)."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return unreadable
    return head.startswith((b"PK", b"\x80"))


def _unpickling_reason(err: pickle.UnpicklingError) -> str:
    """What the weights-only unpickler refused, in a few words: torch's message is a paragraph of advice
    (with terminal escape codes) around the one fact, the object that is no weight."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)|unsupported GLOBAL ([\w.]+)", str(err))
    if found:
        return f"it refers to {found.group(1) or found.group(2)}, which is no tensor"
    found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(err))
    if found:  # torch's advice to load it with weights_only=False is no advice for mde: give the fact
        return found.group(1).strip()
    first = str(err).splitlines()[0] if str(err) else ""
    return re.sub(r"\x1b\[[0-9;]*m", "", first) or "unsafe pickle"


# What a resume restores from a training checkpoint (`last.pt`), and the type each must have.
TRAINING_STATE = {"epoch": int, "epoch_step": int, "step": int, "optimizer": dict, "scheduler": dict,
                  "scaler": dict, "rng": dict}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# What a resume also reads where it is there (later versions added these), and what each must hold.
OPTIONAL_STATE: dict[str, Callable[[Any], bool]] = {
    "best_rmse": _number, "best_from": _count, "loss_sum": _number, "loss_count": _count,
    "val_data": lambda v: isinstance(v, str), "steps_per_epoch": _count, "world_size": lambda v: _count(v) and v > 0,
    "records": lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v),
}


def _config_problems(config: Any, model_args: Any) -> list[str]:
    """The saved config's fields that hold another kind of value than the option (a checkpoint edited by hand, or
    damaged), and an image size other than the network's."""
    from mde.train.config import TrainConfig, same_size

    if not isinstance(config, dict):
        return ["config"]
    defaults = TrainConfig().to_dict()
    wrong = []
    for name, value in config.items():
        if name not in defaults:  # a newer version's option: from_dict leaves it out
            continue
        default = defaults[name]
        if name == "image_size":  # N, or [height, width]
            sides = value if isinstance(value, (list, tuple)) and len(value) == 2 else (value,)
            if not all(_count(side) for side in sides):
                wrong.append(f"config.{name}")
            continue
        kind_ok = (isinstance(value, bool) if isinstance(default, bool)
                   else isinstance(value, str) if isinstance(default, str)
                   else isinstance(value, int) and not isinstance(value, bool) if isinstance(default, int)
                   else _number(value) or (default is None and value is None))  # depth_scale: None is unset
        if not kind_ok:
            wrong.append(f"config.{name}")
    if isinstance(model_args, dict) and not same_size(config.get("image_size"), model_args.get("image_size")):
        wrong.append("config.image_size (not the network's)")
    return wrong


def check_training_state(state: dict[str, Any], path: str | Path) -> None:
    """Raise `ModelError` naming `path` when a checkpoint lacks what a resume restores, or holds it in another form
    (damaged, edited, or foreign)."""
    wrong = [key for key, kind in TRAINING_STATE.items()
             if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool)]
    wrong += [key for key in ("epoch", "epoch_step", "step") if key not in wrong and state[key] < 0]
    wrong += [key for key, ok in OPTIONAL_STATE.items() if key in state and not ok(state[key])]
    wrong += _config_problems(state.get("config"), state.get("model_args"))
    if not wrong:
        groups = state["optimizer"].get("param_groups")
        if not (isinstance(groups, list) and groups and isinstance(state["optimizer"].get("state"), dict)):
            wrong.append("optimizer")
        if "last_epoch" not in state["scheduler"]:
            wrong.append("scheduler")
        if not all(k in state["rng"] for k in ("torch", "numpy", "python")):
            wrong.append("rng")
    if wrong:
        raise ModelError(f"damaged training checkpoint: {', '.join(wrong)} missing or malformed; cannot resume",
                         path)


def model_from_checkpoint(state: dict[str, Any], path: str | Path = "checkpoint") -> DepthNet:
    """Rebuild the network from a loaded checkpoint; a mismatched architecture is a `ModelError`.

    Checkpoints written before decoders had names hold no `decoder` and load as `report`.
    """
    try:
        args = ModelArgs(**state["model_args"])
    except (KeyError, TypeError) as err:
        raise ModelError(f"checkpoint has no valid model_args ({err})", path) from None
    check_model_args(args, path)
    if not isinstance(state.get("model"), Mapping):
        raise ModelError(f"checkpoint holds no weights (its 'model' is {type(state.get('model')).__name__}, not "
                         "a state dict)", path)
    model = build_model(args)
    try:
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as err:
        raise ModelError(f"weights do not match a {args.backbone}/{args.decoder} DepthNet "
                         f"({_mismatch(model.state_dict(), state['model']) or str(err).splitlines()[0]})",
                         path) from None
    return model


def _mismatch(own: Mapping[str, Any], given: Mapping[str, Any]) -> str:
    """How `given` weights differ from a model's `own`, in a few words: counts and a first example of the tensors
    missing, unexpected and of another shape (PyTorch's message lists them all, over many lines)."""
    missing = [k for k in own if k not in given]
    unexpected = [k for k in given if k not in own]
    shaped = [k for k in own if k in given and hasattr(given[k], "shape") and tuple(given[k].shape) != own[k].shape]
    parts = [f"{len(keys)} {what} (e.g. {keys[0]})" for keys, what in
             ((missing, "missing"), (unexpected, "unexpected"), (shaped, "of another shape")) if keys]
    return ", ".join(parts)


def check_model_args(args: ModelArgs, path: str | Path) -> None:
    """Refuse model_args no training writes (a damaged or hand-edited checkpoint), naming the file: they would
    fail deep inside the network's build or export, or name an option the command does not have."""
    if args.backbone not in BACKBONES:
        raise ModelError(f"unknown backbone {args.backbone!r} in checkpoint", path)
    if args.decoder not in DECODERS:
        raise ModelError(f"unknown decoder {args.decoder!r} in checkpoint; this mde knows "
                         f"{', '.join(DECODERS)}", path)
    size, depth = args.image_size, args.max_depth
    sides = size if isinstance(size, tuple) and len(size) == 2 else (size,)
    if not all(isinstance(side, int) and not isinstance(side, bool) and 32 <= side <= MAX_INPUT_SIDE
               and side % 32 == 0 for side in sides):
        raise ModelError(f"checkpoint's model_args.image_size must be a multiple of 32 in 32..{MAX_INPUT_SIDE}, or "
                         f"[height, width] of them, got {size!r}", path)
    if not (isinstance(depth, (int, float)) and not isinstance(depth, bool)
            and MIN_DEPTH_RANGE <= depth <= MAX_DEPTH_LIMIT):
        raise ModelError(f"checkpoint's model_args.max_depth must be a number of metres in [{MIN_DEPTH_RANGE:g}, "
                         f"{MAX_DEPTH_LIMIT:g}], got {depth!r}", path)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[DepthNet, dict[str, Any]]:
    """Load a checkpoint as an eval-mode model on `device`, and the checkpoint dict."""
    state = load_checkpoint(path)
    model = model_from_checkpoint(state, path).to(device).eval()
    return model, state
