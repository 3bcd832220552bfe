"""Batched steps per second of the policylens maze against MiniGrid and procgen's Maze (envpool).

Usage::

    python bench/bench_envs.py [--seconds S] [--num-envs 64 256] [--repeats R]

Every row steps ``num_envs`` environments with uniformly random actions for the same wall time
(after a short warm-up) and counts environment steps, resets included; with ``--repeats R`` the
rows are measured R times round-robin and each keeps its best figure (robust to load from other
processes). Rows:

- policylens ``policylens/Maze-v0`` through ``gymnasium.make_vec`` (its NumPy-batched vector env):
  the default 9x9 world with grid and 64x64 RGB observations, and procgen-like settings (15x15 and
  25x25 worlds, mazes from 3x3, cheese anywhere, procgen's 15 actions) at 64x64 RGB.
- MiniGrid (a maze-like ``SimpleCrossingS9N1`` and ``Empty-8x8``), stepped as a gymnasium
  ``SyncVectorEnv`` and as a plain single-env loop; the best MiniGrid figure is the reference.
- procgen's ``MazeEasy-v0``/``MazeHard-v0`` through envpool (C++ with one worker thread per core),
  64x64 RGB. envpool's procgen games need the Qt5 runtime (Debian: ``apt-get install libqt5gui5``);
  if envpool cannot run, the script says why and goes on.

It prints a table, then the ratios policylens/MiniGrid (grid observations) and policylens/envpool
(64x64 RGB). It writes no files.
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

import policylens  # noqa: F401  (registers policylens/Maze-v0)

SEED = 0
MINIGRID_IDS = ("MiniGrid-SimpleCrossingS9N1-v0", "MiniGrid-Empty-8x8-v0")
PROCGEN_LIKE = {  # policylens settings that match procgen's Maze (easy: 15x15 world; hard: 25x25)
    "easy": {"world_size": 15, "maze_sizes": (3, 15)},
    "hard": {"world_size": 25, "maze_sizes": (3, 25)},
}


@dataclass
class Row:
    """One measured configuration."""

    library: str
    env: str
    obs: str
    driver: str
    num_envs: int
    steps_per_s: float | None = None
    note: str = ""


Stepper = Callable[[], int]
"""One batched step; returns how many environment steps it made."""


def measure(stepper: Stepper, seconds: float) -> float:
    """Environment steps per second of ``stepper`` over ``seconds`` of wall time, after a warm-up."""
    warm_until = time.perf_counter() + min(0.5, seconds / 5)
    while time.perf_counter() < warm_until:
        stepper()
    steps, start = 0, time.perf_counter()
    end = start + seconds
    while (now := time.perf_counter()) < end:
        steps += stepper()
    return steps / (now - start)


def policylens_vec(num_envs: int, **options) -> tuple[Stepper, Callable[[], None]]:
    env = gym.make_vec("policylens/Maze-v0", num_envs=num_envs, **options)
    env.reset(seed=SEED)
    rng = np.random.default_rng(SEED)
    n_actions = int(env.single_action_space.n)

    def step() -> int:
        env.step(rng.integers(0, n_actions, num_envs))
        return num_envs

    return step, env.close


def minigrid_sync(env_id: str, num_envs: int) -> tuple[Stepper, Callable[[], None]]:
    import minigrid  # noqa: F401  (registers the MiniGrid ids)

    env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync")
    env.reset(seed=SEED)
    rng = np.random.default_rng(SEED)
    n_actions = int(env.single_action_space.n)

    def step() -> int:
        env.step(rng.integers(0, n_actions, num_envs))
        return num_envs

    return step, env.close


def minigrid_loop(env_id: str, num_envs: int) -> tuple[Stepper, Callable[[], None]]:
    """One env stepped ``num_envs`` times per call: the plain loop a user would write."""
    import minigrid  # noqa: F401  (registers the MiniGrid ids)

    env = gym.make(env_id)
    env.reset(seed=SEED)
    rng = np.random.default_rng(SEED)
    n_actions = int(env.action_space.n)

    def step() -> int:
        for a in rng.integers(0, n_actions, num_envs):
            _, _, terminated, truncated, _ = env.step(int(a))
            if terminated or truncated:
                env.reset()
        return num_envs

    return step, env.close


def envpool_vec(task: str, num_envs: int) -> tuple[Stepper, Callable[[], None]]:
    import envpool

    env = envpool.make_gymnasium(
        task, num_envs=num_envs, num_threads=os.cpu_count() or 1, seed=SEED
    )
    env.reset()
    rng = np.random.default_rng(SEED)
    n_actions = int(env.action_space.n)

    def step() -> int:
        env.step(rng.integers(0, n_actions, num_envs))
        return num_envs

    return step, env.close


def run_row(
    row: Row, make: Callable[[], tuple[Stepper, Callable[[], None]]], seconds: float
) -> None:
    """Measure one row, keeping its best figure over repeats; a peer that fails is recorded."""
    if row.note:  # it already failed once; the reason will not change
        return
    try:
        stepper, close = make()
        try:
            figure = measure(stepper, seconds)
        finally:
            close()
        row.steps_per_s = max(figure, row.steps_per_s or 0.0)
    except Exception as exc:  # a missing optional peer must not stop the benchmark
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        row.note = f"not run: {type(exc).__name__}: {reason}"
        print(f"  {row.library} {row.env} ({row.driver}): {row.note}", flush=True)


def plan(num_envs: int) -> list[tuple[Row, Callable]]:
    """The rows measured for one number of environments."""
    rows: list[tuple[Row, Callable]] = [
        (
            Row("policylens", "Maze 9x9", "grid 3x9x9", "NumPy batch", num_envs),
            lambda: policylens_vec(num_envs),
        ),
        (
            Row("policylens", "Maze 9x9", "rgb 64x64", "NumPy batch", num_envs),
            lambda: policylens_vec(num_envs, obs_mode="rgb"),
        ),
    ]
    for level, opts in PROCGEN_LIKE.items():
        side = opts["world_size"]
        rows.append(
            (
                Row(
                    "policylens",
                    f"Maze {side}x{side} ({level}-like)",
                    "rgb 64x64",
                    "NumPy batch",
                    num_envs,
                ),
                lambda o=opts: policylens_vec(
                    num_envs, obs_mode="rgb", cheese_region=None, procgen_actions=True, **o
                ),
            )
        )
    for env_id in MINIGRID_IDS:
        short = env_id.removeprefix("MiniGrid-").removesuffix("-v0")
        rows.append(
            (
                Row("MiniGrid", short, "dict (7x7x3 view)", "SyncVectorEnv", num_envs),
                lambda e=env_id: minigrid_sync(e, num_envs),
            )
        )
        rows.append(
            (
                Row("MiniGrid", short, "dict (7x7x3 view)", "single-env loop", num_envs),
                lambda e=env_id: minigrid_loop(e, num_envs),
            )
        )
    threads = os.cpu_count() or 1
    for task in ("MazeEasy-v0", "MazeHard-v0"):
        rows.append(
            (
                Row("envpool", f"procgen {task}", "rgb 64x64", f"C++, {threads} threads", num_envs),
                lambda t=task: envpool_vec(t, num_envs),
            )
        )
    return rows


def best(rows: list[Row], library: str, obs_prefix: str = "", env: str = "") -> Row | None:
    """The fastest measured row of a library (optionally with given observation kind / env)."""
    hits = [
        r
        for r in rows
        if r.library == library
        and r.obs.startswith(obs_prefix)
        and env in r.env
        and r.steps_per_s is not None
    ]
    return max(hits, key=lambda r: r.steps_per_s or 0.0, default=None)


def ratio_line(label: str, ours: Row | None, theirs: Row | None, target: float) -> str:
    if ours is None or theirs is None:
        who = "policylens" if ours is None else "the peer"
        return f"{label}: not measured ({who} did not run; see above)"
    r = (ours.steps_per_s or 0.0) / (theirs.steps_per_s or 1.0)
    verdict = "meets" if r >= target else "MISSES"
    return (
        f"{label}: {r:6.1f}x  ({ours.env}, {ours.obs} vs {theirs.env}, {theirs.driver}; "
        f"target >= {target:g}x: {verdict})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="wall time per row")
    parser.add_argument("--num-envs", type=int, nargs="+", default=[64, 256])
    parser.add_argument(
        "--repeats", type=int, default=1, help="passes over all rows; each row keeps its best"
    )
    args = parser.parse_args()
    if args.seconds <= 0 or args.repeats < 1 or min(args.num_envs) < 1:
        parser.error("--seconds must be > 0, and --repeats and --num-envs >= 1")
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
        f"numpy {np.__version__}, gymnasium {gym.__version__}"
    )
    print(
        f"{args.seconds:g} s per row, best of {args.repeats} pass(es), random actions, seed {SEED}",
        flush=True,
    )

    header = f"{'library':<11} {'env':<26} {'obs':<18} {'driver':<16} {'envs':>5} {'steps/s':>12}"
    for num_envs in args.num_envs:
        planned = plan(num_envs)
        for rep in range(args.repeats):  # round-robin, so a burst of load hits every row alike
            print(f"  {num_envs} envs, pass {rep + 1}/{args.repeats}", flush=True)
            for row, make in planned:
                run_row(row, make, args.seconds)
        rows = [row for row, _ in planned]
        print()
        print(header)
        print("-" * len(header))
        for row in rows:
            figure = f"{row.steps_per_s:12,.0f}" if row.steps_per_s is not None else f"{'-':>12}"
            print(
                f"{row.library:<11} {row.env:<26} {row.obs:<18} {row.driver:<16} "
                f"{row.num_envs:>5} {figure}  {row.note}".rstrip()
            )
        print()
        print(f"ratios at {num_envs} envs:")
        print(
            ratio_line(
                "  policylens grid / best MiniGrid",
                best(rows, "policylens", "grid"),
                best(rows, "MiniGrid"),
                10.0,
            )
        )
        for ours_env, task in (
            ("9x9", "MazeEasy"),
            ("easy-like", "MazeEasy"),
            ("hard-like", "MazeHard"),
        ):
            print(
                ratio_line(
                    f"  policylens rgb64 {ours_env:<9} / envpool {task:<8}",
                    best(rows, "policylens", "rgb", ours_env),
                    best(rows, "envpool", "rgb", task),
                    1.0,
                )
            )
        print(flush=True)


if __name__ == "__main__":
    main()
