"""File I/O with one clear error: atomic writes (a killed process never leaves a half-written file
that looks whole), JSON, and PyTorch checkpoints read without unpickling objects."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path: str | os.PathLike, data: Any, sort_keys: bool = True) -> None:
    """Write ``data`` as indented JSON; ``sort_keys=False`` keeps the dicts' order (table columns)."""
    write_text(path, json.dumps(data, indent=2, sort_keys=sort_keys, default=_jsonable) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read JSON, turning a corrupt file into one clear error."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path} is not valid JSON ({e.msg} at line {e.lineno}); the file is corrupt"
        ) from e


def read_torch_weights(file: str | os.PathLike | IO[bytes], source: str | os.PathLike) -> Any:
    """``torch.load(file, weights_only=True)`` onto the CPU, with one sentence when refused.

    Weights-only loading never unpickles Python objects (unpickling can run code), so a file that
    holds some (e.g. a whole ``nn.Module`` saved with ``torch.save(model)``) is refused; the error
    names the safe ways to save weights. ``source`` names the file in messages.
    """
    import pickle

    import torch

    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{source} holds pickled Python objects, which policylens does not load because "
            "unpickling can run code; save the weights alone with "
            "torch.save(model.state_dict(), path), or as .safetensors."
        ) from e
    except Exception as e:  # torch raises several types for damaged files
        raise ValueError(
            f"{source} cannot be read as a PyTorch checkpoint ({type(e).__name__}); the file is "
            "corrupt or truncated."
        ) from e


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
