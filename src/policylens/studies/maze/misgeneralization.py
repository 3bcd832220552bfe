"""The goal-misgeneralization study of a maze run, end to end: behaviour in and out of the
training distribution, decision squares, the cheese vector and channel clamping, and the report's
pictures and attributions; the analysis is saved under ``run/analysis/`` and reused while the
checkpoint and the budget are unchanged.

Entry points, each ``(run, options) -> result``: :func:`behaviour` (``policylens behaviour``),
:func:`steer` (``steer``), :func:`analyse` (the cached analysis), :func:`study` (everything the
report draws, ``report``) and :func:`table` (several runs, ``table``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from policylens import worlds
from policylens.agents.agent import HookedAgent
from policylens.artifacts import FolderLock, read_json, write_json
from policylens.envs.maze import MazeBatch, MazeConfig, MazeState
from policylens.lenses.interventions import (
    activation,
    add_vector,
    check_coefficient,
    check_hook,
)
from policylens.rollout import stats
from policylens.runs import Run
from policylens.studies.maze.attribution import MazeAttribution, attribution_study
from policylens.studies.maze.behaviour import Evaluation, evaluate, visit_counts
from policylens.studies.maze.decisions import decision_square_analysis
from policylens.studies.maze.steering import (
    check_channels,
    cheese_tracking_channels,
    maze_clamp_experiment,
    maze_steering_experiment,
    test_levels,
    without_cheese,
)
from policylens.studies.maze.vector_fields import VectorField, vector_field
from policylens.worlds.maze import MazeEpisode, maze_config, run_episodes_from_states

Log = Callable[[str], Any]
"""Where a study reports its progress, one line at a time."""


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}.")


def steering_hook(agent: HookedAgent, config: MazeConfig) -> str:
    """A middle residual-stream layer with spatial maps, where Mini et al. found the cheese vector."""
    obs = MazeBatch(config, 1).obs_space.sample()[None] * 0
    _, cache = agent.run_with_cache(obs)
    spatial = [n for n in agent.hook_names() if n in cache and cache[n].ndim == 4]
    if not spatial:
        raise ValueError("the agent has no spatial (conv) layers to steer; name a hook to steer at")
    residual = [n for n in spatial if n.endswith("hook_out")] or spatial
    return residual[len(residual) // 2]


# -- behaviour -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Behaviour:
    """Success, path efficiency and corner bias on the training and the test distribution."""

    train: Evaluation
    """The run's own world options."""
    test: Evaluation
    """The same with the cheese anywhere."""

    def to_json(self) -> dict[str, Any]:
        return {"train": self.train.to_json(), "test": self.test.to_json()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Behaviour:
        return cls(Evaluation.from_json(data["train"]), Evaluation.from_json(data["test"]))


def behaviour_study(agent: HookedAgent, config: MazeConfig, episodes: int = 500) -> Behaviour:
    """``episodes`` episodes on the training distribution and as many with the cheese anywhere,
    on the same evaluation seed."""
    env_id, train = worlds.get("maze").env_id, dict(config.__dict__)
    return Behaviour(
        evaluate(agent, episodes, env_id, train),
        evaluate(agent, episodes, env_id, {**train, "cheese_region": None}),
    )


@dataclass(frozen=True)
class BehaviourOptions:
    """How much :func:`behaviour` plays."""

    episodes: int = 500
    """Episodes per distribution."""
    n_mazes: int = 200
    """Test mazes for the decision-square analysis."""

    def __post_init__(self) -> None:
        _check_positive(episodes=self.episodes, n_mazes=self.n_mazes)


@dataclass(frozen=True)
class BehaviourResult:
    """Behaviour in and out of distribution, and the choice at decision squares."""

    behaviour: Behaviour
    decisions: dict[str, Any]
    """:func:`~policylens.studies.maze.decisions.decision_square_analysis`'s result."""

    def to_json(self) -> dict[str, Any]:
        return {**self.behaviour.to_json(), "decisions": self.decisions}


def behaviour(run: Run, options: BehaviourOptions) -> BehaviourResult:
    """The run's latest agent in and out of its training distribution, and at the decision
    squares of test mazes whose cheese lies outside its training region."""
    config, agent = maze_config(run), run.load_agent()
    return BehaviourResult(
        behaviour_study(agent, config, options.episodes),
        decision_square_analysis(
            agent, config, options.n_mazes, exclude_region=config.cheese_region
        ),
    )


def headline_results(run: Run, episodes: int = 1000) -> dict[str, dict[str, Any]]:
    """A maze agent's headline figures (a zoo entry's ``results.json``): success on its training
    distribution and with the cheese anywhere, and how often it reaches the top-right corner
    first where the cheese is off the start-to-corner path, with Wilson 95% intervals."""
    result = behaviour_study(run.load_agent(), maze_config(run), episodes)
    train, test = result.train.summary, result.test.summary
    return {
        "train_success": train["success"],
        "test_success": test["success"],
        "test_corner_first_off_path": test["off_path"]["corner_first"],
    }


# -- steering --------------------------------------------------------------------------------------


def clamp_value(
    agent: HookedAgent, config: MazeConfig, hook: str, seed: int = 20_000
) -> tuple[list[tuple[int, float]], float]:
    """The channels at ``hook`` that best track the cheese (``[(channel, correlation)]``, best
    first) over 300 test mazes, and the clamp value: twice the best one's typical maximum."""
    probe_states = test_levels(config, 300, seed + 1, off_path=False)
    channels = cheese_tracking_channels(agent, hook, probe_states, config)
    obs = np.stack([MazeBatch(config, 1).observe(s) for s in probe_states])
    typical_max = float(activation(agent, obs, hook)[:, channels[0][0]].amax(dim=(1, 2)).mean())
    return channels, 2.0 * max(typical_max, 1e-3)


def steering_study(
    agent: HookedAgent,
    config: MazeConfig,
    hook: str | None = None,
    n_mazes: int = 200,
    seed: int = 20_000,
) -> dict[str, Any]:
    """The cheese vector (subtracted, coefficient -1) against random vectors, and clamping of the
    channel that best tracks the cheese, each over ``n_mazes`` test mazes.
    """
    hook = hook or steering_hook(agent, config)
    steering = maze_steering_experiment(
        agent, config, hook, coefs=(-1.0,), n_mazes=n_mazes, seed=seed
    )
    channels, value = clamp_value(agent, config, hook, seed)
    clamp = maze_clamp_experiment(
        agent, config, hook, [channels[0][0]], value, n_mazes=n_mazes, seed=seed + 2
    )
    subtracted, random = (
        steering["cheese_vector x -1"]["success"],
        steering["random x -1"]["success"],
    )
    clamped, unclamped = clamp["clamped_reaches_target"], clamp["baseline_reaches_target"]
    return {
        "hook": hook,
        "steering": steering,
        "cheese_channels": channels,
        "clamp": clamp,
        "cheese_vector_vs_random": stats.difference(subtracted, random),
        "clamped_vs_unclamped": stats.difference(clamped, unclamped),
    }


@dataclass(frozen=True)
class SteerOptions:
    """What :func:`steer` tries: cheese-vector coefficients and, optionally, channel clamping."""

    hook: str | None = None
    """Hook to steer at (None: a middle residual layer, :func:`steering_hook`)."""
    coefs: tuple[float | str, ...] = (-1.0,)
    """Coefficients of the cheese vector (numbers, or their text as typed)."""
    n_mazes: int = 200
    """Test mazes per condition."""
    random_vectors: int = 3
    """Random control vectors of the cheese vector's norm."""
    clamp_channels: tuple[int, ...] = ()
    """Channels also clamped at a target square (none: no clamping)."""
    clamp_value: float | None = None
    """Value of the clamped channels (None: :func:`clamp_value`)."""
    seed: int = 20_000
    """Seed of the test mazes and the sampling."""

    def __post_init__(self) -> None:
        _check_positive(n_mazes=self.n_mazes, random_vectors=self.random_vectors)
        if not self.coefs:
            raise ValueError("coefs must hold at least one coefficient.")


@dataclass(frozen=True)
class SteeringResult:
    """The cheese vector against random vectors and, when asked, channel clamping."""

    experiment: dict[str, Any]
    """:func:`~policylens.studies.maze.steering.maze_steering_experiment`'s result."""
    clamp: dict[str, Any] | None = None
    """:func:`~policylens.studies.maze.steering.maze_clamp_experiment`'s result."""

    @property
    def hook(self) -> str:
        return str(self.experiment["hook"])

    @property
    def conditions(self) -> dict[str, dict[str, Any]]:
        """Each condition (baseline, each coefficient's cheese vector and random vectors)."""
        return {k: v for k, v in self.experiment.items() if isinstance(v, dict) and "success" in v}

    def to_json(self) -> dict[str, Any]:
        return {**self.experiment, **({"clamp": self.clamp} if self.clamp is not None else {})}


def steer(run: Run, options: SteerOptions) -> SteeringResult:
    """The cheese vector at ``options.hook`` with each coefficient against random vectors, and
    clamping of ``options.clamp_channels``, on the run's latest agent; every option is checked
    before any work."""
    config, agent = maze_config(run), run.load_agent()
    hook = options.hook or steering_hook(agent, config)
    check_channels(agent, config, hook, options.clamp_channels)
    for c in options.coefs:
        check_coefficient(c)
    experiment = maze_steering_experiment(
        agent, config, hook, options.coefs, options.n_mazes, options.random_vectors, options.seed
    )
    if not options.clamp_channels:
        return SteeringResult(experiment)
    value = options.clamp_value
    if value is None:
        value = clamp_value(agent, config, hook, options.seed)[1]
    clamp = maze_clamp_experiment(
        agent, config, hook, options.clamp_channels, value, options.n_mazes, options.seed
    )
    return SteeringResult(experiment, clamp)


# -- the cached analysis ---------------------------------------------------------------------------

ANALYSIS_VERSION = 2
"""Bumped when the saved analysis gains or changes fields, so older saves are recomputed."""


@dataclass(frozen=True)
class AnalysisOptions:
    """The budget of :func:`analyse`."""

    episodes: int = 500
    """Episodes per distribution."""
    n_mazes: int = 200
    """Test mazes for the decision squares and for each intervention."""
    hook: str | None = None
    """Hook to steer at (None: :func:`steering_hook`)."""
    force: bool = False
    """Recompute even when a saved analysis fits."""

    def __post_init__(self) -> None:
        _check_positive(episodes=self.episodes, n_mazes=self.n_mazes)


@dataclass(frozen=True)
class MazeAnalysis:
    """Every maze analysis of one agent: behaviour in and out of the training distribution,
    decision squares, the cheese vector against random vectors, and channel clamping."""

    episodes: int
    n_mazes: int
    behaviour: Behaviour
    decisions: dict[str, Any]
    """:func:`~policylens.studies.maze.decisions.decision_square_analysis`'s result."""
    steering: dict[str, Any]
    """:func:`steering_study`'s result."""
    step: int | None = None
    """The checkpoint analysed (None: an agent without a run)."""

    def to_json(self) -> dict[str, Any]:
        """The saved form (``analysis/maze.json``)."""
        return {
            "step": self.step,
            "version": ANALYSIS_VERSION,
            "episodes": self.episodes,
            "n_mazes": self.n_mazes,
            "behaviour": self.behaviour.to_json(),
            "decisions": self.decisions,
            "steering": self.steering,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MazeAnalysis:
        return cls(
            data["episodes"], data["n_mazes"], Behaviour.from_json(data["behaviour"]),
            data["decisions"], data["steering"], data["step"],
        )  # fmt: skip

    def fits(self, step: int, options: AnalysisOptions) -> bool:
        """Whether this analysis answers ``options`` for the checkpoint at ``step``."""
        return (
            self.step == step
            and self.episodes == options.episodes
            and self.n_mazes == options.n_mazes
            and options.hook in (None, self.steering["hook"])
        )


def analyse_agent(
    agent: HookedAgent, config: MazeConfig, options: AnalysisOptions, log: Log = print
) -> MazeAnalysis:
    """Every maze analysis of ``agent`` in the maze world ``config``, computed now."""
    if options.hook is not None:
        check_hook(agent, options.hook)  # before any work
    log("behaviour in and out of distribution ...")
    behaviour = behaviour_study(agent, config, options.episodes)
    log("decision squares ...")
    decisions = decision_square_analysis(
        agent, config, n_mazes=options.n_mazes, exclude_region=config.cheese_region
    )
    log("cheese vector and channel clamping ...")
    steering = steering_study(agent, config, options.hook, options.n_mazes)
    return MazeAnalysis(options.episodes, options.n_mazes, behaviour, decisions, steering)


def analyse(run: Run, options: AnalysisOptions, log: Log = print) -> MazeAnalysis:
    """:func:`analyse_agent` on the run's latest checkpoint, saved as ``analysis/maze.json`` and
    reused while it fits (:meth:`MazeAnalysis.fits`); one analysis of a run at a time."""
    config = maze_config(run)
    step, _ = run.checkpoint()
    file = run.analysis_dir / "maze.json"
    with FolderLock(file.parent, "analysis folder"):
        if file.exists() and not options.force:
            saved = read_json(file)
            if saved.get("version") == ANALYSIS_VERSION:
                cached = MazeAnalysis.from_json(saved)
                if cached.fits(step, options):
                    return cached
        result = replace(analyse_agent(run.load_agent(), config, options, log), step=step)
        write_json(file, result.to_json())
    return result


@dataclass(frozen=True)
class Headline:
    """The demo's few numbers, each a proportion with its 95% interval, and each intervention
    set against its control (random vectors, the unclamped agent) with a difference interval."""

    train_success: dict[str, Any]
    test_success: dict[str, Any]
    test_corner_first: dict[str, Any]
    p_cheese_at_decision_squares: dict[str, Any]
    success_without_intervention: dict[str, Any]
    success_with_cheese_vector_subtracted: dict[str, Any]
    success_with_random_vectors: dict[str, Any]
    cheese_vector_vs_random: dict[str, Any]
    clamped_reaches_target: dict[str, Any]
    clamped_vs_unclamped: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def headline(analysis: MazeAnalysis, steered: MazeAnalysis | None = None) -> Headline:
    """Behaviour from ``analysis``, the interventions from ``steered`` (another agent's analysis;
    default ``analysis``)."""
    b, steering = analysis.behaviour, (steered or analysis).steering
    st, clamp = steering["steering"], steering["clamp"]
    return Headline(
        train_success=b.train.summary["success"],
        test_success=b.test.summary["success"],
        test_corner_first=b.test.summary["corner_first"],
        p_cheese_at_decision_squares=analysis.decisions["p_cheese"],
        success_without_intervention=st["baseline"]["success"],
        success_with_cheese_vector_subtracted=st["cheese_vector x -1"]["success"],
        success_with_random_vectors=st["random x -1"]["success"],
        cheese_vector_vs_random=steering["cheese_vector_vs_random"],
        clamped_reaches_target=clamp["clamped_reaches_target"],
        clamped_vs_unclamped=steering["clamped_vs_unclamped"],
    )


# -- the report's study ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MazeViews:
    """The maze report's pictures as data: sample trajectories, where the agent goes, and
    vector fields with the change the cheese vector makes."""

    states: list[MazeState]
    episodes: list[MazeEpisode]
    """One sampled episode from each of ``states``."""
    visits: np.ndarray
    """Visits per cell over ``visit_mazes`` test mazes."""
    visit_mazes: int
    fields: list[tuple[MazeState, VectorField, VectorField]]
    """(maze, the policy's field, its change with the cheese vector subtracted at the hook)."""


def maze_views(agent: HookedAgent, config: MazeConfig, hook: str, seed: int = 123) -> MazeViews:
    """Eight test mazes with trajectories, visits over 300 more, and vector fields of three."""
    states = test_levels(config, 8, seed=seed)
    episodes = run_episodes_from_states(agent, states, config, seed=seed)
    many = test_levels(config, 300, seed=seed + 198, off_path=False)
    visits = visit_counts(
        run_episodes_from_states(agent, many, config, seed=seed + 198), config.world_size
    )
    batch, fields = MazeBatch(config, 1), []
    for s in states[:3]:
        obs = batch.observe(s)[None]
        v = activation(agent, obs, hook) - activation(agent, without_cheese(obs, config), hook)
        base = vector_field(agent, s, config)
        steered = vector_field(agent, s, config, fwd_hooks=[(hook, add_vector(v[0], -1.0))])
        fields.append((s, base, steered - base))
    return MazeViews(states, episodes, visits, len(many), fields)


@dataclass(frozen=True)
class Training:
    """How a run's agent was trained, for the report's introduction."""

    arch: str | None
    env_id: str
    env_kwargs: dict[str, Any]
    seed: int
    metrics: list[dict[str, float]]
    """The run's learning curve (``metrics.csv`` rows)."""


@dataclass(frozen=True)
class StudyOptions:
    """What :func:`study` computes beyond the cached analysis."""

    analysis: AnalysisOptions = AnalysisOptions()
    n_obs: int = 128
    """Observations for the attribution, NMF and clustering sections."""
    steering_runs: tuple[Path, ...] = ()
    """Other maze runs (e.g. trained with a larger cheese region, so they do go for the cheese)
    whose interventions are shown beside this agent's."""

    def __post_init__(self) -> None:
        _check_positive(n_obs=self.n_obs)


@dataclass(frozen=True)
class MazeStudy:
    """Everything the maze report draws, for one agent."""

    name: str
    config: MazeConfig
    analysis: MazeAnalysis
    views: MazeViews
    attribution: MazeAttribution
    training: Training | None = None
    """None: an agent without a run."""
    others: dict[str, MazeAnalysis] = field(default_factory=dict)
    """Other agents' analyses by a label naming each, for their interventions."""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "analysis": self.analysis.to_json(),
            "attribution": self.attribution.to_json(),
            "others": {k: v.to_json() for k, v in self.others.items()},
        }


def study_agent(
    agent: HookedAgent,
    config: MazeConfig,
    analysis: MazeAnalysis,
    n_obs: int = 128,
    log: Log = print,
) -> MazeStudy:
    """The report's pictures and attributions of ``agent`` beside its ``analysis``."""
    log("trajectories, visits and vector fields ...")
    views = maze_views(agent, config, analysis.steering["hook"])
    log("attribution and features ...")
    attribution = attribution_study(agent, config, n_obs=n_obs, log=log)
    return MazeStudy("agent", config, analysis, views, attribution)


def study(run: Run, options: StudyOptions, log: Log = print) -> MazeStudy:
    """The run's analysis (:func:`analyse`), those of ``options.steering_runs``, and the report's
    pictures and attributions; the attributions are saved under ``analysis/``."""
    others = {}
    for path in options.steering_runs:
        other = Run(path)
        region = maze_config(other).cheese_region
        label = f"agent {other.name}, cheese region {region}"
        others[label] = analyse(other, options.analysis, log)
    analysis = analyse(run, options.analysis, log)
    result = study_agent(run.load_agent(), maze_config(run), analysis, options.n_obs, log)
    with FolderLock(run.analysis_dir, "analysis folder"):
        result.attribution.save(run.analysis_dir)
    trainer = run.config["trainer"]
    training = Training(
        run.config["agent"].get("arch"), trainer["env_id"], dict(trainer["env_kwargs"]),
        trainer["seed"], run.metrics(),
    )  # fmt: skip
    return replace(result, name=run.name, training=training, others=others)


# -- several runs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableRow:
    """One run of :func:`table`."""

    run: str
    cheese_region: int | None
    seed: int
    analysis: MazeAnalysis


@dataclass(frozen=True)
class MazeTable:
    """Success in and out of distribution and corner bias for several maze runs."""

    rows: list[TableRow]

    def to_json(self) -> list[dict[str, Any]]:
        out = []
        for row in self.rows:
            train, test = row.analysis.behaviour.train.summary, row.analysis.behaviour.test.summary
            out.append(
                {
                    "run": row.run,
                    "cheese_region": row.cheese_region,
                    "seed": row.seed,
                    "steps": row.analysis.step,
                    "train success": train["success"],
                    "test success": test["success"],
                    "test corner first": test["corner_first"],
                    "off-path success": test["off_path"]["success"],
                    "off-path corner first": test["off_path"]["corner_first"],
                }
            )
        return out


def table(runs: Sequence[Run], options: AnalysisOptions, log: Log = print) -> MazeTable:
    """:func:`analyse` of each run (e.g. trained with cheese regions 1, 3 and anywhere); every
    run is checked to be a maze run before any is analysed."""
    configs = [maze_config(r) for r in runs]
    return MazeTable(
        [
            TableRow(r.name, c.cheese_region, r.config["trainer"]["seed"], analyse(r, options, log))
            for r, c in zip(runs, configs, strict=True)
        ]
    )
