"""policylens PPO vs Stable-Baselines3 PPO on the same world, network and hyperparameters.

Both train for the same number of environment steps; the script prints each one's steps/s and
the ratio. ``--world maze`` (the default): the maze recipe's MazeCNN, and both agents' success
and path efficiency on the same 500 training-distribution mazes. ``--world hazards-pixel``: the
pixel hazard agent's recipe (52x52 RGB frames of path levels, ``clear_cnn`` with first stride 2,
the zoo's hazards-pixel entry), and each side's completion of its own training episodes over
the last 100 (SB3 has no hazard-world evaluator; a level completed pays 10).

    python bench/bench_ppo.py [--world maze|hazards-pixel] [--steps 300000] [--threads 2]
                              [--repeats 2] [--precision auto|float32|bfloat16]

policylens trains with ``precision="auto"`` by default (bf16 autocast where the CPU has native bf16,
float32 weights and optimiser); SB3 has no mixed precision and runs float32. ``--precision
float32`` compares like with like.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from torch import nn

from policylens.agents.hooks import retain_freed_memory
from policylens.studies.maze.behaviour import evaluate
from policylens.train.ppo import PPOConfig, compute_dtype, train_ppo
from policylens.worlds.hazards import HazardsRecipe
from policylens.worlds.maze import MazeRecipe


def clear_cnn_body(channels: int = 16, hidden: int = 256, first_stride: int = 2):
    """SB3's features extractor class for policylens's ClearCNN trunk, built from the same
    layers (conv1a 7x7 -> L2 pool -> conv2a, conv2b 5x5 -> L2 pool -> conv3a -> L2 pool -> fc)."""
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

    from policylens.agents.models import ConvLayer, l2_pool

    class ClearBody(BaseFeaturesExtractor):
        def __init__(self, space):
            super().__init__(space, hidden)
            c, h, w = space.shape  # SB3 hands images over channels-first, scaled to [0, 1]
            c2 = 2 * channels
            self.conv1a = ConvLayer(c, channels, 7, stride=first_stride)
            self.conv2a, self.conv2b = ConvLayer(channels, c2, 5), ConvLayer(c2, c2, 5)
            self.conv3a = ConvLayer(c2, c2, 5)
            with torch.no_grad():
                n = self.trunk(torch.zeros(1, c, h, w)).shape[1]
            self.fc = nn.Linear(n, hidden)

        def trunk(self, x):
            x = l2_pool(self.conv1a(x))
            x = l2_pool(self.conv2b(self.conv2a(x)))
            return l2_pool(self.conv3a(x)).flatten(1)

        def forward(self, x):
            return torch.relu(self.fc(self.trunk(x)))

    return ClearBody


def sb3_ppo(config: PPOConfig, threads: int):
    """SB3 PPO with the recipe's body (MazeCNN or ClearCNN) as its features extractor and the
    same hyperparameters."""
    import gymnasium as gym
    from stable_baselines3 import PPO
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
    from stable_baselines3.common.vec_env import DummyVecEnv

    import policylens  # noqa: F401  (registers the maze)

    class MazeBody(BaseFeaturesExtractor):
        """conv -> residual block -> fc 256, as policylens' MazeCNN (heads are SB3's)."""

        def __init__(self, space, channels: int = 16, hidden: int = 256):
            super().__init__(space, hidden)
            c, h, w = space.shape
            self.conv = nn.Conv2d(c, channels, 3, padding=1)
            self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
            self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
            self.fc = nn.Linear(channels * h * w, hidden)

        def forward(self, x):
            x = self.conv(x.float())
            x = x + self.conv2(torch.relu(self.conv1(torch.relu(x))))
            return torch.relu(self.fc(torch.relu(x).flatten(1)))

    pixels = config.arch == "clear_cnn"
    body = clear_cnn_body(**config.arch_kwargs) if pixels else MazeBody
    torch.set_num_threads(threads)
    envs = DummyVecEnv(
        [
            lambda: Monitor(gym.make(config.env_id, **config.env_kwargs))
            for _ in range(config.num_envs)
        ]
    )
    return PPO(
        "CnnPolicy",
        envs,
        learning_rate=(lambda frac: config.learning_rate * frac)
        if config.anneal_lr
        else config.learning_rate,
        n_steps=config.num_steps,
        batch_size=config.batch_size // config.num_minibatches,
        n_epochs=config.update_epochs,
        gamma=config.gamma,
        gae_lambda=config.gae_lambda,
        clip_range=config.clip_coef,
        ent_coef=config.ent_coef,
        vf_coef=config.vf_coef,
        max_grad_norm=config.max_grad_norm,
        policy_kwargs=dict(features_extractor_class=body, net_arch=[], normalize_images=pixels),
        seed=config.seed,
        device="cpu",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", default="maze", choices=("maze", "hazards-pixel"))
    parser.add_argument("--steps", type=int, default=300_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--episodes", type=int, default=500)
    parser.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"))
    parser.add_argument("--repeats", type=int, default=1, help="Runs per side, order alternating.")
    args = parser.parse_args()
    retain_freed_memory()
    # Both optimisers import torch._dynamo on first use (~2 s); import it before either clock runs.
    import torch._dynamo  # noqa: F401

    if args.world == "maze":
        config = MazeRecipe(total_steps=args.steps).config()
    else:  # the zoo's hazards-pixel recipe
        config = HazardsRecipe(
            num_levels=100_000, layout="path", obs_mode="rgb", tile_px=4, first_stride=2,
            learning_rate=5e-4, total_steps=args.steps,
        ).config()  # fmt: skip
    config = PPOConfig(**{**config.__dict__, "threads": args.threads, "precision": args.precision})
    env_kwargs = config.env_kwargs

    from policylens.agents.load import sb3_agent

    steps = config.num_updates * config.batch_size

    def ours() -> tuple[float, dict]:
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            run = train_ppo(config, f"{tmp}/pl", progress=False)
            secs = time.perf_counter() - t
            if args.world != "maze":
                return secs, {"completion": float(run.metrics()[-1]["success"])}
            return secs, evaluate(
                run.load_agent(), args.episodes, config.env_id, env_kwargs, seed=99
            ).summary

    def theirs() -> tuple[float, dict]:
        model = sb3_ppo(config, args.threads)
        t = time.perf_counter()
        model.learn(total_timesteps=steps)
        secs = time.perf_counter() - t
        if args.world != "maze":  # a completed level pays 10, any other end 0
            rewards = [e["r"] for e in model.ep_info_buffer]
            return secs, {"completion": float(np.mean(rewards)) / 10 if rewards else float("nan")}
        return secs, evaluate(
            sb3_agent(model), args.episodes, config.env_id, env_kwargs, seed=99
        ).summary

    # Repeats alternate the order (ours, SB3, SB3, ours, ...) so a machine that slows down or
    # speeds up over the run favours neither side; each side's fastest run is reported.
    results: dict[str, list[tuple[float, dict]]] = {"policylens": [], "SB3": []}
    for r in range(args.repeats):
        order = (("policylens", ours), ("SB3", theirs))
        for name, fn in order if r % 2 == 0 else order[::-1]:
            results[name].append(fn())
    (pl_time, pl_eval), (sb3_time, sb3_eval) = (
        min(results[k], key=lambda x: x[0]) for k in results
    )

    if args.world == "maze":
        print(f"{'':14}{'steps/s':>10}{'success':>10}{'len/shortest':>14}")
        for name, secs, ev in (("policylens", pl_time, pl_eval), ("SB3", sb3_time, sb3_eval)):
            print(f"{name:14}{steps / secs:>10.0f}{ev['success']['rate']:>10.3f}"
                  f"{ev['path_ratio']:>14.2f}")  # fmt: skip
    else:
        print(f"{'':14}{'steps/s':>10}{'completion (own training episodes)':>36}")
        for name, secs, ev in (("policylens", pl_time, pl_eval), ("SB3", sb3_time, sb3_eval)):
            print(f"{name:14}{steps / secs:>10.0f}{ev['completion']:>36.3f}")
    print(
        f"speed ratio policylens / SB3: {sb3_time / pl_time:.2f}x at {steps:,} steps each, best of "
        f"{args.repeats} "
        f"(policylens precision {args.precision}: {compute_dtype(args.precision)})"
    )


if __name__ == "__main__":
    main()
