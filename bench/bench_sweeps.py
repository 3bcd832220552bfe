"""Sweep scaling: N equal tiny maze trials on 1 and on 2 workers, on the local process pool and on
a local Ray, each sweep into a fresh folder.

For each backend and worker count it prints the wall time (Ray's includes ``ray.init``), trials
per second, and two overheads per trial: inside the trial, its wall time in the worker minus its
own training time (building the envs and agent, run-folder writes, the evaluation); and around it,
the sweep's wall time per trial slot (wall x workers / N) minus the trial's wall time (starting
processes, imports, scheduling, writing results). Then each backend's throughput ratio of 2
workers over 1, and Ray's against the pool's.

    python bench/bench_sweeps.py [--trials 8] [--steps 2048] [--backends local ray]

Trials train PPO on 5x5 mazes (16 envs x 32 steps per update) and are scored by
``training_metrics`` (no extra episodes), so the numbers are dominated by what a sweep adds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from policylens.sweeps import SweepSpec, run_sweep
from policylens.sweeps.runner import cpu_count


def measure(spec: SweepSpec, backend: str, workers: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        rows = run_sweep(spec, Path(tmp) / "sweep", workers=workers, backend=backend, quiet=True)
        wall = time.perf_counter() - start
    n = len(rows)
    trial = statistics.mean(r["seconds"] for r in rows)
    train = statistics.mean(r["train_seconds"] for r in rows)
    return {
        "wall": wall,
        "trials_per_s": n / wall,
        "train": train,
        "inside": trial - train,
        "around": wall * workers / n - trial,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2048, help="Environment steps per trial.")
    parser.add_argument("--backends", nargs="+", default=["local", "ray"])
    args = parser.parse_args()
    spec = SweepSpec(
        world="maze",
        recipe="policylens.worlds.maze:MazeRecipe",
        seeds=list(range(args.trials)),
        steps=args.steps,
        fixed={"world_size": 5, "num_envs": 16, "num_steps": 32},
        evaluate="policylens.sweeps:training_metrics",
    )
    print(
        f"{args.trials} trials of {args.steps} steps; {cpu_count()} CPUs; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    header = f"{'backend':8} {'workers':>7} {'threads':>7} {'wall s':>7} {'trials/s':>8} "
    print(header + f"{'train s':>8} {'inside s':>8} {'around s':>8}")
    results: dict[tuple[str, int], dict[str, float]] = {}
    for backend in args.backends:
        for workers in (1, 2):
            r = results[backend, workers] = measure(spec, backend, workers)
            threads = max(1, cpu_count() // workers)
            print(
                f"{backend:8} {workers:7d} {threads:7d} {r['wall']:7.2f} {r['trials_per_s']:8.2f} "
                f"{r['train']:8.3f} {r['inside']:8.3f} {r['around']:8.3f}"
            )
    for backend in args.backends:
        ratio = results[backend, 2]["trials_per_s"] / results[backend, 1]["trials_per_s"]
        print(f"{backend}: 2 workers / 1 worker throughput = {ratio:.2f}x")
    if {"local", "ray"} <= set(args.backends):
        for workers in (1, 2):
            ratio = (
                results["ray", workers]["trials_per_s"] / results["local", workers]["trials_per_s"]
            )
            print(f"{workers} worker(s): ray / local throughput = {ratio:.2f}x")


if __name__ == "__main__":
    main()
