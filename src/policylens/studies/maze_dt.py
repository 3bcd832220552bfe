"""Goal misgeneralization of a decision transformer in the maze (issue 29, item 6).

Does a high return-to-go make a decision transformer, trained offline on a misgeneralizing PPO
agent's trajectories, go for the cheese out of distribution more often than the agent it learnt
from?

- :func:`collect_maze_trajectories` plays a PPO agent (``zoo:maze-corner``: trained with the
  cheese in the top-right corner) on its *training* distribution at several softmax temperatures
  and writes a trajectory store in :func:`~policylens.worlds.minigrid.collect_trajectories`'s
  layout, which :func:`~policylens.train.dt.train_dt` reads unchanged. The maze's ``grid``
  observation ``(3, W, W)`` (wall, mouse, cheese; 0/1) is stored channels-last ``(W, W, 3)``
  (:func:`dt_obs`): the DT's state encoder one-hot encodes each cell's three channels (object,
  colour, state: 11, 6 and 3 classes), so a 0/1 wall, mouse and cheese channel each take two
  of its classes and nothing is lost; the ``direction`` column is zero (train with
  ``use_direction=False``).
- :func:`measure_maze_gm` plays the PPO agent and each DT (at a high and a low target RTG) on
  the *same* mazes with the cheese anywhere (``cheese_region=None``), and reports for each the
  rate of reaching the cheese and of reaching the top-right corner first (among mazes whose
  cheese is not in the corner: :attr:`~policylens.worlds.maze.MazeEpisode.corner_first`), with
  Wilson intervals, and DT-high minus PPO and DT-high minus DT-low with Newcombe intervals, per
  DT run (seed) and pooled. A DT that imitates a mix of temperatures acts like a hotter, less
  competent agent, and a hotter agent wanders off the corner path more often by chance: the PPO
  agent at other temperatures (``ppo_temperatures``) is the control for that.

The DT and PPO episodes of one maze share its level and their sampling's uniforms; the Newcombe
interval treats the two samples as independent (the pairing is not used: a conservative interval
when the two policies' outcomes on a maze are positively correlated).

Both policies are played by :func:`play_mazes`: one batched maze per episode, each from a given
level state, sampled by inverse CDF on one uniform per maze and step (the same generator seed
for every policy), until the cheese is reached or the world's ``max_steps`` runs out.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policylens.agents.agent import HookedAgent
from policylens.agents.dt import DTBatch
from policylens.envs.maze import MazeConfig, MazeState, MazeVecEnv, generate_level
from policylens.rollout import stats
from policylens.rollout.store import Store, StoreWriter
from policylens.runs import Run
from policylens.studies.maze.behaviour import summarize
from policylens.train.dt import load_run_dt
from policylens.worlds import run_world
from policylens.worlds.maze import ENV_ID, MazeEpisode

MAZE_ID = ENV_ID
DEFAULT_TEMPERATURES: tuple[tuple[float, float], ...] = (
    (1.0, 2.0),
    (2.0, 1.0),
    (4.0, 1.0),
    (8.0, 1.0),
    (32.0, 1.0),
)
"""``(temperature, share)`` of the collection mix: the agent's own sampling, then flatter
softmaxes (slower, and more often timing out, so that returns span 0 to 10)."""


def dt_obs(obs: np.ndarray) -> np.ndarray:
    """Maze ``grid`` observations ``(..., 3, W, W)`` as the DT's cells ``(..., W, W, 3)`` uint8."""
    return np.ascontiguousarray(np.moveaxis(np.asarray(obs), -3, -1)).astype(np.uint8)


