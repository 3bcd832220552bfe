"""File I/O with one clear error: atomic writes (a killed process never leaves a half-written file
that looks whole), exclusive folder locks (two writers never interleave), JSON, and PyTorch
checkpoints read without unpickling objects."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

LOCK_FILE = ".policylens.lock"
"""The lock file a writer holds inside the folder it writes."""


def _plain_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0o666 less the umask (read once, at import:
    reading the umask sets it, which is not safe while other threads create files)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _plain_file_mode()
"""Mode of every file written atomically: a temporary file is private (0o600) until chmod."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds."""
    path = check_writable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, FILE_MODE)  # as readable as a plain write: reports and runs get shared
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except OSError as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if e.filename in (tmp, Path(tmp)) or e.filename2 in (tmp, Path(tmp)):
            # the temporary file is ours: name the file the caller asked to write
            raise type(e)(e.errno, e.strerror, str(path)) from e
        raise
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_writable(path: str | os.PathLike, what: str = "file") -> Path:
    """``path`` as a Path if a ``what`` can be written there; else one sentence saying why not.

    Commands call it on their output paths before any expensive work.
    """
    path = Path(path)
    if what == "file" and path.is_dir():
        raise ValueError(f"{path} is a folder; give a file name to write")
    if what != "file" and path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file; choose a folder for the {what}")
    existing = path if path.is_dir() else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"cannot write {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {path}: {existing} is not writable; choose another path")
    return path


RUN_FILES = ("config.json", "metrics.csv", "resume.pt", "DONE", LOCK_FILE)
"""A run folder's own files (beside ``checkpoints/``): no other artefact is ever written over them."""


def owner_run(path: str | os.PathLike) -> Path | None:
    """The run folder ``path`` is one of the own files of (config, metrics, resume state, done
    marker, a checkpoint), or None."""
    path = Path(path)
    parent = path.parent
    if path.name in RUN_FILES and (parent / "checkpoints").is_dir():
        return parent
    if parent.name == "checkpoints" and (parent.parent / "config.json").is_file():
        return parent.parent
    return None


def check_output(path: str | os.PathLike, overwrite: bool = False, flag: str = "--out") -> Path:
    """``path`` as a Path if a command or an API call may write its output file there.

    An output never replaces a file it did not create for that purpose: a run's own files
    (``config.json``, ``metrics.csv``, checkpoints...) are refused always, any other existing file
    unless ``overwrite`` (``--overwrite``). Callers check before any expensive work.
    """
    path = check_writable(path)
    run = owner_run(path)
    if run is not None:
        raise ValueError(
            f"{flag} {path} is a file of the run {run}; policylens never writes another "
            "artefact over a run's files; choose another path."
        )
    if path.exists() and not overwrite:
        raise ValueError(
            f"{flag} {path} already exists; pass --overwrite (overwrite=True) to replace it, or "
            "choose another path."
        )
    return path


def check_output_folder(
    folder: str | os.PathLike,
    writes: tuple[str, ...],
    overwrite: bool = False,
    what: str = "output folder",
    flag: str = "--out",
) -> Path:
    """``folder`` as a Path if a ``what`` whose files are ``writes`` may be written into it.

    Refused always when the folder is a run folder (its ``config.json`` and files would be
    replaced by another artefact's); refused when one of ``writes`` is already there unless
    ``overwrite`` (``--overwrite``): the earlier artefact would be replaced without a word.
    """
    folder = check_writable(folder, what)
    if (folder / "config.json").is_file() and (folder / "checkpoints").is_dir():
        raise ValueError(
            f"{flag} {folder} is a run folder; writing the {what} there would replace the run's "
            "files; choose another folder (e.g. one inside the run's analysis/)."
        )
    taken = [name for name in writes if (folder / name).exists()]
    if taken and not overwrite:
        raise ValueError(
            f"{flag} {folder} already holds {', '.join(taken)}; pass --overwrite "
            f"(overwrite=True) to replace that {what}, or choose another folder."
        )
    return folder


