"""Each research line's headline finding, asserted on the zoo's shipped agents in the direction
the papers report, each against its control and with a 95% interval. A change to a lens or a
study that breaks a finding fails here (the note of the zoo issue lists the breakages tried).

Seeds are fixed, so each figure is the same on every run on the same machine; the bars sit well
inside the measured intervals (README: "What the zoo holds")."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from policylens.rollout import stats
from policylens.runs import Run


@pytest.fixture(autouse=True)
def zoo_home(tmp_path_factory, monkeypatch):
    """Zoo agents open as runs laid out in a fresh folder, not the user's cache."""
    monkeypatch.setenv("POLICYLENS_HOME", str(tmp_path_factory.getbasetemp() / "policylens-home"))
    torch.set_num_threads(1)


def test_the_corner_agent_goes_to_the_corner_first_and_the_control_does_not():
    """Langosco et al. (2022): trained with the cheese in the corner, the agent goes to the corner
    when the cheese is elsewhere; trained with the cheese anywhere, it does not."""
    from policylens.studies.maze.misgeneralization import behaviour_study
    from policylens.worlds.maze import maze_config

    def corner_first(name: str) -> dict:
        run = Run(f"zoo:{name}")
        study = behaviour_study(run.load_agent(), maze_config(run), episodes=300)
        return study.test.summary["off_path"]["corner_first"]

    corner, control = corner_first("maze-corner"), corner_first("maze-anywhere")
    assert corner["n"] >= 100 and control["n"] >= 100
    assert corner["ci"][0] >= 0.80, corner
    assert control["ci"][1] <= 0.20, control


def test_the_cheese_vector_removes_cheese_seeking_beyond_random_vectors():
    """Mini, Turner et al. (2023): subtracting the cheese vector at a middle residual layer makes
    the agent find the cheese less often, far more than random vectors of the same norm."""
    from policylens.studies.maze.misgeneralization import steering_hook
    from policylens.studies.maze.steering import maze_steering_experiment
    from policylens.worlds.maze import maze_config

    run = Run("zoo:maze-region3")
    agent, config = run.load_agent(), maze_config(run)
    found = maze_steering_experiment(agent, config, steering_hook(agent, config), n_mazes=100)
    cheese, random = found["cheese_vector x -1"]["success"], found["random x -1"]["success"]
    effect = stats.difference(cheese, random)
    assert effect["ci"][1] < 0, effect  # an effect, against the random-vector control
    assert found["baseline"]["success"]["rate"] - cheese["rate"] >= 0.15, found["baseline"]
    # the control itself: random vectors of the same norm leave the agent much as it was
    assert abs(random["rate"] - found["baseline"]["success"]["rate"]) <= 0.10, found


def test_the_kl_sae_spliced_in_keeps_the_mate_rate():
    """DuPlessie's SAEs judged by behaviour: the behaviour-keeping (kl) SAE spliced into the rook
    DQN keeps at least 95% of its mate rate, where ablating the hook wrecks it."""
    from policylens.studies.rook_sae.runs import SAEEvalOptions, eval_run_sae

    run = Run("zoo:rook-dqn")
    (sae_dir,) = (run.path / "analysis" / "sae").iterdir()
    found = eval_run_sae(run, sae_dir, SAEEvalOptions(episodes=400, ablation_top=0, write=False))
    conditions = found.behaviour.conditions
    spliced, zero = conditions["spliced"], conditions["zero_ablation"]
    assert spliced.success_kept is not None and spliced.success_kept >= 0.95, spliced
    assert zero.success_rate_ci[1] < spliced.success_rate_ci[0], (zero, spliced)
    assert spliced.held_out is not None and spliced.held_out.kl > 0  # the SAE's output was used


def test_the_fuel_phase_makes_the_lander_spend_less_fuel():
    """Isolating updates: 30,000 steps on a reward that charges fuel make the phase-1 lander
    spend less fuel per episode (same evaluation episodes for both)."""
    from policylens.studies.lunar_updates.evaluation import lunar_episodes

    def fuel(name: str) -> np.ndarray:
        agent = Run(f"zoo:{name}").load_agent()
        return -np.asarray(lunar_episodes(agent, 24, seed=1_000_000)["fuel"])

    before, after = fuel("lunar-phase1"), fuel("lunar-phase2")
    saved = stats.welch_difference(after.tolist(), before.tolist())
    assert saved["ci"][1] < 0, saved