# -- playing ------------------------------------------------------------------------------------
@dataclass
class Trace:
    """One maze episode played by :func:`play_mazes`."""

    state: MazeState
    start: dict[str, Any]
    """The start's labels (``cheese_pos``, ``corner_pos``, ``decision_square``,
    ``dist_to_cheese``)."""
    obs: list[np.ndarray] = field(default_factory=list)
    """The observation before each step (``grid``, channels first)."""
    actions: list[int] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    rtg: list[float] = field(default_factory=list)
    """The target return-to-go at each step (a DT's conditioning; empty otherwise)."""
    positions: list[tuple[int, int]] = field(default_factory=list)
    """Mouse cells from the start to the end."""
    terminated: bool = False
    truncated: bool = False

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated

    def episode(self) -> MazeEpisode:
        """The :class:`~policylens.worlds.maze.MazeEpisode` the maze study's figures read."""
        cell = lambda key: (int(self.start[key][0]), int(self.start[key][1]))  # noqa: E731
        return MazeEpisode(
            ret=float(sum(self.rewards)),
            length=len(self.actions),
            success=self.terminated,
            positions=list(self.positions),
            level_seed=int(self.state.level_seed),
            shortest=int(self.start["dist_to_cheese"]),
            cheese=cell("cheese_pos"),
            corner=cell("corner_pos"),
            decision_square=cell("decision_square"),
        )


Actor = Callable[[Sequence[Trace], np.ndarray], torch.Tensor]
"""``(live traces, their current grid observations (n, 3, W, W)) -> logits (n, actions)``."""


def play_mazes(
    act: Actor,
    states: Sequence[MazeState],
    config: MazeConfig,
    seed: int = 0,
    temperature: float = 1.0,
    greedy: bool = False,
    target_rtg: float | None = None,
) -> list[Trace]:
    """One episode from each of ``states`` with the policy ``act`` (all mazes at once).

    Actions are sampled from ``softmax(logits / temperature)`` by inverse CDF on one uniform per
    maze and step drawn from a generator seeded with ``seed`` (argmax when ``greedy``). With
    ``target_rtg`` each trace's ``rtg`` starts there and falls by every reward received.
    """
    if not states:
        raise ValueError("states must hold at least one maze.")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    envs = MazeVecEnv(num_envs=len(states), **{**config.__dict__, "obs_mode": "grid"})
    envs.reset(seed=seed)
    for i, s in enumerate(states):
        envs.set_state(i, s)
    obs, infos = envs.batch.obs.copy(), envs.batch.infos()
    keys = ("cheese_pos", "corner_pos", "decision_square", "dist_to_cheese")
    traces = [
        Trace(
            state=s,
            start={k: np.asarray(infos[k][i]).tolist() for k in keys},
            positions=[(int(infos["mouse_pos"][i][0]), int(infos["mouse_pos"][i][1]))],
        )
        for i, s in enumerate(states)
    ]
    gen = torch.Generator().manual_seed(seed)
    try:
        while True:
            live = np.array([not t.done for t in traces])
            uniforms = torch.rand(len(traces), generator=gen)
            if not live.any():
                break
            rows = np.nonzero(live)[0]
            live_rows: list[int] = rows.tolist()
            for i in live_rows:
                traces[i].obs.append(obs[i].copy())
                if target_rtg is not None:
                    r = traces[i].rtg
                    r.append(float(target_rtg) if not r else r[-1] - traces[i].rewards[-1])
            logits = act([traces[i] for i in live_rows], obs[rows]).float()
            if greedy:
                chosen = logits.argmax(-1)
            else:
                cdf = torch.softmax(logits / temperature, -1).cumsum(-1)
                u = uniforms[torch.from_numpy(rows)]
                chosen = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None].contiguous())[:, 0]
                chosen = chosen.clamp(max=logits.shape[-1] - 1)
            actions = np.zeros(len(traces), dtype=np.int64)
            actions[rows] = chosen.numpy()
            obs, reward, terminated, truncated, infos = envs.step(actions)
            final = infos.get("final_info", {})
            for i in live_rows:
                t = traces[i]
                t.actions.append(int(actions[i]))
                t.rewards.append(float(reward[i]))
                ended = bool(terminated[i] or truncated[i])
                pos = (final if ended else infos)["mouse_pos"][i]
                t.positions.append((int(pos[0]), int(pos[1])))
                t.terminated, t.truncated = bool(terminated[i]), bool(truncated[i])
    finally:
        envs.close()
    return traces


