"""The failure table: how often an agent completes hazard levels, and what ends those it fails.

Hilton et al. (2020) dissect a CoinRun agent's failures by cause, and show that hiding buzzsaws
from its observation turns many more levels into buzzsaw deaths. Here every episode's cause is
the world's ground truth (``info["death_cause"]``: saw, enemy, lava, fell, timeout, or multiple
when several hazards struck in the same step), each rate with a 95% Wilson interval, on the levels
the agent trained on and on levels it never saw. A hidden hazard is set against the same levels,
played with the same random numbers, with it shown (Newcombe interval of the difference).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from policylens.agents.agent import HookedAgent
from policylens.errors import check_known
from policylens.rollout import stats
from policylens.rollout.engine import EpisodeOptions, Labels, policy_for, run_episodes
from policylens.runs import Run
from policylens.worlds import of_run
from policylens.worlds.hazards import HazardsWorld, level_splits

FAILURE_CAUSES = ("saw", "enemy", "lava", "fell", "timeout", "multiple")
INVISIBLE = {"saws": "invisible_saws", "enemies": "invisible_enemies"}
"""Hazards that can be hidden from the observation, and the world option each sets."""


@dataclass(frozen=True)
class FailureTable:
    """Completion and the failure table of one agent over a number of levels.

    Each rate is a proportion with its 95% Wilson interval (``{"rate", "n", "ci"}``).
    """

    env_kwargs: dict[str, Any]
    episodes: int
    completion: dict[str, Any]
    failures: dict[str, dict[str, dict[str, Any]]]
    """Per cause (:data:`FAILURE_CAUSES`): its share of all levels (``of_levels``) and of the
    failed ones (``of_failures``)."""
    enemy_sides: dict[str, int]
    """Enemy deaths by the side the agent met the enemy on (front, back, above)."""
    length: dict[str, Any]
    """Episode length: mean with its 95% interval."""

    def of_levels(self, cause: str) -> dict[str, Any]:
        """The share of levels ending in ``cause`` ("completion" for the coin)."""
        return self.completion if cause == "completion" else self.failures[cause]["of_levels"]

    def deaths(self, cause: str) -> int:
        """How many levels ended in ``cause``."""
        p = self.failures[cause]["of_levels"]
        return round(p["rate"] * p["n"]) if p["n"] else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "env_kwargs": dict(self.env_kwargs),
            "episodes": self.episodes,
            "completion": self.completion,
            "failures": self.failures,
            "enemy_sides": self.enemy_sides,
            "length": self.length,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FailureTable:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def failure_table(
    agent: HookedAgent,
    episodes: int,
    env_kwargs: dict[str, Any],
    *,
    seed: int = 10_000,
    greedy: bool = False,
) -> FailureTable:
    """Completion and the failure table of ``agent`` over ``episodes`` levels of the hazard world
    (enemy deaths split by the side the agent met the enemy on)."""
    options = EpisodeOptions(
        seed=seed, policy=policy_for(agent, greedy),
        labels=Labels(end=("death_cause", "enemy_side")),
    )  # fmt: skip
    world = {**env_kwargs, "masks": False}
    eps = run_episodes(agent, episodes, HazardsWorld.env_id, world, options)
    causes = np.array([e.end["death_cause"] for e in eps])
    success = np.array([e.success for e in eps])
    failed = ~success
    table = {
        cause: {
            "of_levels": stats.proportion(causes == cause),
            "of_failures": stats.proportion(causes[failed] == cause),
        }
        for cause in FAILURE_CAUSES
    }
    sides = [e.end["enemy_side"] for e in eps if e.end["death_cause"] == "enemy"]
    return FailureTable(
        env_kwargs=dict(env_kwargs),
        episodes=len(eps),
        completion=stats.proportion(success),
        failures=table,
        enemy_sides={side: sides.count(side) for side in ("front", "back", "above")},
        length=stats.mean([e.length for e in eps]),
    )


def hidden_vs_shown(hidden: FailureTable, shown: FailureTable) -> dict[str, dict[str, Any]]:
    """Differences (hidden - shown) of completion and of each cause's share of levels."""
    return {
        cause: stats.difference(hidden.of_levels(cause), shown.of_levels(cause))
        for cause in ("completion", *FAILURE_CAUSES)
    }


def hazard_world(run: Run) -> HazardsWorld:
    """The run's world, refused in one sentence unless it is the hazard world."""
    world = of_run(run)
    if not isinstance(world, HazardsWorld):
        raise ValueError(
            f"{run.path} was trained in {world.run_env_id}, not the hazard world; this study "
            "needs a hazard-world run (`policylens train hazards`)."
        )
    return world


