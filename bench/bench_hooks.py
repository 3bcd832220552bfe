"""Hook overhead of HookedAgent, and PPO-relevant speed of MazeCNN designs.

Part 1 (default): for maze_cnn at batch 256 (3x9x9) and IMPALA at batch 32 and 64 (64x64x3
uint8 frames), time
- ``bare``: a hand-written functional forward with the same weights and no HookPoint modules,
- ``plain``: ``agent(obs)`` with no hooks attached (idle HookPoints),
- ``cached``: ``agent.run_with_cache(obs)`` caching every hook point,
all under ``torch.no_grad()``, interleaved over rounds, and print median times and the ratios
cached/plain (target <= 1.15) and plain/bare (cost of idle hook points), as a user gets them: the
first ``run_with_cache`` turns on ``retain_freed_memory()`` (glibc keeps freed memory, so dropped
caches cost no page faults).

Part 2 (``--designs``): forward + backward + Adam step samples/s at batch 512 on 9x9 grids for
MazeCNN variants and two references (the 3-conv 16-channel CNN and the 243-256-256 MLP of the
design notes), i.e. what bounds PPO's update speed.

Run: ``.venv/bin/python bench/bench_hooks.py [--designs] [--rounds 7]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from policylens.agents import HookedAgent, build_agent


def bare_residual(res: nn.Module, x: Tensor) -> Tensor:
    out = F.conv2d(F.relu(x), res.conv1.weight, res.conv1.bias, padding=1)
    return F.conv2d(F.relu(out), res.conv2.weight, res.conv2.bias, padding=1) + x


def bare_impala(agent: HookedAgent, x: Tensor) -> tuple[Tensor, Tensor]:
    """IMPALA forward written with torch.nn.functional only (no modules, no hook points)."""
    e = agent.net.embedder
    for block in (e.block1, e.block2, e.block3):
        x = F.conv2d(x, block.conv.weight, block.conv.bias, padding=1)
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        x = bare_residual(block.res2, bare_residual(block.res1, x))
    h = F.relu(F.linear(F.relu(x).flatten(1), e.fc.weight, e.fc.bias))
    net = agent.net
    return F.linear(h, net.fc_policy.weight, net.fc_policy.bias), F.linear(
        h, net.fc_value.weight, net.fc_value.bias
    ).squeeze(-1)


def bare_maze_cnn(agent: HookedAgent, x: Tensor) -> tuple[Tensor, Tensor]:
    """MazeCNN forward written with torch.nn.functional only."""
    net = agent.net
    if net.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x = F.conv2d(x, net.conv.weight, net.conv.bias, padding=1)
    for i in range(net.res_blocks):
        x = bare_residual(getattr(net, f"res{i + 1}"), x)
    h = F.relu(F.linear(F.relu(x).flatten(1), net.fc.weight, net.fc.bias))
    return F.linear(h, net.fc_policy.weight, net.fc_policy.bias), F.linear(
        h, net.fc_value.weight, net.fc_value.bias
    ).squeeze(-1)


CLOCK: Callable[[], float] = time.perf_counter


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, iters: int) -> dict[str, float]:
    """Median seconds per call of each fn, measured in interleaved rounds (robust to noise)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up (oneDNN primitive caches, allocator)
        for _ in range(3):
            fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            t = CLOCK()
            for _ in range(iters):
                fn()
            times[name].append((CLOCK() - t) / iters)
    return {k: statistics.median(v) for k, v in times.items()}