def _fsync_file(path: str) -> None:
    """Flush a file's bytes to disk, so a power cut after the rename cannot leave it empty."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entries to disk, so a rename survives a power cut."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FolderLock:
    """An exclusive writer's lock on a folder, so two processes never write it at once.

    The lock is an ``flock`` on ``LOCK_FILE`` inside the folder, taken without waiting: taking it
    is the one atomic create-or-refuse step, and the kernel drops it when its holder exits or is
    killed, so a lock left by a dead process is taken over with no race. The file records the
    holder's PID for the refusal message. Use as a context manager or call ``release()``.
    """

    def __init__(self, folder: str | os.PathLike, what: str = "folder") -> None:
        self.fd: int | None = None
        self.folder = check_writable(folder, what)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.file = self.folder / LOCK_FILE
        while True:
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise ValueError(
                    f"{self.folder} is being written by another process ({holder_text(self.file)}); "
                    f"wait for it to finish, stop it, or choose another {what}."
                ) from None
            # A releasing holder may have unlinked the file we opened: lock the one on disk.
            if _same_file(fd, self.file):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.time()}).encode())  # fmt: skip
        self.fd = fd

    def release(self) -> None:
        """Let other writers in (idempotent)."""
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.file)
        os.close(self.fd)  # closing drops the flock
        self.fd = None

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def locked_by(folder: str | os.PathLike) -> str | None:
    """Who is writing ``folder`` now ("PID 123 on host, since 12:00"), or None if nobody is."""
    file = Path(folder) / LOCK_FILE
    try:
        fd = os.open(file, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return holder_text(file)
    finally:
        os.close(fd)
    return None  # a lock file its dead holder left behind


def holder_text(file: Path) -> str:
    """The holder recorded in a lock file, in words."""
    try:
        info = json.loads(file.read_text())
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(info["since"]))
        return f"PID {info['pid']} on {info['host']}, since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its PID yet"


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` (a PNG, a GIF) to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, data: Any, sort_keys: bool = True) -> None:
    """Write ``data`` as indented JSON; ``sort_keys=False`` keeps the dicts' order (table columns)."""
    write_text(path, json.dumps(data, indent=2, sort_keys=sort_keys, default=_jsonable) + "\n")


def read_json(
    path: str | os.PathLike,
    expect: type | None = None,
    keys: dict[str, type | tuple[type, ...]] | None = None,
) -> Any:
    """Read JSON, turning a corrupt file into one clear error.

    ``expect`` (``dict`` or ``list``) is the JSON value the file must hold, and ``keys`` the
    entries an object must have with their types; a file that holds something else is refused in
    one sentence naming it (a damaged or foreign file, not a bug).
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not a text file of JSON; the file is corrupt") from e
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path} is not valid JSON ({e.msg} at line {e.lineno}); the file is corrupt"
        ) from e
    if expect is not None and not isinstance(data, expect):
        want = _JSON_NAMES.get(expect, expect.__name__)
        raise ValueError(
            f"{path} holds a JSON {_json_kind(data)} where a JSON {want} is expected; the file "
            "is damaged or not the one policylens wrote"
        )
    for key, kind in (keys or {}).items():
        if key not in data:
            raise ValueError(
                f"{path} has no {key!r} entry; the file is damaged or not the one policylens wrote"
            )
        if not isinstance(data[key], kind) or (
            kind in (int, float) and isinstance(data[key], bool)
        ):
            want = _JSON_NAMES.get(kind, getattr(kind, "__name__", str(kind)))  # type: ignore[arg-type]
            raise ValueError(
                f"{path}: its {key!r} entry is a JSON {_json_kind(data[key])}, not a {want}; the "
                "file is damaged"
            )
    return data


_JSON_NAMES: dict[Any, str] = {
    dict: "object", list: "array", str: "string", int: "integer", float: "number",
    bool: "boolean", (int, float): "number",
}  # fmt: skip


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    return _JSON_NAMES.get(type(value), type(value).__name__)


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


def read_safetensors(file: str | os.PathLike) -> dict[str, Any]:
    """The tensors of a ``.safetensors`` file, with one sentence naming a missing or corrupt one."""
    from safetensors.torch import load_file

    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"No weights file at {file}; check the path.")
    try:
        return load_file(str(file))
    except Exception as e:  # safetensors raises several types for damaged files
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(
            f"{file} is corrupt or truncated and cannot be read as safetensors ({reason}); "
            "re-save it or use another file."
        ) from e


def sha256_of(file: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, as hex (how pretrained agents pin their weights)."""
    import hashlib

    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_png(path: str | os.PathLike, image: Any) -> None:
    """Write an RGB uint8 array ``(H, W, 3)`` to a PNG atomically."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
