"""Activation store: policylens's chunked .npy store vs zarr 3 on the same rows, in one run.

Writes ``--rows`` activation vectors of width ``--width`` (float32) in batches of 1,024 rows (as
``collect`` does, one env step of a big batch at a time), then reads them back three ways:
sequential batches, contiguous slices at random offsets, and random row gathers (what a probe's
subsample does). zarr is used with the same row chunks, uncompressed and with its default
compressor (zstd). Prints rows/s and the ratio policylens / zarr.

    .venv/bin/python bench/bench_store.py --rows 1000000 --width 256

zarr is optional; without it only policylens is measured. (To measure it without adding it to
the project: ``pip install --target /tmp/zarrpkgs zarr numcodecs donfig google-crc32c pyyaml``
and pass ``--zarr-path /tmp/zarrpkgs``.)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from policylens.rollout.store import StoreWriter, open_store

BATCH = 1024


_DATA: dict[tuple[int, int, int], np.ndarray] = {}


def batches(rows: int, width: int, seed: int):
    """ReLU-like activations (about half zeros), made once so generation is not timed."""
    key = (rows, width, seed)
    if key not in _DATA:
        rng = np.random.default_rng(seed)
        _DATA[key] = np.maximum(rng.standard_normal((rows, width), dtype=np.float32), 0)
    data = _DATA[key]
    for start in range(0, rows, BATCH):
        yield data[start : start + BATCH]


def bench_policylens(root: Path, rows: int, width: int, chunk: int, seed: int) -> dict:
    path = root / "pl"
    t0 = time.perf_counter()
    with StoreWriter(path, chunk_size=chunk) as w:
        for b in batches(rows, width, seed):
            w.append({"act": b})
        store = w.close()
    write = time.perf_counter() - t0
    arr = open_store(path)["act"]
    return {"write": write, **read_patterns(lambda s: arr[s], lambda i: arr[i], rows, seed)}, store


def bench_zarr(root: Path, rows: int, width: int, chunk: int, seed: int, compressed: bool) -> dict:
    import zarr

    path = root / ("zc" if compressed else "zu")
    kwargs = {} if compressed else {"compressors": None}
    t0 = time.perf_counter()
    z = zarr.create_array(
        store=str(path), shape=(0, width), chunks=(chunk, width), dtype="float32", **kwargs
    )
    # Buffer to whole chunks before appending, as our writer does (appending 1,024 rows at a time
    # rewrites a partial chunk every call and is several times slower).
    buf: list[np.ndarray] = []
    n = 0
    for b in batches(rows, width, seed):
        buf.append(b)
        n += len(b)
        if n >= chunk:
            data = np.concatenate(buf)
            z.append(data[:chunk])
            buf, n = ([data[chunk:]] if len(data) > chunk else []), len(data) - chunk
    if n:
        z.append(np.concatenate(buf))
    write = time.perf_counter() - t0
    z = zarr.open_array(str(path), mode="r")
    return {
        "write": write,
        **read_patterns(
            lambda s: z[s], lambda i: z.get_orthogonal_selection((i, slice(None))), rows, seed
        ),
    }


def read_patterns(get_slice, get_rows, rows: int, seed: int) -> dict:
    rng = np.random.default_rng(seed + 1)
    t0 = time.perf_counter()
    total = 0.0
    for start in range(0, rows, 8192):
        total += float(get_slice(slice(start, min(start + 8192, rows)))[:, 0].sum())
    sequential = time.perf_counter() - t0
    starts = rng.integers(0, max(1, rows - 4096), size=200)
    t0 = time.perf_counter()
    for s in starts:
        get_slice(slice(int(s), int(s) + 4096))
    random_slices = time.perf_counter() - t0
    idx = np.sort(rng.choice(rows, size=min(rows, 50_000), replace=False))
    t0 = time.perf_counter()
    got = get_rows(idx)
    gather = time.perf_counter() - t0
    return {
        "sequential": sequential,
        "slices": random_slices,
        "gather": gather,
        "gather_rows": len(idx),
        "checksum": round(total + float(got[:, 0].astype(np.float64).sum()), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--zarr-path", default=None, help="Extra sys.path entry holding zarr.")
    ap.add_argument("--dir", default=None, help="Scratch folder (default: a temporary one).")
    args = ap.parse_args()
    if args.zarr_path:
        sys.path.insert(0, args.zarr_path)
    root = Path(tempfile.mkdtemp(prefix="bench_store_", dir=args.dir))
    next(batches(args.rows, args.width, args.seed))
    mb = args.rows * args.width * 4 / 2**20
    print(f"{args.rows:,} rows x {args.width} float32 ({mb:,.0f} MiB), chunks of {args.chunk} rows")
    try:
        results = {}
        results["policylens"], _ = bench_policylens(
            root, args.rows, args.width, args.chunk, args.seed
        )
        try:
            import zarr

            print(f"zarr {zarr.__version__}")
            for compressed in (False, True):
                name = "zarr (zstd)" if compressed else "zarr (raw)"
                results[name] = bench_zarr(
                    root, args.rows, args.width, args.chunk, args.seed, compressed
                )
        except ImportError:
            print("zarr not installed: measuring policylens only")
        pl = results["policylens"]
        print(
            f"{'':14s} {'write rows/s':>14s} {'seq read rows/s':>16s} {'4096-row slices/s':>18s} {'gather rows/s':>14s}"
        )
        for name, r in results.items():
            print(
                f"{name:14s} {args.rows / r['write']:14,.0f} {args.rows / r['sequential']:16,.0f} "
                f"{200 / r['slices']:18,.0f} {r['gather_rows'] / r['gather']:14,.0f}"
            )
        for name, r in results.items():
            if name == "policylens":
                continue
            print(
                f"policylens / {name}: write {r['write'] / pl['write']:.2f}x, sequential read "
                f"{r['sequential'] / pl['sequential']:.2f}x, slices {r['slices'] / pl['slices']:.2f}x, "
                f"gather {r['gather'] / pl['gather']:.2f}x (>1 = policylens faster)"
            )
        same = len({r["checksum"] for r in results.values()}) == 1
        print("same values read back from every store:", same)
        sizes = {
            p.name: sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
            for p in root.iterdir()
        }
        print("bytes on disk:", {k: f"{v / 2**20:,.0f} MiB" for k, v in sizes.items()})
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
