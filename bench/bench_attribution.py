"""Integrated gradients: policylens vs Captum 0.9 and tdhook 0.3 on the same model, inputs and
settings, one run.

Cases: the maze CNN on 9x9 grid observations (batch 64) and the IMPALA CNN on 64x64x3 images
(small batch), input IG and layer IG (to the value, n_steps equal for both, Gauss-Legendre).
Captum runs without ``internal_batch_size`` (its fastest setting: one pass over n_steps x batch
rows, memory unbounded); policylens runs with its default memory bound. Prints seconds per call
(best of ``--repeats``, the two libraries interleaved), observations/s, the ratio and the largest
difference between the two results. Layer cases also time the bound to beat: input IG on the
network above the layer split off by hand (the activation below computed once, every
interpolated point in one pass), as tdhook's users do it. Input cases also time tdhook's
``IntegratedGradients`` (Gauss-Legendre, ``multiply_by_inputs``, no internal batching: one pass).

    .venv/bin/python bench/bench_attribution.py [--threads 2] [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import IntegratedGradients as CaptumIG
from captum.attr import LayerIntegratedGradients
from tdhook.attribution import IntegratedGradients as TdhookIG
from tensordict import TensorDict

from policylens.agents import build_agent
from policylens.envs.maze import MazeBatch, MazeConfig
from policylens.lenses.attribution import (
    IntegratedGradients,
    attribute,
    integration_rule,
    layer_activation,
)


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


CLOCK = time.perf_counter


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = CLOCK()
        fn()
        times.append(CLOCK() - t)
    return min(times)


def hand_tail(agent, layer: str):
    """The value computed from ``layer`` onwards, written out by hand for the two layers timed."""
    net = agent.net
    if layer == "res1.hook_out":  # maze_cnn: relu -> fc -> relu -> value head

        def tail(act: torch.Tensor) -> torch.Tensor:
            h = F.relu(net.fc(F.relu(act).flatten(1)))
            return net.fc_value(h).squeeze(-1)

        return tail
    if layer == "embedder.block2.res2.hook_out":  # impala: block3 -> relu -> fc -> relu -> value
        e = net.embedder

        def tail(act: torch.Tensor) -> torch.Tensor:
            h = F.relu(e.fc(F.relu(e.block3(act)).flatten(1)))
            return net.fc_value(h).squeeze(-1)

        return tail
    raise ValueError(f"no hand-split tail for {layer}")


def hand_split_ig(agent, x: torch.Tensor, layer: str, n_steps: int) -> torch.Tensor:
    """Layer IG the hand-split way: activations once, then input IG on the tail in one pass."""
    tail = hand_tail(agent, layer)
    with torch.no_grad():
        act = layer_activation(agent, x, layer)
        base = layer_activation(agent, torch.zeros_like(x), layer)
    alphas, weights = (torch.as_tensor(v, dtype=act.dtype) for v in integration_rule(n_steps))
    diff = act - base
    shape = (n_steps, *([1] * act.dim()))
    points = (base.unsqueeze(0) + alphas.view(shape) * diff.unsqueeze(0)).flatten(0, 1)
    points.requires_grad_(True)
    (grad,) = torch.autograd.grad(tail(points).sum(), points)
    return diff * (weights.view(shape) * grad.view(n_steps, *act.shape)).sum(0)


def tdhook_ig(agent, x: torch.Tensor, n_steps: int):
    """tdhook's input IG of the value (zero baseline), as its README wires a model."""

    class Value(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = agent.net

        def forward(self, input: torch.Tensor) -> torch.Tensor:
            return self.net(input)[1]

    value = Value()

    def target(outputs, _):
        return TensorDict(out=outputs["output"], batch_size=outputs.batch_size)

    method = TdhookIG(init_attr_targets=target, n_steps=n_steps, multiply_by_inputs=True)

    def run() -> torch.Tensor:
        with method.prepare(value) as hooked:
            data = TensorDict(
                {"input": x, ("baseline", "input"): torch.zeros_like(x)}, batch_size=[len(x)]
            )
            return hooked(data)["attr", "input"]

    return run


def case(name: str, agent, obs: np.ndarray, layer: str | None, n_steps: int, repeats: int) -> dict:
    x = agent.preprocess(obs)

    def value(inp: torch.Tensor) -> torch.Tensor:
        return agent.forward_input(inp)[1]

    if layer is None:
        captum_ig = CaptumIG(value)
        ig = IntegratedGradients(n_steps=n_steps)
        baseline = torch.zeros_like(x)

        def theirs():
            return captum_ig.attribute(x, baselines=baseline, n_steps=n_steps)

        def ours():
            return attribute(agent, x, ig, "value", preprocessed=True)
    else:
        captum_ig = LayerIntegratedGradients(value, agent.hook_dict[layer])
        ig = IntegratedGradients(n_steps=n_steps, baseline="zero_input")
        baseline = torch.zeros_like(x)

        def theirs():
            return captum_ig.attribute(x, baselines=baseline, n_steps=n_steps)

        def ours():
            return attribute(agent, x, ig, "value", layer, preprocessed=True)

    a, b = ours(), theirs()  # warm-up, and the results to compare
    diff = float((a.attributions - b).abs().max())
    scale = float(b.abs().max())

    def split():
        with torch.enable_grad():
            return hand_split_ig(agent, x, layer, n_steps)

    if layer is not None:
        split_diff = float((split() - a.attributions).abs().max())
    td = tdhook_ig(agent, x, n_steps) if layer is None else None
    t_ours, t_theirs, t_split, t_td = [], [], [], []
    for _ in range(repeats):  # interleaved, so load changes hit all alike
        t_theirs.append(best_time(theirs, 1))
        t_ours.append(best_time(ours, 1))
        if td is not None:
            t_td.append(best_time(td, 1))
        if layer is not None:
            t_split.append(best_time(split, 1))
    t1, t2 = min(t_ours), min(t_theirs)
    n = len(obs)
    print(
        f"{name:<44} policylens {t1:7.3f}s ({n / t1:8.1f} obs/s)  captum {t2:7.3f}s "
        f"({n / t2:8.1f} obs/s)  ratio {t2 / t1:4.2f}x  max|diff| {diff:.1e} (scale {scale:.1e})  "
        f"rows/pass {a.info.get('rows_per_pass')} vs {n * n_steps}"
    )
    if td is not None:
        td_diff = float((td() - a.attributions).abs().max())
        t4 = min(t_td)
        print(
            f"{'':<44} tdhook {t4:7.3f}s ({n / t4:8.1f} obs/s): tdhook/policylens {t4 / t1:4.2f}x"
            f"  max|diff| vs policylens {td_diff:.1e}"
        )
    if layer is not None:
        t3 = min(t_split)
        print(
            f"{'':<44} hand-split tail (the bound) {t3:7.3f}s: policylens / bound "
            f"{t1 / t3:4.2f}x (<= 1 meets it)  max|diff| {split_diff:.1e}"
        )
    return {"case": name, "ours_s": t1, "captum_s": t2, "ratio": t2 / t1, "max_diff": diff}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--n-steps", type=int, default=50)
    p.add_argument("--quick", action="store_true", help="Small sizes (a smoke run).")
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall time, or this process's CPU time (steadier on a shared machine; use with "
        "--threads 1)",
    )
    args = p.parse_args()
    global CLOCK
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    torch.set_num_threads(args.threads)
    n_steps = 8 if args.quick else args.n_steps
    print(f"torch {torch.__version__}, {args.threads} threads, {args.clock} clock, n_steps {n_steps}, float32, "
          f"Gauss-Legendre, target = value, best of {args.repeats}")  # fmt: skip
    maze = build_agent("maze_cnn", (3, 9, 9), 4, seed=0)
    obs = maze_obs(8 if args.quick else 64)
    case(f"maze_cnn 3x9x9 batch {len(obs)}: input IG", maze, obs, None, n_steps, args.repeats)
    case(f"maze_cnn 3x9x9 batch {len(obs)}: layer IG res1.hook_out", maze, obs, "res1.hook_out",
         n_steps, args.repeats)  # fmt: skip
    impala = build_agent("impala", (64, 64, 3), 15, seed=0)
    img = image_obs(2 if args.quick else 4)
    case(f"impala 3x64x64 batch {len(img)}: input IG", impala, img, None, n_steps, args.repeats)
    big = image_obs(4 if args.quick else 64)
    case(f"impala 3x64x64 batch {len(big)}: input IG", impala, big, None, n_steps, args.repeats)
    layer = "embedder.block2.res2.hook_out"
    case(f"impala 3x64x64 batch {len(img)}: layer IG block2 out", impala, img, layer, n_steps,
         args.repeats)  # fmt: skip


if __name__ == "__main__":
    main()