def agent_actor(agent: HookedAgent) -> Actor:
    """A memoryless agent's logits on the current observations."""

    @torch.no_grad()
    def act(traces: Sequence[Trace], obs: np.ndarray) -> torch.Tensor:
        logits, _ = agent(obs)
        return logits.float().cpu()

    agent.eval()
    return act


def dt_window(traces: Sequence[Trace], k: int) -> DTBatch:
    """The last ``k`` steps of each trace (its latest observation included, its action not yet
    taken), right-aligned, in the DT's layout (cells channels-last, direction 0)."""
    n = len(traces)
    w = traces[0].obs[-1].shape[-1]
    obs = np.zeros((n, k, w, w, 3), dtype=np.uint8)
    actions = np.zeros((n, k), dtype=np.int64)
    rtg = np.zeros((n, k), dtype=np.float32)
    time = np.zeros((n, k), dtype=np.int64)
    mask = np.zeros((n, k), dtype=bool)
    for i, t in enumerate(traces):
        steps = len(t.obs)
        m = min(steps, k)
        lo = steps - m
        obs[i, k - m :] = dt_obs(np.stack(t.obs[lo:]))
        rtg[i, k - m :] = t.rtg[lo:]
        time[i, k - m :] = np.arange(lo, steps)
        actions[i, k - m :] = t.actions[lo:] + [0]
        mask[i, k - m :] = True
    return DTBatch(
        obs=torch.from_numpy(obs),
        actions=torch.from_numpy(actions),
        rtg=torch.from_numpy(rtg),
        timesteps=torch.from_numpy(time),
        mask=torch.from_numpy(mask),
        direction=torch.zeros(n, k, dtype=torch.int64),
    )


def dt_actor(model: Any) -> Actor:
    """A decision transformer's logits at the latest state token of each trace's window."""

    @torch.no_grad()
    def act(traces: Sequence[Trace], obs: np.ndarray) -> torch.Tensor:
        return model(dt_window(traces, model.dt_config.context))[:, -1].float()

    model.eval()
    return act


def maze_states(config: MazeConfig, n: int, seed: int) -> list[MazeState]:
    """The ``n`` levels of seeds ``seed .. seed + n - 1`` under ``config`` (its cheese region)."""
    return [generate_level(seed + i, config) for i in range(n)]


