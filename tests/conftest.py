"""Test-wide settings: one torch and one BLAS thread per test process (CI runs two pytest
workers on 2 cores; more threads oversubscribe them)."""

import pytest
import torch
from threadpoolctl import threadpool_limits

torch.set_num_threads(1)
threadpool_limits(1)


@pytest.fixture(scope="session")
def tiny_hazard_run(tmp_path_factory):
    """A hazard-world run of two PPO updates on 20 levels (the hazard, RL-vision and explorer
    tests share it)."""
    from policylens.train.ppo import train_ppo
    from policylens.worlds.hazards import HazardsRecipe

    out = tmp_path_factory.mktemp("runs") / "hazards"
    config = HazardsRecipe(num_levels=20, total_steps=8 * 32 * 2, num_envs=8, num_steps=32).config()
    config.env_kwargs["max_steps"] = 40  # an untrained agent's levels end soon
    return train_ppo(config, out, progress=False)
