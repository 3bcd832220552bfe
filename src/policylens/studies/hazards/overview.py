"""A hazard run at a glance, for its report: a few levels it played from start to end (two
completed and two failed, as many as there are) and its failure tables with hazards hidden."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policylens.envs.hazards import HazardsConfig
from policylens.runs import Run
from policylens.studies.hazards.episodes import HazardsEpisode, play_levels
from policylens.studies.hazards.failures import (
    FailureOptions,
    FailureStudy,
    hazard_world,
    run_failures,
    unseen_or_training,
)


@dataclass(frozen=True)
class OverviewOptions:
    """What :func:`run_overview` plays and measures."""

    failures: FailureOptions = FailureOptions(levels=500, invisible=("saws", "enemies"))
    """The failure tables' levels, hidden hazards and seed (also the seed of the levels shown)."""
    tables: FailureStudy | None = None
    """Failure tables measured earlier on this run (``policylens failures --json``), used
    instead of measuring them again."""
    played: int = 32
    """Levels played to pick the shown ones from."""
    gallery_levels: int = 8
    """Training levels the report draws whole."""

    def __post_init__(self) -> None:
        if self.played < 1 or self.gallery_levels < 1:
            raise ValueError(
                f"played and gallery_levels must be >= 1, got {self.played}, {self.gallery_levels}."
            )


@dataclass(frozen=True)
class HazardsOverview:
    """A hazard run's played levels and failure tables."""

    run: str
    name: str
    arch: str
    env_id: str
    env_kwargs: dict[str, Any]
    train_seed: int
    config: HazardsConfig
    """The world's options the run trained with (masks off)."""
    gallery_levels: int
    split: str
    """Which levels the shown episodes come from: "unseen", or "training" for a run trained on
    all levels."""
    episodes: tuple[HazardsEpisode, ...]
    """Up to two completed levels, then up to two failed ones."""
    failures: FailureStudy

    @property
    def first_level(self) -> int:
        """The first training level's seed."""
        return int(self.env_kwargs.get("start_level", 0))


def run_overview(
    run: Run, options: OverviewOptions, log: Callable[[str], None] = print
) -> HazardsOverview:
    """Play ``options.played`` levels (unseen where the run has them) and keep two completed and
    two failed ones; measure the failure tables, or take ``options.tables`` (of this run)."""
    world = hazard_world(run)
    tables = options.tables
    if tables is not None and Path(tables.run).resolve() != run.path.resolve():
        raise ValueError(f"the failure tables given are of {tables.run}, not {run.path}.")
    log("playing unseen levels")
    split, env_kwargs = unseen_or_training(world.env_kwargs)
    seed = options.failures.seed
    played = play_levels(run.load_agent(), env_kwargs, options.played, seed=seed)
    episodes = [e for e in played if e.success][:2] + [e for e in played if not e.success][:2]
    if tables is None:
        log(f"failure tables over {options.failures.levels} levels per split and observation")
        tables = run_failures(run, options.failures)
    trainer = run.config["trainer"]
    return HazardsOverview(
        run=str(run.path),
        name=run.name,
        arch=str(run.config["agent"].get("arch")),
        env_id=world.env_id,
        env_kwargs=dict(world.env_kwargs),
        train_seed=int(trainer["seed"]),
        config=HazardsConfig.from_kwargs({**world.env_kwargs, "masks": False}),
        gallery_levels=options.gallery_levels,
        split=split,
        episodes=tuple(episodes),
        failures=tables,
    )
