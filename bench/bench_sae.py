"""SAE training speed and quality: policylens ``train_sae`` vs SAELens ``SAETrainer``, one run.

Both train the same architecture (TopK and/or ReLU+L1) on the same seeded, structured synthetic
activations (sparse non-negative combinations of random unit directions plus noise), with the same
batch size, learning rate (constant), sample count and thread count. SAELens runs in its own
virtual environment through a subprocess (it pulls transformers, datasets, wandb: not a
policylens dependency); only its ``trainer.fit()`` is timed, after a warm-up, as is only
``train_sae`` on our side. Explained variance is measured on held-out samples with the same formula.

The SAELens side also loads each policylens-trained SAE exported with ``export_saelens`` through
``SAE.load_from_disk`` and compares its outputs with ours (the compatibility check).

    python bench/bench_sae.py --saelens-python /tmp/saelens-venv/bin/python
    python bench/bench_sae.py --archs topk --samples 409600 --threads 1

Set up the SAELens environment once with:
    python3 -m venv /tmp/saelens-venv && /tmp/saelens-venv/bin/pip install torch==2.13.0 sae-lens
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from policylens.agents.sae import SAEConfig, export_saelens
from policylens.lenses.sae import evaluate_sae, synthetic_activations, train_sae

SAELENS_SIDE = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import torch
from safetensors.torch import load_file
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
from sae_lens import SAE, LoggingConfig, SAETrainer
from sae_lens import StandardTrainingSAE, TopKTrainingSAE
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.standard_sae import StandardTrainingSAEConfig
from sae_lens.saes.topk_sae import TopKTrainingSAEConfig

data = load_file(args["data"])
train, test = data["train"], data["test"]
out = {}

def batches(seed):
    gen = torch.Generator().manual_seed(seed)
    n, bs = train.shape[0], args["batch_size"]
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - bs + 1, bs):
            yield train[perm[i : i + bs]]

def make(arch):
    torch.manual_seed(args["seed"])
    if arch == "topk":
        cfg = TopKTrainingSAEConfig(d_in=args["d_in"], d_sae=args["d_sae"], k=args["k"])
        return TopKTrainingSAE(cfg)
    cfg = StandardTrainingSAEConfig(d_in=args["d_in"], d_sae=args["d_sae"], l1_coefficient=args["l1_coeff"])
    return StandardTrainingSAE(cfg)

def fit(arch, samples):
    sae = make(arch)
    with torch.no_grad():
        sae.b_dec.copy_(train[: args["batch_size"]].mean(0))  # same start as policylens
    tcfg = SAETrainerConfig(
        total_training_samples=samples, train_batch_size_samples=args["batch_size"],
        lr=args["lr"], lr_end=args["lr"], device="cpu",
        logger=LoggingConfig(log_to_wandb=False),
    )
    trainer = SAETrainer(tcfg, sae, batches(args["seed"] + 1))
    import tqdm.auto, functools
    t0 = time.perf_counter()
    trainer.fit()
    return sae, time.perf_counter() - t0

for arch in args["archs"]:
    fit(arch, args["batch_size"] * 3)  # warm-up
    sae, seconds = fit(arch, args["samples"])
    with torch.no_grad():
        recon = torch.cat([sae(x) for x in test.split(8192)])
        z = torch.cat([sae.encode(x) for x in test.split(8192)])
    ev = 1 - float((recon - test).pow(2).sum() / (test - test.mean(0)).pow(2).sum())
    out[arch] = {"seconds": seconds, "samples_per_s": args["samples"] / seconds,
                 "explained_variance": ev, "l0": float((z != 0).float().sum(-1).mean())}

checks = {}
for name, path in args.get("exports", {}).items():
    sae = SAE.load_from_disk(path)
    ref = load_file(path + "/reference.safetensors")
    with torch.no_grad():
        recon = sae(ref["x"])
        z = sae.encode(ref["x"])
    checks[name] = {"class": type(sae).__name__,
                    "max_abs_diff_recon": float((recon - ref["recon"]).abs().max()),
                    "max_abs_diff_latents": float((z - ref["z"]).abs().max())}
out["compat"] = checks
print("RESULT " + json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--saelens-python", default="/tmp/saelens-venv/bin/python")
    ap.add_argument("--archs", default="topk,relu")
    ap.add_argument("--d-in", type=int, default=256)
    ap.add_argument("--d-sae", type=int, default=2048)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--l1-coeff", type=float, default=0.3)
    ap.add_argument("--n-features", type=int, default=1024)
    ap.add_argument("--active", type=float, default=20.0)
    ap.add_argument("--samples", type=int, default=4096 * 100)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-saelens", action="store_true")
    args = ap.parse_args()
    archs = [a for a in args.archs.split(",") if a]
    torch.set_num_threads(args.threads)

    n_test = 16384
    data = synthetic_activations(
        200_000 + n_test, args.d_in, n_features=args.n_features, active=args.active, seed=args.seed
    )
    train, test = data[:-n_test].contiguous(), data[-n_test:].contiguous()
    tmp = Path(tempfile.mkdtemp(prefix="bench_sae_"))
    save_file({"train": train, "test": test}, str(tmp / "data.safetensors"))

    ours: dict[str, dict[str, float]] = {}
    exports: dict[str, str] = {}
    for arch in archs:
        cfg = SAEConfig(
            d_in=args.d_in,
            d_sae=args.d_sae,
            arch=arch,
            k=args.k,
            l1_coeff=args.l1_coeff,
            lr=args.lr,
            lr_decay_frac=0.0,
            batch_size=args.batch_size,
            samples=args.samples,
            seed=args.seed,
            log_every=10**9,
        )
        train_sae(train, SAEConfig(**{**cfg.__dict__, "samples": args.batch_size * 3}))  # warm-up
        t0 = time.perf_counter()
        sae, _ = train_sae(train, cfg)
        seconds = time.perf_counter() - t0
        ev = evaluate_sae(sae, test)
        ours[arch] = {"seconds": seconds, "samples_per_s": args.samples / seconds, **ev}
        path = export_saelens(sae, tmp / f"export_{arch}")
        with torch.no_grad():
            x = test[:512]
            recon, z = sae(x)
        save_file({"x": x, "recon": recon, "z": z}, str(path / "reference.safetensors"))
        exports[arch] = str(path)

    theirs: dict = {}
    if not args.skip_saelens:
        payload = {
            "data": str(tmp / "data.safetensors"),
            "archs": archs,
            "d_in": args.d_in,
            "d_sae": args.d_sae,
            "k": args.k,
            "l1_coeff": args.l1_coeff,
            "lr": args.lr,
            "batch_size": args.batch_size,
            "samples": args.samples,
            "seed": args.seed,
            "threads": args.threads,
            "exports": exports,
        }
        env = {**os.environ, "WANDB_MODE": "disabled", "TQDM_DISABLE": "1"}
        proc = subprocess.run(
            [args.saelens_python, "-c", SAELENS_SIDE, json.dumps(payload)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"SAELens side failed (exit {proc.returncode}); see its output above.")
        theirs = json.loads(lines[-1][len("RESULT ") :])

    print(
        f"SAE {args.d_in}->{args.d_sae}, batch {args.batch_size}, {args.samples} samples, "
        f"lr {args.lr}, threads {args.threads}, data: {args.n_features} features, "
        f"~{args.active:g} active, torch {torch.__version__}"
    )
    print(f"{'arch':8s} {'side':10s} {'samples/s':>10s} {'seconds':>8s} {'EV':>7s} {'L0':>7s}")
    for arch in archs:
        o = ours[arch]
        print(
            f"{arch:8s} {'policylens':10s} {o['samples_per_s']:10.0f} {o['seconds']:8.2f} "
            f"{o['explained_variance']:7.4f} {o['l0']:7.2f}"
        )
        if arch in theirs:
            t = theirs[arch]
            print(
                f"{arch:8s} {'SAELens':10s} {t['samples_per_s']:10.0f} {t['seconds']:8.2f} "
                f"{t['explained_variance']:7.4f} {t['l0']:7.2f}"
            )
            print(
                f"{arch:8s} speed ratio policylens/SAELens = {o['samples_per_s'] / t['samples_per_s']:.2f}x, "
                f"EV difference = {o['explained_variance'] - t['explained_variance']:+.4f}"
            )
    for name, check in theirs.get("compat", {}).items():
        print(
            f"SAELens SAE.load_from_disk(policylens export, {name}) -> {check['class']}: "
            f"max |recon diff| {check['max_abs_diff_recon']:.2e}, "
            f"max |latent diff| {check['max_abs_diff_latents']:.2e}"
        )


if __name__ == "__main__":
    main()
