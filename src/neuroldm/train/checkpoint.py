"""Checkpoints without pickle: one safetensors file holding every tensor, with the rest of the state as JSON.

A training state is a nested structure of dicts, lists, tuples, numbers, strings and tensors (a model's
``state_dict``, an optimiser's, RNG states, the step). `save_state` splits it into

- the tensors, stored under their path in the structure (``"optimizer/state/0/exp_avg"``), and
- a JSON skeleton with a ``{"__tensor__": path}`` marker where each tensor was,

and writes both into one ``.safetensors`` file (the skeleton in its string metadata), through a temporary file
and a rename, so a crash never leaves half a checkpoint. Integer dict keys (optimiser states) and tuples
survive the round trip exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from neuroldm.errors import InputError
from neuroldm.io import atomic_path

_META_KEY = "neuroldm_state"


def _flatten(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": path}
    if isinstance(obj, np.ndarray):  # e.g. numpy's RNG state; restored as an ndarray of the same dtype
        tensors[path] = torch.from_numpy(np.ascontiguousarray(obj).copy())
        return {"__ndarray__": path}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _flatten(v, f"{path}/{k}", tensors) for k, v in obj.items()}
        return {"__items__": [[k, _flatten(v, f"{path}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_flatten(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_flatten(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {path or '/'} in a checkpoint")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return tensors[obj["__ndarray__"]].numpy()
        if "__items__" in obj:
            return {k: _unflatten(v, tensors) for k, v in obj["__items__"]}
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
        return {k: _unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_state(state: dict[str, Any], path: str | Path) -> None:
    """Write `state` atomically as one safetensors file."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, "", tensors)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(skeleton)})


def load_state(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a file written by `save_state` (no code is executed: safetensors + JSON only)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for a damaged header
        raise InputError(path, f"not a readable safetensors checkpoint ({e})") from None
    if _META_KEY not in meta:
        raise InputError(path, "not a neuroldm checkpoint (no state metadata)")
    return _unflatten(json.loads(meta[_META_KEY]), tensors)


def checkpoint_step(path: str | Path) -> int:
    """The training step of a file written by `save_state`, from its metadata alone (-1 when unreadable)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return int(json.loads((f.metadata() or {})[_META_KEY]).get("step", -1))
    except Exception:  # noqa: BLE001 (a damaged checkpoint is simply not a candidate to resume from)
        return -1


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Just the tensors of a safetensors file, by name (for plain weight files)."""
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        return {k: f.get_tensor(k) for k in f.keys()}
