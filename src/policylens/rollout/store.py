"""An on-disk, chunked, append-only array store for rollouts and activations, read back lazily.

Layout of a store folder::

    STORE/
      WRITING                    marker while a writer is open (lets a rewrite clear leftovers)
      <array name>/000000.npy    one plain .npy file per array per chunk of rows
      <array name>/000001.npy    (names may hold "/": "labels/mouse_pos", "activations/hook_conv")
      manifest.json              written LAST, atomically: row counts, dtypes, shapes, metadata

Every array has the same rows (one row per environment step), cut into the same chunks. A chunk
is written (atomically) as soon as ``chunk_size`` rows are buffered, so a collection never holds
more than one chunk in memory; reads memory-map only the chunks a slice touches, so millions of
activation vectors are never loaded at once.

Why not zarr? zarr 3.1 installs cleanly beside our dependencies (it adds numcodecs, donfig,
crc32c, PyYAML), but for this workload -- append-only, row-chunked, float32 activations that
barely compress -- plain ``.npy`` chunks read through ``numpy.memmap`` were as fast or faster in
``bench/bench_store.py`` (numbers in BENCHMARKS.md), need no extra package, and any tool that
reads NumPy files can open a chunk. The completeness rule (no manifest = incomplete) is ours
either way.
"""

from __future__ import annotations

import os
import shutil
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from policylens import artifacts
from policylens.errors import unknown_message

FORMAT = "policylens-store"
VERSION = 1
MANIFEST = "manifest.json"
WRITING = "WRITING"
DEFAULT_CHUNK_ROWS = 8192
_OPEN_CHUNKS = 64
"""Memory-mapped chunks kept open per store (each holds a file descriptor)."""


def _check_name(name: str) -> None:
    parts = name.split("/")
    if not name or any(p in ("", ".", "..") or p.startswith(".") for p in parts) or "\\" in name:
        raise ValueError(
            f"Array name {name!r} is not a valid store name; use letters, digits, '_', '.' and "
            "'/' between parts (e.g. 'activations/hook_conv')."
        )
    if parts[0] in (MANIFEST, WRITING):
        raise ValueError(f"Array name {name!r} is reserved; choose another name.")


