"""Batched steps per second of the policylens hazard world against procgen's CoinRun (envpool).

Usage::

    python bench/bench_hazards.py [--seconds S] [--num-envs 64] [--repeats R]

Every row steps ``num_envs`` levels with uniformly random actions (procgen's 15) for the same wall
time after a warm-up, resets included; with ``--repeats R`` the rows are measured R times
round-robin and each keeps its best figure, so a burst of load from other processes hits every
row alike. Rows:

- policylens ``policylens/Hazards-v0`` through ``gymnasium.make_vec`` (its NumPy-batched vector
  env, one thread): symbolic (9 x 13 x 13), RGB 52 x 52 (13 tiles at 4 px) and RGB 64 x 64
  (procgen's size, 5 px per tile), each without and with the per-pixel labels (``masks``: per-kind
  masks and top-most kind/object maps in every step's info; training turns them off).
- procgen ``CoinrunEasy-v0`` and ``CoinrunHard-v0`` through envpool 1.2.5 (C++, one worker
  thread per core), 64 x 64 RGB. envpool's procgen games need the Qt5 runtime (Debian:
  ``apt-get install libqt5gui5``); if envpool cannot run, the script says why and goes on.

It prints a table (steps per wall second, and per CPU-second of the process: its cost, which
load from other processes does not change) and the ratios policylens RGB 64 / envpool CoinRun
(the goal: >= 1 at equal image size). It writes no files.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from bench_envs import envpool_vec

import policylens  # noqa: F401  (registers policylens/Hazards-v0)

SEED = 0
OURS = {  # row name -> world options
    "symbolic 9x13x13": {"obs_mode": "symbolic"},
    "rgb 52x52": {"obs_mode": "rgb"},
    "rgb 64x64": {"obs_mode": "rgb64"},
}


@dataclass
class Row:
    """One measured configuration: the best wall-clock rate, and steps per CPU-second."""

    library: str
    env: str
    obs: str
    driver: str
    steps_per_s: float = 0.0
    steps_per_cpu_s: float = 0.0
    note: str = ""


def measure(stepper: Callable[[], int], seconds: float) -> tuple[float, float]:
    """Steps per wall second and per CPU second of this process (all its threads) over
    ``seconds``, after a warm-up; CPU time counts what the work costs, whatever else runs."""
    warm_until = time.perf_counter() + min(0.5, seconds / 5)
    while time.perf_counter() < warm_until:
        stepper()
    steps, start, cpu = 0, time.perf_counter(), time.process_time()
    while (now := time.perf_counter()) < start + seconds:
        steps += stepper()
    return steps / (now - start), steps / max(time.process_time() - cpu, 1e-9)


def hazards_vec(num_envs: int, **options):
    env = gym.make_vec("policylens/Hazards-v0", num_envs=num_envs, **options)
    env.reset(seed=SEED)
    rng = np.random.default_rng(SEED)

    def step() -> int:
        env.step(rng.integers(0, 15, num_envs))
        return num_envs

    return step, env.close


def plan(num_envs: int) -> list[tuple[Row, Callable]]:
    rows: list[tuple[Row, Callable]] = []
    for obs, options in OURS.items():
        for masks in (False, True):
            row = Row("policylens", "Hazards-v0", obs, "masks" if masks else "no masks")
            rows.append((row, lambda o=options, k=masks: hazards_vec(num_envs, masks=k, **o)))
    threads = os.cpu_count() or 1
    for task in ("CoinrunEasy-v0", "CoinrunHard-v0"):
        row = Row("envpool", f"procgen {task}", "rgb 64x64", f"C++, {threads} threads")
        rows.append((row, lambda t=task: envpool_vec(t, num_envs)))
    return rows


def run_row(row: Row, make: Callable, seconds: float) -> None:
    """Measure one row, keeping its best figures over repeats; a peer that fails is recorded."""
    if row.note:
        return
    try:
        stepper, close = make()
        try:
            wall, cpu = measure(stepper, seconds)
        finally:
            close()
        row.steps_per_s = max(row.steps_per_s, wall)
        row.steps_per_cpu_s = max(row.steps_per_cpu_s, cpu)
    except Exception as exc:  # a missing optional peer must not stop the benchmark
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        row.note = f"not run: {type(exc).__name__}: {reason}"
        print(f"  {row.library} {row.env}: {row.note}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="wall time per row")
    parser.add_argument("--num-envs", type=int, nargs="+", default=[64])
    parser.add_argument("--repeats", type=int, default=2, help="passes; each row keeps its best")
    args = parser.parse_args()
    if args.seconds <= 0 or args.repeats < 1 or min(args.num_envs) < 1:
        parser.error("--seconds must be > 0, and --repeats and --num-envs >= 1")
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, python "
        f"{platform.python_version()}, numpy {np.__version__}, gymnasium {gym.__version__}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{args.seconds:g} s per row, best of {args.repeats} pass(es), random actions", flush=True
    )
    for num_envs in args.num_envs:
        planned = plan(num_envs)
        for rep in range(args.repeats):
            print(f"  {num_envs} envs, pass {rep + 1}/{args.repeats}", flush=True)
            for row, make in planned:
                run_row(row, make, args.seconds)
        rows = [row for row, _ in planned]
        print(f"\n{num_envs} envs")
        print(
            f"{'library':<11} {'env':<24} {'obs':<17} {'labels/driver':<15} {'steps/s':>9} {'steps/CPU-s':>12}"
        )
        for r in rows:
            figures = (
                f"{r.steps_per_s:9,.0f} {r.steps_per_cpu_s:12,.0f}"
                if r.steps_per_s
                else f"{'-':>9} {'-':>12}"
            )
            print(
                f"{r.library:<11} {r.env:<24} {r.obs:<17} {r.driver:<15} {figures}  {r.note}".rstrip()
            )
        print(
            f"\nratios at {num_envs} envs, steps/s (steps per CPU-second); goal >= 1 at equal image size:"
        )
        ours = {r.driver: r for r in rows if r.library == "policylens" and r.obs == "rgb 64x64"}
        for peer in (r for r in rows if r.library == "envpool"):
            for labels, mine in ours.items():
                if mine.steps_per_s and peer.steps_per_s:
                    wall = mine.steps_per_s / peer.steps_per_s
                    cpu = mine.steps_per_cpu_s / peer.steps_per_cpu_s
                    print(
                        f"  policylens rgb 64x64 ({labels}) / envpool {peer.env}: {wall:5.2f}x ({cpu:5.2f}x)"
                    )
                else:
                    print(f"  policylens rgb 64x64 ({labels}) / envpool {peer.env}: not measured")
        print(flush=True)


if __name__ == "__main__":
    main()