# -- collecting ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class CollectSummary:
    """What :func:`collect_maze_trajectories` wrote."""

    path: str
    agent: str
    env_kwargs: dict[str, Any]
    episodes: int
    rows: int
    policies: list[dict[str, Any]]
    """Per temperature: its share, episodes, mean return, success rate, mean length."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def collect_maze_trajectories(
    out: str | os.PathLike,
    agent_source: str = "zoo:maze-corner",
    episodes: int = 3000,
    seed: int = 0,
    temperatures: Sequence[tuple[float, float]] = DEFAULT_TEMPERATURES,
    overwrite: bool = False,
) -> CollectSummary:
    """Play the PPO agent of ``agent_source`` (a run folder or ``zoo:NAME``) on its own
    training distribution at ``temperatures`` (``(temperature, share)`` pairs) into a trajectory
    store at ``out``, in :func:`~policylens.worlds.minigrid.collect_trajectories`'s layout:
    ``obs`` ``(W, W, 3)`` (:func:`dt_obs`), ``direction`` (0), ``actions``, ``rewards``, ``rtg``,
    ``timestep``, ``episode``, ``done``, ``terminated``, ``truncated``, ``policy`` (the
    temperature's index), ``seed`` (the level seed), ``labels/cheese_pos``, ``labels/corner_pos``.
    """
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be an integer >= 1, got {episodes!r}.")
    if not temperatures or any(t <= 0 or s <= 0 for t, s in temperatures):
        raise ValueError("temperatures must hold (temperature, share) pairs, both > 0.")
    run = Run(agent_source)
    world = run_world(run)
    if world["env_id"] != MAZE_ID:
        raise ValueError(f"{agent_source} is not a maze agent (its world is {world['env_id']}).")
    kwargs = dict(world["env_kwargs"])
    config = MazeConfig.from_kwargs(kwargs)
    if config.obs_mode != "grid":
        raise ValueError(f"{agent_source} sees the maze as {config.obs_mode!r}; this needs 'grid'.")
    agent = run.load_agent()
    shares = np.array([s for _, s in temperatures], dtype=float)
    counts = np.floor(shares / shares.sum() * episodes).astype(int)
    counts[: episodes - counts.sum()] += 1
    actor = agent_actor(agent)
    per_policy: list[dict[str, Any]] = []
    level = seed * 1_000_003
    ep = 0
    with StoreWriter(out, overwrite=overwrite) as writer:
        for k, ((temp, share), n) in enumerate(zip(temperatures, counts, strict=True)):
            states = maze_states(config, int(n), level)
            traces: list[Trace] = []
            for lo in range(0, len(states), 256):
                traces += play_mazes(actor, states[lo : lo + 256], config, seed=level + lo,
                                     temperature=temp)  # fmt: skip
            level += int(n)
            for t in traces:
                m = len(t.actions)
                r = np.asarray(t.rewards, dtype=np.float32)
                done = np.zeros(m, dtype=bool)
                done[-1] = True
                writer.append(
                    {
                        "obs": dt_obs(np.stack(t.obs)),
                        "direction": np.zeros(m, dtype=np.int64),
                        "actions": np.asarray(t.actions, dtype=np.int64),
                        "rewards": r,
                        "rtg": np.cumsum(r[::-1])[::-1].astype(np.float32),
                        "timestep": np.arange(m, dtype=np.int64),
                        "episode": np.full(m, ep, dtype=np.int64),
                        "done": done,
                        "terminated": done & t.terminated,
                        "truncated": done & t.truncated,
                        "policy": np.full(m, k, dtype=np.int64),
                        "seed": np.full(m, t.state.level_seed, dtype=np.int64),
                        "labels/cheese_pos": np.tile(np.asarray(t.start["cheese_pos"]), (m, 1)),
                        "labels/corner_pos": np.tile(np.asarray(t.start["corner_pos"]), (m, 1)),
                    }
                )
                ep += 1
            per_policy.append(
                {
                    "temperature": temp,
                    "share": share,
                    "label": f"temp={temp:g}",
                    "episodes": len(traces),
                    "mean_return": float(np.mean([sum(t.rewards) for t in traces])),
                    "success": float(np.mean([t.terminated for t in traces])),
                    "mean_length": float(np.mean([len(t.actions) for t in traces])),
                }
            )
        meta = {
            "kind": "trajectories",
            "task": "maze",
            "env_id": MAZE_ID,
            "env_kwargs": kwargs,
            "num_actions": config.num_actions,
            "obs_shape": [config.world_size, config.world_size, 3],
            "obs_layout": "maze grid channels-last: (wall, mouse, cheese) as 0/1",
            "max_steps": config.max_steps,
            "episodes": episodes,
            "seed": seed,
            "agent": agent_source,
            "policies": per_policy,
        }
        store = writer.close(meta)
    return CollectSummary(str(store.path), agent_source, kwargs, episodes, len(store), per_policy)


# -- measuring ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MazeGMOptions:
    """What :func:`measure_maze_gm` plays."""

    ppo: str = "zoo:maze-corner"
    """The PPO agent the DTs learnt from (a run folder or ``zoo:NAME``)."""
    episodes: int = 200
    """Mazes per DT run (each played by the PPO agent and by the DT at both RTGs)."""
    seed: int = 50_000
    """DT run ``i`` plays the levels of seeds ``seed + i * episodes ..``; sampling seeds too."""
    high_rtg: float | None = None
    """The high target RTG (None: the largest RTG in the run's training store)."""
    low_rtg: float = 0.0
    greedy: bool = False
    """Argmax actions (both policies) instead of sampling."""
    step: int | None = None
    """The DTs' checkpoint (None: the latest)."""
    ppo_temperatures: tuple[float, ...] = ()
    """Controls: the PPO agent also sampled at these softmax temperatures (conditions
    ``ppo_T<t>``), since a DT that imitates a mix of temperatures acts like a hotter agent."""

    def __post_init__(self) -> None:
        if (
            isinstance(self.episodes, bool)
            or not isinstance(self.episodes, int)
            or self.episodes < 1
        ):
            raise ValueError(f"episodes must be an integer >= 1, got {self.episodes!r}.")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}.")
        object.__setattr__(self, "ppo_temperatures", tuple(float(t) for t in self.ppo_temperatures))
        if not all(math.isfinite(t) and t > 0 for t in self.ppo_temperatures):
            raise ValueError(f"ppo_temperatures must be > 0, got {self.ppo_temperatures}.")
        for name in ("high_rtg", "low_rtg"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}.")


CONDITIONS = ("ppo", "dt_high", "dt_low")
"""The conditions every measurement has (controls ``ppo_T<t>`` come after them)."""


def control_name(temperature: float) -> str:
    return f"ppo_T{temperature:g}"


def figures(episodes: Sequence[MazeEpisode]) -> dict[str, Any]:
    """Success and corner-first (cheese not in the corner) with Wilson intervals, also on the
    mazes whose cheese is off the start-to-corner path (:func:`~policylens.studies.maze.behaviour.
    summarize`)."""
    s = summarize(list(episodes))
    return {
        "episodes": s["episodes"],
        "success": s["success"],
        "corner_first": s["corner_first"],
        "off_path": s["off_path"],
        "return": s["return"],
        "length": s["length"],
    }


def contrasts(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """DT-high minus PPO, minus DT-low and minus each control, for success and corner-first
    (and both on off-path mazes), with Newcombe intervals."""
    out: dict[str, Any] = {}
    pairs = {"dt_high_minus_ppo": ("dt_high", "ppo"), "dt_high_minus_dt_low": ("dt_high", "dt_low")}
    pairs.update({f"dt_high_minus_{c}": ("dt_high", c) for c in rows if c not in CONDITIONS})
    for name, (a, b) in pairs.items():
        out[name] = {
            "success": stats.difference(rows[a]["success"], rows[b]["success"]),
            "corner_first": stats.difference(rows[a]["corner_first"], rows[b]["corner_first"]),
            "off_path_success": stats.difference(
                rows[a]["off_path"]["success"], rows[b]["off_path"]["success"]
            ),
            "off_path_corner_first": stats.difference(
                rows[a]["off_path"]["corner_first"], rows[b]["off_path"]["corner_first"]
            ),
        }
    return out


@dataclass(frozen=True)
class MazeGMResult:
    """PPO vs a DT at a high and a low RTG out of distribution, per DT run and pooled."""

    ppo: str
    env_kwargs: dict[str, Any]
    """The world the mazes were played in (the PPO agent's, cheese anywhere)."""
    options: dict[str, Any]
    runs: list[dict[str, Any]]
    """Per DT run: its path, seed, step, RTGs, the three conditions' figures and the contrasts."""
    pooled: dict[str, Any]
    """Every run's mazes together: figures and contrasts; ``across_seeds``: the per-run
    differences' mean with a Student-t interval."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def store_max_rtg(run: Run) -> float:
    """The largest return-to-go in a DT run's training store."""
    data = run.config.get("trainer", {}).get("data")
    if not data or not Path(data).exists():
        raise FileNotFoundError(f"{run.path}'s training store {data} is missing; pass high_rtg.")
    store = Store(data)
    try:
        return float(np.max(store["rtg"][:]))
    finally:
        store.close()


def check_maze_dt(run: Run) -> None:
    """Refuse in one sentence a run that is not a decision transformer of maze trajectories."""
    if run.config.get("kind") != "dt":
        raise ValueError(f"{run.path} is not a decision-transformer run.")
    if run.config.get("trainer", {}).get("env_id") != MAZE_ID:
        raise ValueError(f"{run.path} was not trained on maze trajectories.")


def headline_results(
    run: Run, episodes: int = 200, target_rtg: float = 10.0, seed: int = 50_000
) -> dict[str, dict[str, Any]]:
    """A maze DT's headline figures (a zoo entry's ``results.json``): the success rate of its
    sampled play at ``target_rtg`` (the data's best return, 10) on ``episodes`` mazes of its
    training distribution and on as many with the cheese anywhere, and there how often it reaches
    the top-right corner first (cheese not in the corner), with 95% intervals."""
    check_maze_dt(run)
    actor = dt_actor(load_run_dt(run))
    trained = dict(run.config["trainer"]["env_kwargs"])
    played = {}
    for name, kwargs in (
        ("trained", trained),
        ("cheese_anywhere", {**trained, "cheese_region": None}),
    ):
        config = MazeConfig.from_kwargs(kwargs)
        traces = play_mazes(actor, maze_states(config, episodes, seed), config, seed,
                            target_rtg=target_rtg)  # fmt: skip
        played[name] = figures([t.episode() for t in traces])
    return {
        "success_trained": played["trained"]["success"],
        "success_cheese_anywhere": played["cheese_anywhere"]["success"],
        "corner_first_cheese_anywhere": played["cheese_anywhere"]["corner_first"],
    }


def measure_maze_gm(dt_runs: Sequence[Run], options: MazeGMOptions | None = None) -> MazeGMResult:
    """Play the PPO agent ``options.ppo`` and each DT of ``dt_runs`` (at a high and a low RTG) on
    the same ``options.episodes`` mazes per run with the cheese anywhere; see the module doc."""
    options = options or MazeGMOptions()
    if not dt_runs:
        raise ValueError("Name at least one decision-transformer run.")
    for run in dt_runs:
        check_maze_dt(run)
    ppo_run = Run(options.ppo)
    world = run_world(ppo_run)
    if world["env_id"] != MAZE_ID:
        raise ValueError(f"{options.ppo} is not a maze agent (its world is {world['env_id']}).")
    env_kwargs = {**world["env_kwargs"], "cheese_region": None}
    config = MazeConfig.from_kwargs(env_kwargs)
    ppo = agent_actor(ppo_run.load_agent())
    per_run: list[dict[str, Any]] = []
    names = [*CONDITIONS, *(control_name(t) for t in options.ppo_temperatures)]
    pooled_eps: dict[str, list[MazeEpisode]] = {c: [] for c in names}
    for i, run in enumerate(dt_runs):
        step, _ = run.checkpoint(options.step)
        model = load_run_dt(run, options.step)
        if tuple(model.dt_config.obs_shape) != (config.world_size, config.world_size, 3):
            raise ValueError(f"{run.path} sees {model.dt_config.obs_shape}, not this maze.")
        high = store_max_rtg(run) if options.high_rtg is None else float(options.high_rtg)
        level = options.seed + i * options.episodes
        states = maze_states(config, options.episodes, level)
        actor = dt_actor(model)
        played = {
            "ppo": play_mazes(ppo, states, config, level, greedy=options.greedy),
            "dt_high": play_mazes(
                actor, states, config, level, greedy=options.greedy, target_rtg=high
            ),
            "dt_low": play_mazes(
                actor, states, config, level, greedy=options.greedy, target_rtg=options.low_rtg
            ),
        }
        for t in options.ppo_temperatures:
            played[control_name(t)] = play_mazes(ppo, states, config, level, temperature=t)
        eps = {c: [t.episode() for t in played[c]] for c in names}
        for c in names:
            pooled_eps[c] += eps[c]
        rows = {c: figures(eps[c]) for c in names}
        per_run.append(
            {
                "run": str(run.path),
                "seed": run.config.get("trainer", {}).get("seed"),
                "step": int(step),
                "high_rtg": high,
                "low_rtg": options.low_rtg,
                "levels": [level, level + options.episodes - 1],
                **rows,
                "contrasts": contrasts(rows),
            }
        )
    rows = {c: figures(pooled_eps[c]) for c in names}
    across: dict[str, Any] = {}
    for metric in ("success", "corner_first", "off_path_success", "off_path_corner_first"):
        for name in per_run[0]["contrasts"]:
            diffs = [r["contrasts"][name][metric]["diff"] for r in per_run]
            across[f"{name}/{metric}"] = stats.t_mean(diffs)
    pooled = {**rows, "contrasts": contrasts(rows), "across_seeds": across}
    opts = asdict(options)
    return MazeGMResult(options.ppo, env_kwargs, opts, per_run, pooled)
