"""Integrated gradients: policylens vs Captum 0.9 on the same model, inputs and settings, one run.

Cases: the maze CNN on 9x9 grid observations (batch 64) and the IMPALA CNN on 64x64x3 images
(small batch), input IG and layer IG (to the value, n_steps equal for both, Gauss-Legendre).
Captum runs without ``internal_batch_size`` (its fastest setting: one pass over n_steps x batch
rows, memory unbounded); policylens runs with its default memory bound. Prints seconds per call
(best of ``--repeats``, the two libraries interleaved), observations/s, the ratio and the largest
difference between the two results.

    .venv/bin/python bench/bench_attribution.py [--threads 2] [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from captum.attr import IntegratedGradients, LayerIntegratedGradients

from policylens.agents import build_agent
from policylens.envs.maze import MazeBatch, MazeConfig
from policylens.lenses.attribution import attribute


def maze_obs(n: int, world: int = 9, seed: int = 0) -> np.ndarray:
    batch = MazeBatch(MazeConfig(world_size=world, cheese_region=None), n)
    for i in range(n):
        batch.load(i, batch.level(seed + i))
    return batch.obs.copy()


def image_obs(n: int, seed: int = 0) -> np.ndarray:
    cfg = MazeConfig(world_size=15, maze_sizes=(5, 15), obs_mode="rgb", rgb_size=64)
    batch = MazeBatch(cfg, n)
    for i in range(n):
        batch.load(i, batch.level(seed + i))
    return batch.obs.copy()  # (n, 64, 64, 3) uint8


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def case(name: str, agent, obs: np.ndarray, layer: str | None, n_steps: int, repeats: int) -> dict:
    x = agent.preprocess(obs)

    def value(inp: torch.Tensor) -> torch.Tensor:
        return agent.forward_input(inp)[1]

    if layer is None:
        captum_ig = IntegratedGradients(value)
        baseline = torch.zeros_like(x)

        def theirs():
            return captum_ig.attribute(x, baselines=baseline, n_steps=n_steps)

        def ours():
            return attribute(agent, x, "ig", "value", n_steps=n_steps, preprocessed=True)
    else:
        captum_ig = LayerIntegratedGradients(value, agent.hook_dict[layer])
        baseline = torch.zeros_like(x)

        def theirs():
            return captum_ig.attribute(x, baselines=baseline, n_steps=n_steps)

        def ours():
            return attribute(agent, x, "ig", "value", layer, baseline="zero_input",
                             n_steps=n_steps, preprocessed=True)  # fmt: skip

    a, b = ours(), theirs()  # warm-up, and the results to compare
    diff = float((a.attributions - b).abs().max())
    scale = float(b.abs().max())
    t_ours, t_theirs = [], []
    for _ in range(repeats):  # interleaved, so load changes hit both alike
        t_theirs.append(best_time(theirs, 1))
        t_ours.append(best_time(ours, 1))
    t1, t2 = min(t_ours), min(t_theirs)
    n = len(obs)
    print(
        f"{name:<44} policylens {t1:7.3f}s ({n / t1:8.1f} obs/s)  captum {t2:7.3f}s "
        f"({n / t2:8.1f} obs/s)  ratio {t2 / t1:4.2f}x  max|diff| {diff:.1e} (scale {scale:.1e})  "
        f"rows/pass {a.info.get('rows_per_pass')} vs {n * n_steps}"
    )
    return {"case": name, "ours_s": t1, "captum_s": t2, "ratio": t2 / t1, "max_diff": diff}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--n-steps", type=int, default=50)
    p.add_argument("--quick", action="store_true", help="Small sizes (a smoke run).")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    n_steps = 8 if args.quick else args.n_steps
    print(f"torch {torch.__version__}, {args.threads} threads, n_steps {n_steps}, float32, "
          f"Gauss-Legendre, target = value, best of {args.repeats}")  # fmt: skip
    maze = build_agent("maze_cnn", (3, 9, 9), 4, seed=0)
    obs = maze_obs(8 if args.quick else 64)
    case(f"maze_cnn 3x9x9 batch {len(obs)}: input IG", maze, obs, None, n_steps, args.repeats)
    case(f"maze_cnn 3x9x9 batch {len(obs)}: layer IG res1.hook_out", maze, obs, "res1.hook_out",
         n_steps, args.repeats)  # fmt: skip
    impala = build_agent("impala", (64, 64, 3), 15, seed=0)
    img = image_obs(2 if args.quick else 4)
    case(f"impala 3x64x64 batch {len(img)}: input IG", impala, img, None, n_steps, args.repeats)
    layer = "embedder.block2.res2.hook_out"
    case(f"impala 3x64x64 batch {len(img)}: layer IG block2 out", impala, img, layer, n_steps,
         args.repeats)  # fmt: skip


if __name__ == "__main__":
    main()