def hook_overhead(rounds: int) -> None:
    cases = [
        ("maze_cnn", (3, 9, 9), 4, 256, bare_maze_cnn, {}, 50),
        ("impala", (64, 64, 3), 15, 32, bare_impala, {}, 3),
        ("impala", (64, 64, 3), 15, 64, bare_impala, {}, 2),
    ]
    print("Hook overhead (no_grad forward; median of interleaved rounds)")
    for arch, shape, actions, batch, bare, kwargs, iters in cases:
        agent = build_agent(arch, shape, actions, **kwargs).eval()
        g = torch.Generator().manual_seed(0)
        if arch == "impala":
            obs = torch.randint(0, 256, (batch, *shape), dtype=torch.uint8, generator=g)
        else:
            obs = (torch.rand((batch, *shape), generator=g) < 0.3).float()
        n_points = len(agent.hook_names())
        with torch.no_grad():
            (logits, value), cache = agent.run_with_cache(obs)
            ref = bare(agent, agent.preprocess(obs))
            assert torch.allclose(ref[0], logits, atol=1e-5) and len(cache) == n_points
            t = interleaved(
                {
                    "bare": lambda a=agent, o=obs, b=bare: b(a, a.preprocess(o)),
                    "plain": lambda a=agent, o=obs: a(o),
                    "cached": lambda a=agent, o=obs: a.run_with_cache(o),
                },
                rounds,
                iters,
            )
        print(
            f"  {arch:8s} batch {batch:3d} ({n_points} hook points): bare {t['bare'] * 1e3:7.2f} ms"
            f"  plain {t['plain'] * 1e3:7.2f} ms  cached {t['cached'] * 1e3:7.2f} ms"
            f"  | cached/plain {t['cached'] / t['plain']:.3f}x  plain/bare "
            f"{t['plain'] / t['bare']:.3f}x  cached/bare {t['cached'] / t['bare']:.3f}x"
        )


class ThreeConv(nn.Module):
    """The design notes' reference: 3 x (3x3 conv, 16 ch, ReLU) -> fc 256 -> heads."""

    def __init__(self, channels_last: bool) -> None:
        super().__init__()
        self.channels_last = channels_last
        self.convs = nn.Sequential(
            *[
                m
                for i in range(3)
                for m in (nn.Conv2d(3 if i == 0 else 16, 16, 3, padding=1), nn.ReLU())
            ]
        )
        self.fc = nn.Linear(16 * 81, 256)
        self.pi, self.v = nn.Linear(256, 4), nn.Linear(256, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        h = F.relu(self.fc(self.convs(x).flatten(1)))
        return self.pi(h), self.v(h).squeeze(-1)


def designs(rounds: int, batch: int = 512) -> None:
    shape = (3, 9, 9)
    variants: dict[str, Callable[[Tensor], tuple[Tensor, Tensor]]] = {}
    for ch, res, cl in [(16, 1, True), (16, 1, False), (32, 1, True), (16, 2, True), (32, 0, True)]:
        agent = build_agent("maze_cnn", shape, 4, channels=ch, res_blocks=res, channels_last=cl)
        variants[f"maze_cnn ch={ch} res={res} cl={int(cl)}"] = agent
    for cl in (True, False):
        variants[f"3xconv16 (notes) cl={int(cl)}"] = ThreeConv(cl)
    variants["mlp 243-256-256 tanh"] = build_agent("mlp", shape, 4, hidden=[256, 256])
    g = torch.Generator().manual_seed(0)
    x = (torch.rand((batch, *shape), generator=g) < 0.3).float()

    def step_fn(net: nn.Module) -> Callable[[], None]:
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)

        def step() -> None:
            logits, value = net(x)
            loss = torch.logsumexp(logits, -1).mean() + value.square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    fns = {name: step_fn(net) for name, net in variants.items()}
    t = interleaved(fns, rounds, iters=10)
    print(f"PPO update speed: forward + backward + Adam, batch {batch}, 3x9x9 (samples/s)")
    for name, sec in t.items():
        n = sum(p.numel() for p in variants[name].parameters())
        print(f"  {name:30s} {batch / sec:9.0f} samples/s   ({n:,} params)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--designs", action="store_true", help="also time MazeCNN designs")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall time, or this process's CPU time (steadier on a shared machine; use with "
        "--threads 1)",
    )
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock")
    hook_overhead(args.rounds)
    if args.designs:
        designs(args.rounds)


if __name__ == "__main__":
    main()
