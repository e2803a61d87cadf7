"""Reading weight files of other projects without ever unpickling code.

`.safetensors` files go through safetensors; everything else (`.ckpt`, `.bin`, `.pt`, `.pth`)
through `torch.load(weights_only=True)`, which accepts only tensors and plain containers and
refuses any pickled class. A PyTorch Lightning checkpoint keeps its weights under
"state_dict"; that level is unwrapped.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file

from ldmkit.atomic import atomic_save_safetensors
from ldmkit.errors import UserError
from ldmkit.json_text import read_json_file

PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a `.safetensors` or pickle-format weight file, on the CPU, flat by name."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such weight file: {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own error types for corrupt headers
            raise UserError(f"{path} is not a readable safetensors file ({err})") from None
    if path.suffix not in PICKLE_SUFFIXES:
        raise UserError(f"{path}: unknown weight file type (expected .safetensors, {', '.join(PICKLE_SUFFIXES)})")
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty")
    try:
        # mmap: a 4 GB checkpoint is paged in as tensors are used, not read whole first. Only the zip
        # format (torch >= 1.6) can be mapped; files of the older one are read whole.
        data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as err:
        text = str(err).strip()
        with open(path, "rb") as f:
            head = f.read(2)
        if not zipfile.is_zipfile(path) and head[:1] != b"\x80":  # neither torch's zip nor a pickle (protocol 2+)
            raise UserError(f"{path} is not a PyTorch weight file (neither a zip archive nor a pickle)") from None
        why = ("it holds Python objects besides tensors" if text.startswith("Weights only load failed")
               else f"{type(err).__name__}: {text.splitlines()[0] if text else ''}")  # torch's advice: terminal escapes
        raise UserError(
            f"{path} could not be loaded with torch.load(weights_only=True) ({why}). ldmkit never unpickles code: "
            "if the file holds more than tensors, convert it to .safetensors with a tool you trust"
        ) from None
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping):
        raise UserError(f"{path} does not hold a state dict (found {type(data).__name__})")
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise UserError(f"{path} holds no tensors")
    return tensors


def read_sharded_safetensors(index_file: Path) -> dict[str, torch.Tensor]:
    """Weights split over shards listed by a `*.safetensors.index.json` (its `weight_map`)."""
    try:
        weight_map = read_json_file(index_file)["weight_map"]
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"{index_file} is not a readable shard index ({err})") from None
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        out.update(read_weights(index_file.parent / shard))
    return out


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write `tensors` to `path` through a temporary file in the same folder, then rename, so a
    crash never leaves half a file under the final name."""
    # safetensors refuses tensors that share storage: copy only those (a 4 GB model is not
    # copied whole just for the few that might).
    flat: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in tensors.items():
        value = value.detach().to("cpu").contiguous()
        ptr = value.untyped_storage().data_ptr()
        flat[key] = value.clone() if ptr in seen else value
        seen.add(ptr)
    atomic_save_safetensors(path, flat, metadata)
