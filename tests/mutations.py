"""The mutation check: break one lens or study computation at a time, run the tests meant to
catch it (tests/test_science.py for the findings, the known-answer tests for the rest), restore
the file, and print which tests caught it.

Run from the repository root: ``.venv/bin/python tests/mutations.py`` (about 20 s a mutation).
"""

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTATIONS = [
    (
        "steering vector added with the wrong sign",
        "src/policylens/lenses/interventions.py",
        "        return act + coef * v\n",
        "        return act - coef * v\n",
    ),
    (
        "random control vectors 10x the cheese vector's norm",
        "src/policylens/lenses/interventions.py",
        "        return r * (norm_v / r.flatten(1).norm(dim=1).view(shape).clamp_min(1e-12))\n",
        "        return r * (10 * norm_v / r.flatten(1).norm(dim=1).view(shape).clamp_min(1e-12))\n",
    ),
    (
        "cheese vector computed without erasing the cheese",
        "src/policylens/studies/maze/steering.py",
        "        obs[:, CHEESE] = 0\n",
        "        obs[:, CHEESE] = obs[:, CHEESE]\n",
    ),
    (
        "SAE splice returns the original activation",
        "src/policylens/agents/sae.py",
        "        return site.from_vectors(sae.decode(z), act.shape[0]).to(act.dtype)\n",
        "        return act\n",
    ),
    (
        "SAE splice decodes only half the latents",
        "src/policylens/agents/sae.py",
        "        if keep is not None:\n            z = z * keep.to(z.device)\n",
        "        z = z * (torch.arange(z.shape[-1]) % 2 == 0).to(z.dtype)\n",
    ),
    (
        "sampling inverse CDF off by one action",
        "src/policylens/rollout/engine.py",
        "            idx = torch.searchsorted(cdf, (uniforms[0] * cdf[:, -1])[:, None].contiguous())[:, 0]\n",
        "            idx = (torch.searchsorted(cdf, (uniforms[0] * cdf[:, -1])[:, None].contiguous())[:, 0] + 1) % cdf.shape[1]\n",
    ),
    (
        "Wilson interval centred on the wrong count",
        "src/policylens/rollout/stats.py",
        "    lo, hi = wilson(int(f.sum()), int(f.size))\n",
        "    lo, hi = wilson(int(f.size - f.sum()), int(f.size))\n",
    ),
]
SCIENCE = ["tests/test_science.py"]
KNOWN = [  # (what, file, original, broken, the tests meant to catch it)
    (
        "failure table: a cause's share of failures taken over all levels",
        "src/policylens/studies/hazards/failures.py",
        '            "of_failures": stats.proportion(causes[failed] == cause),\n',
        '            "of_failures": stats.proportion(causes == cause),\n',
        ["tests/test_known_answers.py", "-k", "failure_table"],
    ),
    (
        "failure table: timeouts counted as completions",
        "src/policylens/studies/hazards/failures.py",
        "        completion=stats.proportion(success),\n",
        '        completion=stats.proportion(success | (causes == "timeout")),\n',
        ["tests/test_hazards.py", "-k", "counts_every_level"],
    ),
    (
        "GAE carries value across an episode's end",
        "src/policylens/train/ppo.py",
        "        delta = rewards[t] + gamma * following * nonterminal - values[t]\n",
        "        delta = rewards[t] + gamma * following - values[t]\n",
        ["tests/test_ppo.py", "-k", "gae"],
    ),
    (
        "dissection: a timeout's last step bootstraps nothing",
        "src/policylens/studies/rl_vision/dissection.py",
        "                bootstrap = float(agent(final_obs[i][None])[1].float().reshape(()))\n",
        "                bootstrap = 0.0\n",
        ["tests/test_known_answers.py", "-k", "dissection"],
    ),
    (
        "interpretability score: the best feature instead of the mean",
        "src/policylens/studies/rl_vision/features.py",
        '    return float(np.mean([lab["correlation"] for lab in labels])) if labels else float("nan")\n',
        '    return float(np.max([lab["correlation"] for lab in labels])) if labels else float("nan")\n',
        ["tests/test_known_answers.py", "-k", "saw_plane"],
    ),
    (
        "Student-t interval at 90% instead of 95%",
        "src/policylens/rollout/stats.py",
        "    half = float(t.ppf(0.975, x.size - 1)) * float(x.std(ddof=1)) / math.sqrt(x.size)\n",
        "    half = float(t.ppf(0.95, x.size - 1)) * float(x.std(ddof=1)) / math.sqrt(x.size)\n",
        ["tests/test_sweeps.py", "-k", "known_values"],
    ),
    (
        "explorer SAE page counts a silent latent as firing",
        "src/policylens/explorer/api.py",
        "    frequency = (activity > 0).float().mean(0).numpy()\n",
        "    frequency = (activity >= 0).float().mean(0).numpy()\n",
        ["tests/test_explorer.py", "-k", "sae"],
    ),
    (
        "LRP epsilon rule without its stabiliser's effect",
        "src/policylens/lenses/relevance.py",
        "    return a.div_(a + eps)\n",
        "    return a.div_(a)\n",
        ["tests/test_lrp.py"],
    ),
    (
        "Grad-CAM weights channels by the summed, not mean, gradient",
        "src/policylens/lenses/cam.py",
        "    cam = (grad.mean((2, 3), keepdim=True) * act).sum(1, keepdim=True)\n",
        "    cam = (grad.sum((2, 3), keepdim=True) * act).sum(1, keepdim=True)\n",
        ["tests/test_cam.py"],
    ),
]
for what, rel, old, new, tests in [(*m, SCIENCE) for m in MUTATIONS] + KNOWN:
    path = ROOT / rel
    text = path.read_text()
    assert text.count(old) == 1, (what, "pattern not found once")
    path.write_text(text.replace(old, new))
    try:
        out = subprocess.run(
            [str(ROOT / ".venv/bin/python"), "-m", "pytest", "-n", "0", "-q", "-p",
             "no:cacheprovider", *tests],
            cwd=ROOT, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
    finally:
        path.write_text(text)
    failed = [
        line.split("::")[1].split(" ")[0]
        for line in out.stdout.splitlines()
        if line.startswith("FAILED")
    ]
    print(f"{what}: {len(failed)} failed: {', '.join(failed) or 'NONE (not caught)'}", flush=True)
