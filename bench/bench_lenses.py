"""LRP and Grad-CAM: policylens vs tdhook 0.3 and Captum 0.9 on the same model and inputs.

Cases: the (untrained) IMPALA CNN on random 64x64x3 frames and the zoo's trained maze agent
(zoo:maze-corner) on real 9x9 mazes, batch 256, the value as target, in float32 and with bf16 weights (``agent.bfloat16()``: every library then runs bf16).
LRP uses the epsilon rule everywhere (eps 1e-9, Captum's default; the rule both peers have);
Grad-CAM the last conv hook (Grad-CAM's choice), tdhook without its ReLU (it has none).

Results are checked equal first. Neither peer splits a functional residual ``+`` (they copy the
relevance into both summands; policylens splits it in proportion), so the LRP check runs on a
copy whose residual blocks add zero (their second conv zeroed), where all conventions agree;
the timings use the original weights. tdhook agrees there; Captum's LRP still differs on
these residual networks (not traced down; its rules act only on registered modules, and these
networks call ReLU functionally; tests/test_lrp.py shows it equal on networks without skips),
so its LRP time is printed, its LRP check is only informative. The peers' maze copy runs
channels-first (the channels-last flatten bypasses ``fc``'s module, which their hooks need);
policylens runs the agent as it loads. The peers get their best setting: tdhook's context is entered once (on its own copy of the network, whose
modules it rewires), Captum's objects are built once.

Prints seconds per call (best of ``--repeats``, the libraries interleaved) and the ratio of the
faster peer's time to policylens's (> 1: policylens is faster).

    .venv/bin/python bench/bench_lenses.py [--threads 1] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import LRP as CaptumLRP
from captum.attr import LayerGradCam
from tdhook.attribution import LRP as TdhookLRP
from tdhook.attribution.grad_cam import DimsConfig
from tdhook.attribution.grad_cam import GradCAM as TdhookGradCAM
from tdhook.attribution.lrp_helpers.rules import EpsilonRule
from tensordict import TensorDict
from torch import nn

from policylens import load_agent
from policylens.agents import build_agent
from policylens.agents.hooks import HookPoint
from policylens.envs.maze import MazeBatch, MazeConfig
from policylens.lenses.attribution import attribute
from policylens.lenses.cam import GradCAM
from policylens.lenses.relevance import LRP

EPS = 1e-9
LAYERS = (nn.Linear, nn.Conv2d)


class Joined(nn.Module):
    """(logits, value) as one (batch, A + 1) tensor, for the peers."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, value = self.net(x)
        return torch.cat([logits, value[:, None]], 1)


def captum_model(net: nn.Module) -> nn.Module:
    """A copy Captum's LRP accepts: hook points become (eval) Dropout, which it passes through."""
    model = copy.deepcopy(Joined(net)).eval()
    for name, m in list(model.named_modules()):
        if isinstance(m, HookPoint):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, nn.Dropout())
    return model


def value_target(t: TensorDict, _: object) -> TensorDict:
    return TensorDict(out=t["output"][..., -1], batch_size=t.batch_size)


def start_at_output(t: TensorDict, _: object) -> TensorDict:
    return TensorDict(out=t["out"].detach(), batch_size=t.batch_size)


def lrp_callers(agent, ours, x: torch.Tensor, stack: contextlib.ExitStack) -> dict[str, Callable]:
    """``agent`` for the peers, ``ours`` (the same weights, as a user builds it) for policylens."""
    net = agent.net
    mapper = lambda name, m: EpsilonRule(epsilon=EPS) if isinstance(m, LAYERS) else None  # noqa: E731
    td = TdhookLRP(rule_mapper=mapper, init_attr_targets=value_target,
                   init_attr_grads=start_at_output, warn_on_missing_rule=False,
                   skip_modules=TdhookLRP.default_skip)  # fmt: skip
    hooked = stack.enter_context(td.prepare(Joined(copy.deepcopy(net))))  # its rules stay on
    data = TensorDict({"input": x}, batch_size=[len(x)])
    captum = CaptumLRP(captum_model(net))
    method = LRP(epsilon=EPS)
    return {
        "policylens": lambda: attribute(ours, x, method, "value", preprocessed=True).attributions,
        "tdhook": lambda: hooked(data)["attr", "input"],
        "captum": lambda: captum.attribute(x, target=agent.num_actions),
    }


def cam_callers(agent, ours, x: torch.Tensor, layer: str, stack: contextlib.ExitStack) -> dict:
    dims = {f"net.{layer}": DimsConfig(weight_pooling_dims=(2, 3), feature_sum_dims=(1,))}
    hooked = stack.enter_context(
        TdhookGradCAM(dims, init_attr_targets=value_target).prepare(
            Joined(copy.deepcopy(agent.net))
        )
    )
    data = TensorDict({"input": x}, batch_size=[len(x)])
    captum = LayerGradCam(lambda t: agent.forward_input(t)[1], agent.hook_dict[layer])
    method = GradCAM()
    return {
        "policylens": lambda: attribute(
            ours, x, method, "value", layer, preprocessed=True
        ).attributions[:, 0],
        "tdhook": lambda: F.relu(hooked(data)["attr", f"net.{layer}"]),
        "captum": lambda: captum.attribute(x, relu_attributions=True)[:, 0],
    }