class StoreWriter:
    """Streams rows into a new store; :meth:`close` writes the manifest that marks it complete.

    Use as a context manager: on an exception the store is left without a manifest, so it reads
    as incomplete and is refused (never mistaken for a whole collection).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        chunk_size: int = DEFAULT_CHUNK_ROWS,
        overwrite: bool = False,
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
        self.path = Path(path)
        self.chunk_size = int(chunk_size)
        self._lock = artifacts.FolderLock(self.path, "store folder")  # until close or failure
        try:
            _prepare_folder(self.path, overwrite)
        except BaseException:
            self._lock.release()
            raise
        artifacts.write_text(
            self.path / WRITING, "a collection is being written into this folder\n"
        )
        self._schema: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
        self._pending: dict[str, list[np.ndarray]] = {}
        self._pending_rows = 0
        self._chunk_rows: list[int] = []
        self._closed = False

    # ------------------------------------------------------------------ writing
    @property
    def rows(self) -> int:
        """Rows appended so far (written and buffered)."""
        return sum(self._chunk_rows) + self._pending_rows

    def append(self, batch: Mapping[str, np.ndarray]) -> None:
        """Append rows: every array of ``batch`` has the same leading length ``n``.

        The first call fixes the arrays, their dtypes and per-row shapes; later calls must give
        the same names and shapes (values are cast to the first dtype).
        """
        if self._closed:
            raise ValueError(f"The store writer for {self.path} is closed; open a new one.")
        arrays = {k: np.asarray(v) for k, v in batch.items()}
        lengths = {k: (v.shape[0] if v.ndim else -1) for k, v in arrays.items()}
        if len(set(lengths.values())) > 1 or -1 in lengths.values():
            raise ValueError(
                f"Every array appended together needs the same number of rows, got {lengths}."
            )
        if not self._schema:
            for name, v in arrays.items():
                _check_name(name)
                self._schema[name] = (v.dtype, tuple(v.shape[1:]))
                self._pending[name] = []
        if set(arrays) != set(self._schema):
            missing = sorted(set(self._schema) - set(arrays))
            extra = sorted(set(arrays) - set(self._schema))
            raise ValueError(
                f"Appended arrays differ from the store's: missing {missing}, unexpected {extra}; "
                "append the same arrays every time."
            )
        n = next(iter(lengths.values()), 0)
        if n == 0:
            return
        for name, v in arrays.items():
            dtype, shape = self._schema[name]
            if tuple(v.shape[1:]) != shape:
                raise ValueError(
                    f"Array {name!r} has rows of shape {tuple(v.shape[1:])}, but the store holds "
                    f"rows of shape {shape}; append rows of one shape per array."
                )
            self._pending[name].append(v.astype(dtype, copy=False))
        self._pending_rows += n
        while self._pending_rows >= self.chunk_size:
            self._flush(self.chunk_size)

    def _flush(self, rows: int) -> None:
        """Write the first ``rows`` buffered rows of every array as the next chunk."""
        index = len(self._chunk_rows)
        for name, parts in self._pending.items():
            data = np.concatenate(parts) if len(parts) > 1 else parts[0]
            chunk, rest = data[:rows], data[rows:]
            _write_npy(self.path / name / f"{index:06d}.npy", chunk)
            self._pending[name] = [rest] if len(rest) else []
        self._pending_rows -= rows
        self._chunk_rows.append(rows)

    def close(self, meta: Mapping[str, Any] | None = None) -> Store:
        """Write the last chunk, then the manifest (atomically, last of all); return the store."""
        if self._closed:
            raise ValueError(f"The store writer for {self.path} is already closed.")
        if self._pending_rows:
            self._flush(self._pending_rows)
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "rows": int(sum(self._chunk_rows)),
            "chunk_rows": [int(r) for r in self._chunk_rows],
            "arrays": {
                name: {"dtype": dtype.str, "shape": list(shape)}
                for name, (dtype, shape) in self._schema.items()
            },
            "meta": dict(meta or {}),
        }
        artifacts.write_json(self.path / MANIFEST, manifest)
        (self.path / WRITING).unlink(missing_ok=True)
        self._closed = True
        self._lock.release()
        return Store(self.path)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # On success the caller closes with its metadata; on failure no manifest is written.
        self._pending.clear()
        self._pending_rows = 0
        self._lock.release()


def _write_npy(path: Path, array: np.ndarray) -> None:
    # Through a file object: np.save(name) would append ".npy" to the temporary name.
    with artifacts.atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def _reason(error: Exception) -> str:
    """A short reason for an unreadable chunk, without numpy's pickle advice."""
    text = str(error).split(";")[0].split("\n")[0].strip()
    if "pickle" in text.lower() or not text:
        return "not a NumPy array file"
    return text


def _prepare_folder(path: Path, overwrite: bool) -> None:
    """Make ``path`` an empty folder for a new store, refusing to clobber anything else."""
    entries = [e for e in path.iterdir() if e.name != artifacts.LOCK_FILE]
    if not entries:
        return
    complete = (path / MANIFEST).exists()
    ours = complete or (path / WRITING).exists()
    if not ours:
        raise ValueError(
            f"{path} is a non-empty folder that is not a policylens store; choose another path."
        )
    if complete and not overwrite:
        raise ValueError(
            f"{path} already holds a complete store; pass overwrite=True (--overwrite) to replace "
            "it or choose another path."
        )
    # Remove the manifest first: if this process dies midway, the folder reads as incomplete.
    (path / MANIFEST).unlink(missing_ok=True)
    for entry in entries:
        if entry.name == WRITING:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)


