"""Linear CKA over all layer pairs of 10 checkpoints: policylens vs tdhook 0.3, one run.

Ten maze_cnn agents (different seeds stand in for ten checkpoints; the cost does not depend on
the weights) run on the same ``--n`` maze observations; every hook is flattened to
``(n, features)`` (the seven 16x9x9 conv layers: 1,296 features; fc and out: 256; logits: 4;
value: 1). The job: for each checkpoint, linear CKA between every pair of its 11 layers
(10 x 66 pairs, the diagonal included). policylens: ``cka_matrix`` per checkpoint (each layer's
centred Gram matrix once, float64, all pairs in one product); tdhook: ``CkaEstimator`` once per
pair (the feature-space formula in the activations' dtype; pairs of different widths cannot
share a batch). Results are checked equal first (float32: tdhook on the same float32 tensors,
to 1e-5, tdhook computing in float32; bf16: tdhook on the first checkpoint's bf16 values
upcast to float64, to 1e-6). tdhook is timed once (the slow side: minutes at n = 1000),
policylens best of ``--repeats``. The bf16 case times tdhook on the bf16 tensors as given (it
then computes in bf16; its difference from the exact value is printed).

    .venv/bin/python bench/bench_similarity.py [--threads 1] [--repeats 3] [--n 1000] [--quick]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from tdhook.latent import CkaEstimator
from tensordict import TensorDict

from policylens.agents import build_agent
from policylens.envs.maze import MazeBatch, MazeConfig
from policylens.lenses.similarity import cka_matrix, flat_activations


def maze_obs(n: int, world: int = 9, seed: int = 0) -> np.ndarray:
    batch = MazeBatch(MazeConfig(world_size=world, cheese_region=None), n)
    for i in range(n):
        batch.load(i, batch.level(seed + i))
    return batch.obs.copy()


def checkpoints(n_ckpt: int, obs: np.ndarray) -> tuple[list[str], list[list[torch.Tensor]]]:
    hooks = build_agent("maze_cnn", (3, 9, 9), 4, seed=0).hook_names()
    acts = []
    for seed in range(n_ckpt):
        agent = build_agent("maze_cnn", (3, 9, 9), 4, seed=seed)
        flat = flat_activations(agent, obs, hooks)
        acts.append([torch.from_numpy(flat[h]) for h in hooks])
    return hooks, acts


ESTIMATOR = CkaEstimator()


def tdhook_matrices(acts: list[list[torch.Tensor]]) -> list[np.ndarray]:
    out = []
    for layers in acts:
        m = np.eye(len(layers))
        for i, a in enumerate(layers):
            for j in range(i, len(layers)):
                td = TensorDict({"data_a": a, "data_b": layers[j]}, batch_size=[])
                m[i, j] = m[j, i] = float(ESTIMATOR(td)["cka"])
        out.append(m)
    return out


def ours_matrices(acts: list[list[torch.Tensor]]) -> list[np.ndarray]:
    return [cka_matrix(layers) for layers in acts]


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def case(name: str, acts: list[list[torch.Tensor]], repeats: int, tol: float, oracle) -> dict:
    """Time both (tdhook once: it is the slow side; policylens best of ``repeats``), after
    checking policylens against ``oracle`` (tdhook on the checked inputs, the first
    ``len(oracle)`` checkpoints)."""
    ours = ours_matrices(acts)
    checked = tdhook_matrices(oracle) if oracle is not acts else None
    t = time.perf_counter()
    theirs = tdhook_matrices(acts)
    t2 = time.perf_counter() - t
    checked = theirs if checked is None else checked
    diff = max(float(np.nanmax(np.abs(a - b))) for a, b in zip(ours, checked, strict=False))
    assert diff <= tol, f"{name}: results differ by {diff:.2e} > {tol:.0e}"
    as_given = max(float(np.nanmax(np.abs(a - b))) for a, b in zip(ours, theirs, strict=True))
    t1 = best_time(lambda: ours_matrices(acts), repeats)
    pairs = sum(len(layers) * (len(layers) + 1) // 2 for layers in acts)
    print(
        f"{name:<22} policylens {t1:7.3f}s  tdhook {t2:7.3f}s  ratio {t2 / t1:6.2f}x  "
        f"({pairs} pairs)  max|diff| vs oracle {diff:.1e} ({len(checked)} checkpoints), "
        f"vs tdhook as timed {as_given:.1e}",
        flush=True,
    )
    return {"case": name, "ours_s": t1, "tdhook_s": t2, "ratio": t2 / t1, "max_diff": diff}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--n", type=int, default=1000, help="Observations (rows).")
    p.add_argument("--checkpoints", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="Small sizes (a smoke run).")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    n = 200 if args.quick else args.n
    n_ckpt = 3 if args.quick else args.checkpoints
    repeats = 1 if args.quick else args.repeats
    print(f"torch {torch.__version__}, {args.threads} thread(s), {n} observations, {n_ckpt} "
          f"checkpoints x 11 layers of maze_cnn 3x9x9, best of {repeats}")  # fmt: skip
    hooks, acts = checkpoints(n_ckpt, maze_obs(n))
    case("float32 activations", acts, repeats, 1e-5, acts)
    bf16 = [[a.to(torch.bfloat16) for a in layers] for layers in acts]
    exact = [[a.double() for a in layers] for layers in bf16[:1]]  # tdhook in float64: slow
    case("bf16 activations", bf16, repeats, 1e-6, exact)


if __name__ == "__main__":
    main()
