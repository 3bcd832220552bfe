"""What a pixel agent (``clear_cnn``) costs per input size and first stride, on one thread.

Usage::

    python bench/bench_pixel_agent.py [--sizes 64:1,64:2,52:2,64:4,39:1] [--ppo 52:2,64:2]

For each ``side:stride`` it times one Adam step (forward, backward, step) on a batch of 512
random frames, in float32 and under bf16 autocast, and a no-grad forward of 64 frames (one
rollout step of 64 envs). With ``--ppo`` it also runs the whole PPO loop of the hazards recipe
(path levels, 64 envs x 128 steps, 2 epochs of 8 minibatches, precision "auto") for
``--updates`` updates in a temporary folder and prints its steps per second. The peer is the
paper's own input, 64 x 64 at stride 1: the ratios say how much cheaper each choice trains.
Everything runs at ``torch.set_num_threads(1)`` (the long training's setting). It writes no files.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from dataclasses import replace

import torch

from policylens.agents import build_agent


def adam_step_rate(side: int, stride: int, bf16: bool, reps: int = 4) -> float:
    """Samples per second of one Adam step on a batch of 512 frames."""
    agent = build_agent("clear_cnn", (side, side, 3), 15, first_stride=stride)
    opt = torch.optim.Adam(agent.parameters(), lr=1e-4, fused=True)
    x = torch.randint(0, 255, (512, side, side, 3), dtype=torch.uint8, generator=GEN)

    def step() -> None:
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            logits, value = agent(x)
        loss = logits.float().logsumexp(-1).mean() + value.float().pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    t = time.perf_counter()
    for _ in range(reps):
        step()
    return 512 * reps / (time.perf_counter() - t)


def forward_ms(side: int, stride: int, bf16: bool, reps: int = 10) -> float:
    """Milliseconds of a no-grad forward of 64 frames."""
    agent = build_agent("clear_cnn", (side, side, 3), 15, first_stride=stride)
    x = torch.randint(0, 255, (64, side, side, 3), dtype=torch.uint8, generator=GEN)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        agent(x)
        t = time.perf_counter()
        for _ in range(reps):
            agent(x)
    return (time.perf_counter() - t) / reps * 1e3


def ppo_rate(side: int, stride: int, updates: int) -> float:
    """Steps per second of the hazards recipe's PPO loop (the last update's)."""
    from policylens.train.ppo import train_ppo
    from policylens.worlds.hazards import HazardsRecipe

    if side == 64:
        config = HazardsRecipe(
            layout="path", obs_mode="rgb64", first_stride=stride, threads=1
        ).config()
    else:
        tile_px, rest = divmod(side, 13)
        if rest:
            raise ValueError(f"--ppo sizes are 64 or a multiple of 13 (13 tiles), got {side}")
        config = HazardsRecipe(
            layout="path", obs_mode="rgb", tile_px=tile_px, first_stride=stride, threads=1
        ).config()
    config = replace(config, total_steps=config.batch_size * (updates + 1))
    with tempfile.TemporaryDirectory() as out:
        train_ppo(config, out, progress=False, stop_after_updates=updates)
        with open(f"{out}/metrics.csv") as f:
            rows = list(csv.DictReader(f))
    return float(rows[-1]["steps_per_s"])


def pairs(text: str) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in (item.split(":") for item in text.split(",") if item)]


GEN = torch.Generator().manual_seed(0)

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64:1,64:2,52:2,64:4,39:1")
    parser.add_argument("--ppo", default="", help="side:stride pairs for the PPO loop")
    parser.add_argument("--updates", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    peer = {bf16: adam_step_rate(64, 1, bf16) for bf16 in (False, True)}
    for side, stride in pairs(args.sizes):
        row = []
        for bf16 in (False, True):
            rate = peer[bf16] if (side, stride) == (64, 1) else adam_step_rate(side, stride, bf16)
            row.append(f"{'bf16' if bf16 else 'float32'} {rate:,.0f} samples/s "
                       f"({rate / peer[bf16]:.1f}x 64:1), fwd(64) "
                       f"{forward_ms(side, stride, bf16):.1f} ms")  # fmt: skip
        print(f"{side}x{side} stride {stride}: " + "; ".join(row), flush=True)
    for side, stride in pairs(args.ppo):
        rate = ppo_rate(side, stride, args.updates)
        print(f"PPO loop {side}x{side} stride {stride}: {rate:,.0f} steps/s", flush=True)
