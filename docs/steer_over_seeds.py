"""The cheese vector and channel clamping on every agent of a finished maze sweep, over seeds.

    python docs/steer_over_seeds.py runs/gm-table > steering.json

Runs :func:`policylens.studies.maze.sweep.maze_steering_metrics` on each trial's run folder (two
at a time, one torch thread each) and prints JSON: the metrics per trial, and per cheese region
their mean with a Student-t 95% interval across seeds. BENCHMARKS.md ("Goal misgeneralization
over seeds") reports its output.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any


def steering(path: str) -> dict[str, float]:
    import torch

    from policylens.studies.maze.sweep import maze_steering_metrics

    torch.set_num_threads(1)
    return maze_steering_metrics(path)


def main(sweep: Path) -> dict[str, Any]:
    from policylens.rollout.stats import t_mean

    paths = sorted(str(p) for p in (sweep / "trials").iterdir())
    with ProcessPoolExecutor(2) as pool:
        per_trial = dict(zip(paths, pool.map(steering, paths), strict=True))
    by_region: dict[str, list[dict[str, float]]] = {}
    for path, metrics in per_trial.items():
        region = Path(path).name.split(",")[0].split("=")[1]  # cheese_region=<r>,seed=<s>
        by_region.setdefault(region, []).append(metrics)
    summary = {
        region: {key: t_mean([m[key] for m in rows]) for key in rows[0]}
        for region, rows in by_region.items()
    }
    return {"per_trial": per_trial, "by_region": summary}


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1])), indent=1))
