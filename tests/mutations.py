"""The science tests' mutation check: break one lens or study computation at a time, run
tests/test_science.py, restore the file, and print which tests caught it.

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
for what, rel, old, new in MUTATIONS:
    path = ROOT / rel
    text = path.read_text()
    assert text.count(old) == 1, (what, "pattern not found once")
    path.write_text(text.replace(old, new))
    try:
        out = subprocess.run(
            [str(ROOT / ".venv/bin/python"), "-m", "pytest", "-n", "0", "-q", "-p",
             "no:cacheprovider", "tests/test_science.py"],
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