def zero_residuals(agent):
    """A copy whose residual blocks add zero (``conv2`` zeroed): every LRP convention agrees."""
    twin = copy.deepcopy(agent)
    with torch.no_grad():
        for name, m in twin.net.named_modules():
            if name.endswith("conv2") and isinstance(m, nn.Conv2d):
                m.weight.zero_()
                m.bias.zero_()
    return twin


def agreement(results: dict[str, torch.Tensor]) -> str:
    ours = results["policylens"].detach().float()
    parts = []
    for peer in ("tdhook", "captum"):
        theirs = results[peer].detach().float()
        rel = float((ours - theirs).abs().max() / theirs.abs().max().clamp(min=1e-30))
        cos = float(F.cosine_similarity(ours.flatten(1), theirs.flatten(1)).min())
        parts.append(f"{peer} rel {rel:.1e} cos {cos:.6f}")
    return ", ".join(parts)


def timed(callers: dict[str, Callable], repeats: int) -> dict[str, float]:
    best = dict.fromkeys(callers, float("inf"))
    for _ in range(repeats):  # interleaved, so load changes hit all alike
        for name, call in callers.items():
            t = time.perf_counter()
            call()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def report(label: str, best: dict[str, float], check: str, n: int) -> float:
    peer = min(best["tdhook"], best["captum"])
    ratio = peer / best["policylens"]
    times = "  ".join(f"{k} {v:6.3f}s" for k, v in best.items())
    print(f"{label:<34} {times}  ({n / best['policylens']:7.1f} obs/s)  vs faster peer "
          f"{ratio:4.2f}x  | check: {check}")  # fmt: skip
    return ratio


def obs_for(arch: str, n: int) -> np.ndarray:
    """Random frames for the IMPALA network; real 9x9 mazes (with their mouse and cheese) for
    the maze agent."""
    if arch == "impala":
        return np.random.default_rng(0).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
    batch = MazeBatch(MazeConfig(world_size=9, cheese_region=None), n)
    for i in range(n):
        batch.load(i, batch.level(i))
    return batch.obs.copy()


def agents_for(arch: str) -> tuple:
    """(for the peers, for policylens): the untrained IMPALA network; the zoo's trained maze
    agent (zoo:maze-corner), whose maps are not all zero. The peers' maze copy runs
    channels-first (its channels-last flatten bypasses ``fc``'s module, which their hooks need);
    policylens runs the agent as loaded. Parameters are frozen for all (the peers' best setting)."""
    if arch == "impala":
        base = build_agent("impala", (64, 64, 3), 15, seed=0)
        ours = base
    else:
        ours = load_agent("zoo:maze-corner")
        base = build_agent("maze_cnn", ours.obs_shape, ours.num_actions, channels_last=False)
        base.net.load_state_dict(ours.net.state_dict())
    for agent in {id(base): base, id(ours): ours}.values():
        agent.eval()
        for p_ in agent.parameters():
            p_.requires_grad_(False)
    return base, ours


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--quick", action="store_true", help="Batch 16, one repeat (a smoke run).")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    batch, repeats = (16, 1) if args.quick else (args.batch, args.repeats)
    warnings.filterwarnings("ignore")  # Captum's "input did not require grad" on every call
    print(f"torch {torch.__version__}, {args.threads} threads, batch {batch}, best of {repeats}, "
          f"target = value; ratio = faster peer's time / policylens's")  # fmt: skip
    ratios = []
    for arch, layer in (("impala", "embedder.hook_relu3"), ("maze_cnn", "hook_relu")):
        base, own = agents_for(arch)
        obs = obs_for(arch, batch)
        for dtype in (torch.float32, torch.bfloat16):
            agent, ours = copy.deepcopy(base).to(dtype), copy.deepcopy(own).to(dtype)
            x = agent.preprocess(obs)
            tag = "bf16" if dtype == torch.bfloat16 else "fp32"
            with contextlib.ExitStack() as stack:
                flat, flat_ours = zero_residuals(agent), zero_residuals(ours)
                check = agreement({k: f() for k, f in lrp_callers(flat, flat_ours, x, stack).items()})  # fmt: skip
            with contextlib.ExitStack() as stack:
                callers = lrp_callers(agent, ours, x, stack)
                ratios.append(report(f"{arch} {tag} LRP-epsilon", timed(callers, repeats), check, batch))  # fmt: skip
            with contextlib.ExitStack() as stack:
                callers = cam_callers(agent, ours, x, layer, stack)
                check = agreement({k: f() for k, f in callers.items()})
                ratios.append(report(f"{arch} {tag} Grad-CAM {layer}", timed(callers, repeats), check, batch))  # fmt: skip
    print(f"smallest ratio vs the faster peer: {min(ratios):.2f}x")


if __name__ == "__main__":
    main()
