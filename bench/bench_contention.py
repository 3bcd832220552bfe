"""Training speed under CPU contention: `policylens train maze` alone, beside one CPU-bound
process, and two trainings side by side, with the default (adaptive) threads and with 2 threads
pinned (the default before the thread governor), in one run.

Prints steps/s of each case and the ratios the reliability issue sets as targets:
- beside one busy process / alone, default threads (target >= 0.50),
- alone with the default threads / alone with 2 pinned threads (target >= 1, "not lower"),
- two trainings side by side / one after the other, total steps/s (target >= 1.6), beside its
  ceiling on two cores: twice the one-thread speed over the two-thread speed.
Steps/s is a run's environment steps over its training time (metrics.csv, setup excluded).

    .venv/bin/python bench/bench_contention.py [--steps 300000] [--seed 3]
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
from pathlib import Path

POLICYLENS = str(Path(sys.executable).parent / "policylens")
BUSY = [sys.executable, "-c", "while True: pass"]


def train(out: Path, steps: int, seed: int, threads: int | None) -> subprocess.Popen:
    args = [POLICYLENS, "train", "maze", "--out", str(out), "--steps", str(steps),
            "--seed", str(seed), "--quiet"]  # fmt: skip
    if threads is not None:
        args += ["--threads", str(threads)]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL)


def speed(out: Path) -> float:
    """Environment steps per second of training (the last metrics row's step over its time)."""
    with open(out / "metrics.csv") as f:
        last = list(csv.DictReader(f))[-1]
    return float(last["step"]) / float(last["time"])


def run(root: Path, name: str, steps: int, seed: int, threads: int | None, n: int = 1,
        busy: bool = False) -> list[float]:  # fmt: skip
    competitor = subprocess.Popen(BUSY) if busy else None
    try:
        procs = [(train(root / f"{name}{i}", steps, seed, threads), root / f"{name}{i}")
                 for i in range(n)]  # fmt: skip
        for p, _ in procs:
            if p.wait() != 0:
                raise SystemExit(f"training {name} failed")
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    return [speed(out) for _, out in procs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300_000)
    p.add_argument("--seed", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        results = {}
        for label, threads in (("default threads", None), ("2 threads pinned", 2)):
            (solo,) = run(root, f"solo{threads}", args.steps, args.seed, threads)
            (beside,) = run(root, f"beside{threads}", args.steps, args.seed, threads, busy=True)
            pair = run(root, f"pair{threads}", args.steps, args.seed, threads, n=2)
            # one after the other: each at its solo speed, so the total rate is the solo rate
            results[label] = (solo, beside, sum(pair))
            print(f"{label:17s} alone {solo:7.0f} steps/s | beside one busy process {beside:7.0f} "
                  f"({beside / solo:.2f} of alone) | two side by side {sum(pair):7.0f} total "
                  f"({sum(pair) / solo:.2f}x one after the other)", flush=True)  # fmt: skip
        solo, beside, pair = results["default threads"]
        pinned = results["2 threads pinned"][0]
        (one,) = run(root, "solo1", args.steps, args.seed, 1)
        print(
            f"1 thread pinned   alone {one:7.0f} steps/s: two side by side can reach at most "
            f"{2 * one / solo:.2f}x one after the other (two one-thread trainings on two cores)"
        )
        print(f"targets: beside/alone {beside / solo:.2f} (>= 0.50), alone default/pinned-2 "
              f"{solo / pinned:.2f} (>= 1, measurement noise aside), side by side "
              f"{pair / solo:.2f}x (>= 1.6; {pair / (2 * one):.2f} of two one-thread trainings)")  # fmt: skip


if __name__ == "__main__":
    main()