@dataclass(frozen=True)
class FailureOptions:
    """What :func:`run_failures` measures."""

    levels: int = 1000
    """Levels (episodes) per split and observation."""
    invisible: tuple[str, ...] = ()
    """Hazards also hidden from the observation, one table each (:data:`INVISIBLE`)."""
    seed: int = 10_000
    """Seed of the evaluation levels and of the sampled actions."""
    greedy: bool = False
    """Argmax actions instead of sampling."""
    step: int | None = None
    """Checkpoint step (None: the latest)."""

    def __post_init__(self) -> None:
        check_known(self.invisible, INVISIBLE, "invisible hazard")
        if self.levels < 1:
            raise ValueError(f"levels must be >= 1, got {self.levels}.")


@dataclass(frozen=True)
class SplitTables:
    """One split's tables: everything shown, each hidden hazard, and hidden minus shown."""

    shown: FailureTable
    hidden: dict[str, FailureTable] = field(default_factory=dict)
    hidden_vs_shown: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "shown": self.shown.to_json(),
            "hidden": {h: t.to_json() for h, t in self.hidden.items()},
            "hidden_vs_shown": self.hidden_vs_shown,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SplitTables:
        return cls(
            shown=FailureTable.from_json(data["shown"]),
            hidden={h: FailureTable.from_json(t) for h, t in data["hidden"].items()},
            hidden_vs_shown=data["hidden_vs_shown"],
        )


@dataclass(frozen=True)
class FailureStudy:
    """The failure tables of a run's agent on unseen and on training levels."""

    run: str
    step: int
    episodes: int
    policy: str
    """"greedy" or "sampled"."""
    invisible: tuple[str, ...]
    splits: dict[str, SplitTables]
    """"unseen" (when the run trained on a limited set of levels) and "training"."""

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "step": self.step,
            "episodes": self.episodes,
            "policy": self.policy,
            "invisible": list(self.invisible),
            "splits": {name: s.to_json() for name, s in self.splits.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FailureStudy:
        """A study as :meth:`to_json` wrote it (``policylens failures --json``)."""
        try:
            return cls(
                run=data["run"],
                step=int(data["step"]),
                episodes=int(data["episodes"]),
                policy=data["policy"],
                invisible=tuple(data["invisible"]),
                splits={k: SplitTables.from_json(s) for k, s in data["splits"].items()},
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"these failure tables are not a failure study's ({e!r}).") from None


def run_failures(run: Run, options: FailureOptions) -> FailureStudy:
    """The failure tables of a hazard run's agent on unseen and on training levels.

    Each hazard in ``options.invisible`` adds, per split, the table with it hidden from the
    observation and the differences from the table with everything shown.
    """
    world = hazard_world(run)
    step, _ = run.checkpoint(options.step)
    agent = run.load_agent(step)
    splits: dict[str, SplitTables] = {}
    for name, env_kwargs in level_splits(world.env_kwargs).items():

        def table(kwargs: dict[str, Any]) -> FailureTable:
            return failure_table(
                agent, options.levels, kwargs, seed=options.seed, greedy=options.greedy
            )

        shown = table(env_kwargs)
        hidden = {h: table({**env_kwargs, INVISIBLE[h]: True}) for h in options.invisible}
        splits[name] = SplitTables(
            shown, hidden, {h: hidden_vs_shown(t, shown) for h, t in hidden.items()}
        )
    return FailureStudy(
        run=str(run.path),
        step=step,
        episodes=options.levels,
        policy="greedy" if options.greedy else "sampled",
        invisible=tuple(options.invisible),
        splits=splits,
    )


def unseen_or_training(env_kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The unseen split of a run's levels, or its training one when it trained on all levels."""
    splits = level_splits(env_kwargs)
    name = "unseen" if "unseen" in splits else "training"
    return name, splits[name]


def headline_results(run: Run, levels: int = 2000, seed: int = 10_000) -> dict[str, dict[str, Any]]:
    """A hazard agent's headline figures (a zoo entry's ``results.json``): completion on its
    training and unseen levels and each hazard's share of unseen levels, sampled actions, each a
    proportion with its Wilson 95% interval."""
    study = run_failures(run, FailureOptions(levels=levels, seed=seed))
    out = {f"{name}_completion": split.shown.completion for name, split in study.splits.items()}
    unseen = study.splits.get("unseen", study.splits["training"]).shown
    out |= {f"unseen_{cause}_deaths": unseen.of_levels(cause) for cause in ("saw", "enemy", "lava")}
    return out