class Store:
    """A complete store opened for lazy reading: ``store["activations/hook_conv"][i:j]``."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(
                f"No store at {self.path}; collect one with `policylens collect`."
            )
        manifest_file = self.path / MANIFEST
        if not manifest_file.is_file():
            raise ValueError(
                f"Store {self.path} is incomplete (no manifest): the collection was interrupted; "
                "collect again."
            )
        manifest = artifacts.read_json(manifest_file)
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ValueError(f"{manifest_file} is not a policylens store manifest.")
        if manifest.get("version", 0) > VERSION:
            raise ValueError(
                f"Store {self.path} has format version {manifest['version']}, newer than this "
                f"policylens reads ({VERSION}); upgrade policylens."
            )
        self.manifest: dict[str, Any] = manifest
        self.meta: dict[str, Any] = manifest.get("meta", {})
        self.chunk_rows = np.asarray(manifest["chunk_rows"], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.chunk_rows)])  # (chunks + 1,)
        if int(self.offsets[-1]) != manifest["rows"]:
            raise ValueError(f"{manifest_file} is corrupt: chunk rows do not add up to its rows.")
        self._cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._arrays = {
            name: StoreArray(self, name, np.dtype(spec["dtype"]), tuple(spec["shape"]))
            for name, spec in manifest["arrays"].items()
        }

    # ------------------------------------------------------------------ mapping interface
    def __len__(self) -> int:
        return int(self.offsets[-1])

    def keys(self) -> list[str]:
        return list(self._arrays)

    def __contains__(self, name: object) -> bool:
        return name in self._arrays

    def __getitem__(self, name: str) -> StoreArray:
        if name not in self._arrays:
            raise ValueError(unknown_message(f"array in store {self.path}", name, self.keys()))
        return self._arrays[name]

    def group(self, prefix: str) -> list[str]:
        """Names under ``prefix/`` without the prefix (``store.group("labels")``)."""
        p = prefix.rstrip("/") + "/"
        return [k[len(p) :] for k in self._arrays if k.startswith(p)]

    @property
    def labels(self) -> list[str]:
        """Ground-truth label keys the world published (numeric ones), per step."""
        return self.group("labels")

    @property
    def hooks(self) -> list[str]:
        """Hooks whose activations are stored."""
        return self.group("activations")

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._arrays.values())

    def iter_batches(
        self,
        names: Sequence[str] | None = None,
        batch_size: int = DEFAULT_CHUNK_ROWS,
        rows: np.ndarray | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Yield ``{name: array}`` batches of ``batch_size`` rows (all rows, or the given ones)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        names = list(names) if names is not None else self.keys()
        arrays = [self[n] for n in names]
        if rows is None:
            for start in range(0, len(self), batch_size):
                stop = min(start + batch_size, len(self))
                yield {n: a[start:stop] for n, a in zip(names, arrays, strict=True)}
        else:
            rows = np.asarray(rows)
            for start in range(0, len(rows), batch_size):
                part = rows[start : start + batch_size]
                yield {n: a[part] for n, a in zip(names, arrays, strict=True)}

    def _chunk(self, name: str, index: int) -> np.ndarray:
        key = (name, index)
        chunk = self._cache.get(key)
        if chunk is not None:
            self._cache.move_to_end(key)
            return chunk
        file = self.path / name / f"{index:06d}.npy"
        if not file.is_file():
            raise ValueError(
                f"Store {self.path} is damaged: chunk {file.name} of {name!r} is missing; "
                "collect again."
            )
        damaged = f"Store {self.path} is damaged: chunk {name}/{file.name}"
        try:
            chunk = np.load(file, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:  # numpy's advice to allow pickles is unsafe
            raise ValueError(f"{damaged} cannot be read ({_reason(e)}); collect again.") from None
        spec = self._arrays[name]
        expected = (int(self.chunk_rows[index]), *spec.row_shape)
        if chunk.shape != expected or chunk.dtype != spec.dtype:
            raise ValueError(
                f"{damaged} holds {chunk.dtype} {chunk.shape}, the manifest says {spec.dtype} "
                f"{expected}; collect again."
            )
        self._cache[key] = chunk
        if len(self._cache) > _OPEN_CHUNKS:
            self._cache.popitem(last=False)
        return chunk

    def close(self) -> None:
        """Drop the open memory maps (they also close when the store is garbage-collected)."""
        self._cache.clear()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, rows={len(self)}, arrays={len(self._arrays)})"


class StoreArray:
    """One array of a store: NumPy-style indexing that reads only the chunks it needs."""

    def __init__(self, store: Store, name: str, dtype: np.dtype, row_shape: tuple[int, ...]):
        self.store = store
        self.name = name
        self.dtype = dtype
        self.row_shape = row_shape

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.store), *self.row_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.row_shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return len(self.store)

    def read(self) -> np.ndarray:
        """The whole array in memory (only for arrays known to be small)."""
        return self[:]

    def __array__(self, dtype: DTypeLike | None = None, copy: bool | None = None) -> np.ndarray:
        out = self.read()
        return out.astype(dtype) if dtype is not None else out

    def __getitem__(self, key: Any) -> np.ndarray:
        rest: tuple = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        n = len(self.store)
        if isinstance(key, int | np.integer):
            i = int(key) + n if key < 0 else int(key)
            if not 0 <= i < n:
                raise IndexError(f"row {key} is out of range for {self.name!r} with {n} rows")
            out = self._rows_range(i, i + 1)[0]
        elif isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step == 1:
                out = self._rows_range(start, max(start, stop))
            else:
                out = self._rows_take(np.arange(start, stop, step))
        else:
            idx = np.asarray(key)
            if idx.dtype == bool:
                if idx.shape != (n,):
                    raise IndexError(f"boolean index of shape {idx.shape} for {n} rows")
                idx = np.nonzero(idx)[0]
            elif not np.issubdtype(idx.dtype, np.integer):
                raise IndexError(f"cannot index {self.name!r} with {type(key).__name__}")
            idx = np.where(idx < 0, idx + n, idx)
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise IndexError(f"row index out of range for {self.name!r} with {n} rows")
            out = self._rows_take(idx)
        if not rest:
            return out
        return out[rest] if isinstance(key, int | np.integer) else out[(slice(None), *rest)]

    def _rows_range(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, *self.row_shape), dtype=self.dtype)
        offsets = self.store.offsets
        first = int(np.searchsorted(offsets, start, side="right")) - 1
        pos = start
        c = first
        while pos < stop:
            lo, hi = offsets[c], offsets[c + 1]
            take = min(stop, hi) - pos
            out[pos - start : pos - start + take] = self.store._chunk(self.name, c)[
                pos - lo : pos - lo + take
            ]
            pos += take
            c += 1
        return out

    def _rows_take(self, idx: np.ndarray) -> np.ndarray:
        idx = idx.astype(np.int64).ravel()
        out = np.empty((len(idx), *self.row_shape), dtype=self.dtype)
        if not len(idx):
            return out
        offsets = self.store.offsets
        chunk_of = np.searchsorted(offsets, idx, side="right") - 1
        order = np.argsort(chunk_of, kind="stable")
        sorted_chunks = chunk_of[order]
        bounds = np.flatnonzero(np.diff(sorted_chunks)) + 1
        for group in np.split(order, bounds):
            c = int(chunk_of[group[0]])
            chunk = self.store._chunk(self.name, c)
            out[group] = chunk[idx[group] - offsets[c]]
        return out

    def __repr__(self) -> str:
        return f"StoreArray({self.name!r}, shape={self.shape}, dtype={self.dtype})"


def open_store(path: str | os.PathLike) -> Store:
    """Open a complete store; an interrupted collection raises a clear ValueError."""
    return Store(path)


def is_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like a store folder (complete or not)."""
    p = Path(path)
    return (p / MANIFEST).is_file() or (p / WRITING).is_file()


def write_store(
    path: str | os.PathLike,
    arrays: Mapping[str, np.ndarray] | Iterable[Mapping[str, np.ndarray]],
    meta: Mapping[str, Any] | None = None,
    chunk_size: int = DEFAULT_CHUNK_ROWS,
    overwrite: bool = False,
) -> Store:
    """Write arrays (one mapping, or an iterable of row batches) as a complete store."""
    batches = [arrays] if isinstance(arrays, Mapping) else arrays
    with StoreWriter(path, chunk_size=chunk_size, overwrite=overwrite) as writer:
        for batch in batches:
            writer.append(batch)
        return writer.close(meta)
