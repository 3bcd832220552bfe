"""What the explorer knows about each world, behind one small adapter per world.

The rest of the explorer is world-agnostic: it plays episodes, draws observations and labels
positions only through a :class:`World`. :class:`MazeWorld` adds what only the maze has (levels,
state editing, vector fields, the cheese vector); :class:`RookWorld` draws the board from the
observation's planes and labels rows with the endgame's boolean concepts; :class:`HazardsWorld`
draws the hazard world's tiles as the RL-vision study does, names how each episode ended and takes
its ground truth from the world's per-cell object masks. Another world adds one subclass and one
line in :data:`ADAPTERS`; any other run gets the generic adapter (observations drawn as images or
bars, no ground truth).

Everything here calls the rollout engine and the studies; nothing is computed that a lens or study
already computes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
import torch

from policylens.envs.hazards import COLOURS, KINDS, SKY, HazardsConfig
from policylens.lenses.attribution import Attribution
from policylens.report.rl_vision import symbolic_rgb
from policylens.report.sae import action_names
from policylens.rollout import engine
from policylens.runs import Run
from policylens.studies.rl_vision import features as rl_vision
from policylens.studies.rook_sae.runs import run_world
from policylens.train.ppo import gae

Progress = Any  # jobs.Progress; kept loose so worlds do not import the server's job module


@dataclass
class Episode:
    """One played episode: every observation the agent saw (and the last one) with its outputs."""

    seed: int
    level: int | None
    obs: np.ndarray
    """(T + 1, *obs_shape): the observations acted on, then the episode's last one."""
    logits: np.ndarray
    """(T + 1, actions) float32: the agent's logits (Q-values for a Q-network) at each."""
    values: np.ndarray
    """(T + 1,): the value head (max Q for a Q-network)."""
    actions: np.ndarray
    """(T,) the actions taken."""
    rewards: np.ndarray
    """(T,) the rewards received."""
    outcome: str
    """How it ended, in the world's words ("cheese", "checkmate", "truncated", ...)."""
    success: bool
    truncated: bool = False
    """Cut off by the step limit (its last value bootstraps the advantages)."""
    anywhere: bool = False
    """Maze: the cheese could be anywhere (the test distribution)."""

    @property
    def length(self) -> int:
        return len(self.actions)


@dataclass
class Dataset:
    """Observations for dataset examples, clustering and NMF, with the world's ground truth."""

    obs: np.ndarray
    truth: Any
    """Maze: the states behind the observations; hazards: ``{object: bool (N, h, w)}`` masks at
    observation resolution; other worlds: ``{label: bool (N,)}``."""


@dataclass(frozen=True)
class SharedUniforms(engine.Policy):
    """A :class:`~policylens.rollout.engine.Policy` whose batch rows all draw the same uniforms,
    one pair per step from its own seeded ``uniforms`` generator (the engine's draws go unused):
    rows playing different conditions from one state are compared on equal luck, and a row's
    path is the same whatever the batch size (with one row: the engine's own draws, for the same
    seed)."""

    uniforms: torch.Generator = field(default_factory=torch.Generator)

    def choose(
        self, logits: torch.Tensor, uniforms: torch.Tensor, legal: torch.Tensor | None = None
    ) -> torch.Tensor:
        shared = torch.rand(2, 1, generator=self.uniforms).expand(2, len(logits))
        return super().choose(logits, shared, legal)


def on_rows(fwd_hooks: list, rows: slice) -> list:
    """``fwd_hooks`` changed to act on the batch ``rows`` only; the other rows pass unchanged."""

    def restrict(fn: Any) -> Any:
        def hook_fn(act: torch.Tensor, hook: Any) -> torch.Tensor:
            out = fn(act[rows], hook)
            if out is None:  # changed in place, through the view
                return act
            act = act.clone()
            act[rows] = out
            return act

        return hook_fn

    return [(name, restrict(fn)) for name, fn in fwd_hooks]


class World:
    """The generic adapter: plays any registered world; draws observations as images or bars."""

    kind: ClassVar[str] = "generic"
    has_levels: ClassVar[bool] = False
    editable: ClassVar[bool] = False
    end_labels: ClassVar[tuple[str, ...]] = ()
    labels: ClassVar[tuple[str, ...]] = ()
    """Boolean ``info`` labels whose correlation with each unit the activations view shows."""
    about_dataset: ClassVar[str] = "the agent's own play, 16 games at once, consecutive steps"
    """What the dataset behind examples, correlations, clusters and NMF is, for the page."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.setup = run_world(run)
        self.env_id: str = self.setup["env_id"]
        self.env_kwargs: dict[str, Any] = self.setup["env_kwargs"]
        self.policy = engine.Policy(
            greedy=self.setup["greedy"], mask_illegal=self.setup["mask_illegal"]
        )
        trainer = run.config.get("trainer", {})
        self.gamma = float(trainer.get("gamma", 0.99))
        self.gae_lambda = float(trainer.get("gae_lambda", 0.0))
        agent = run.config.get("agent", {})
        self.obs_shape = tuple(agent.get("obs_shape", ()))
        self.action_names = action_names(
            self.env_id, self.env_kwargs, int(agent.get("num_actions", 0))
        )

    # -- drawing ----------------------------------------------------------------------------------
    def render(self) -> dict[str, Any]:
        """How the page draws an observation of this world."""
        if len(self.obs_shape) == 3 and self.obs_shape[-1] == 3:
            return {"kind": "image"}
        return {"kind": "vector"}

    def drawn(self, obs: np.ndarray) -> np.ndarray:
        """A batch of observations as the page receives them to draw (here: unchanged)."""
        return obs

    def input_map(self, attribution: Attribution) -> np.ndarray:
        """An input attribution of one observation as a map over the drawn observation."""
        if attribution.is_spatial:
            return attribution.spatial()[0].detach().numpy()
        return attribution.attributions[0].detach().reshape(1, -1).numpy()

    def study_layer(self) -> str | None:
        """The layer this world's study reads, opened first where the agent has it."""
        return None

    # -- playing ----------------------------------------------------------------------------------
    def level_kwargs(self, level: int | None) -> dict[str, Any]:
        """The world's options for playing ``level`` (None: the run's own distribution)."""
        return self.env_kwargs

    def reset(self, seed: int, level: int | None, anywhere: bool) -> tuple[Any, Any, Any]:
        """A one-env vector world reset to ``seed``, on ``level`` where the world numbers them."""
        from policylens.envs import make_vec

        envs = make_vec(self.env_id, 1, **self.level_kwargs(level))
        obs, infos = envs.reset(seed=seed)
        return envs, obs, infos

    def outcome(self, ep: engine.Episode) -> str:
        if ep.end.get("truncated"):
            return "truncated"
        return "success" if ep.success else "failure"

    def play(
        self,
        agent: Any,
        seed: int,
        level: int | None = None,
        anywhere: bool = False,
        fwd_hooks: engine.Hooks = (),
        progress: Progress | None = None,
    ) -> Episode:
        """One episode through the rollout engine, keeping every observation and output."""
        envs, obs, infos = self.reset(seed, level, anywhere)
        frames: list[np.ndarray] = []
        logits: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        actions: list[int] = []
        rewards: list[float] = []
        last: list[np.ndarray] = []
        limit = int(self.env_kwargs.get("max_steps", 500))

        def record(step: engine.Step, active: np.ndarray) -> None:
            if not active[0]:
                return
            frames.append(np.asarray(step.obs[0]).copy())
            logits.append(step.logits[0])
            values.append(step.values[0])
            actions.append(int(step.actions[0]))
            rewards.append(float(step.reward[0]))
            if step.done[0]:
                last.append(np.asarray(step.next_infos["final_obs"][0]).copy())
            if progress is not None:
                progress(len(frames) / limit, f"step {len(frames)}")

        try:
            (ep,) = engine.first_episodes(
                agent, envs, obs, infos, self.policy, torch.Generator().manual_seed(seed),
                fwd_hooks, end_labels=self.end_labels, on_step=record,
            )  # fmt: skip
        finally:
            envs.close()
        with torch.no_grad():
            end_logits, end_value = agent.run_with_hooks(last[0][None], fwd_hooks=list(fwd_hooks))
        return Episode(
            seed=seed,
            level=level,
            obs=np.stack(frames + last),
            logits=torch.cat([torch.stack(logits), end_logits.float()]).numpy(),
            values=torch.cat([torch.stack(values), end_value.float().reshape(1)]).numpy(),
            actions=np.array(actions, dtype=np.int32),
            rewards=np.array(rewards, dtype=np.float32),
            outcome=self.outcome(ep),
            success=ep.success,
            truncated=bool(ep.end.get("truncated")),
            anywhere=anywhere,
        )

    def advantages(self, ep: Episode) -> np.ndarray:
        """The episode's advantage estimates ``(T,)`` as PPO computes them in training, with the
        run's own discount and GAE lambda (0, one-step TD errors, for runs without one): the last
        value bootstraps a truncated episode, not an ended one."""
        dones = np.zeros(ep.length, dtype=np.float32)
        dones[-1] = not ep.truncated
        return gae(ep.rewards, ep.values[:-1], dones, ep.values[-1], self.gamma, self.gae_lambda)

    # -- data for dataset examples, labels and clusters --------------------------------------------
    def dataset(self, agent: Any, n: int, seed: int) -> Dataset:
        """``n`` observations of the agent playing (many episodes at once), with their labels."""
        from policylens.envs import make_vec

        envs = make_vec(self.env_id, min(16, n), **self.env_kwargs)
        rows: list[np.ndarray] = []
        labels: dict[str, list[np.ndarray]] = {k: [] for k in self.labels}
        try:
            obs, infos = envs.reset(seed=seed)
            gen = torch.Generator().manual_seed(seed)
            stream = engine.steps(agent, envs, obs, infos, self.policy, gen)
            for step in stream:
                rows.append(np.asarray(step.obs).copy())
                for k in labels:
                    labels[k].append(np.asarray(step.infos[k], dtype=bool).reshape(-1))
                if sum(len(r) for r in rows) >= n:
                    stream.close()
                    break
        finally:
            envs.close()
        truth = {k: np.concatenate(v)[:n] for k, v in labels.items()}
        return Dataset(np.concatenate(rows)[:n], truth)

    def masks(self, data: Dataset, hw: tuple[int, int]) -> dict[str, np.ndarray]:
        """Ground truth ``name -> bool (N, h, w)`` at a layer's resolution (a row label covers
        every position of its row)."""
        h, w = hw
        return {k: np.broadcast_to(v[:, None, None], (len(v), h, w)) for k, v in data.truth.items()}

    def categories(
        self, data: Dataset, hw: tuple[int, int]
    ) -> tuple[np.ndarray, tuple[str, ...]] | None:
        """Ground-truth category per position (for scoring clusters), where the world has one."""
        return None


class RookWorld(World):
    """The rook endgame: the board drawn from the observation's three one-hot planes."""

    kind = "rook"
    end_labels = ("outcome",)
    labels = ("in_check", "can_mate", "rook_en_prise")

    def render(self) -> dict[str, Any]:
        return {"kind": "chess", "size": int(self.env_kwargs.get("board_size", 5))}

    def input_map(self, attribution: Attribution) -> np.ndarray:
        n = int(self.env_kwargs.get("board_size", 5))
        return attribution.attributions[0].detach().reshape(3, n, n).sum(0).numpy()

    def outcome(self, ep: engine.Episode) -> str:
        return str(ep.end.get("outcome") or ("truncated" if ep.end.get("truncated") else "end"))


class MazeWorld(World):
    """The maze: levels by number, state editing, vector fields and the cheese vector."""

    kind = "maze"
    has_levels = True
    editable = True
    about_dataset = "test mazes, cheese anywhere, the mouse on cells the agent itself visits"

    def __init__(self, run: Run) -> None:
        from policylens.studies.maze.misgeneralization import maze_config

        super().__init__(run)
        self.config = maze_config(run)

    def render(self) -> dict[str, Any]:
        if self.config.obs_mode == "rgb":
            return {"kind": "image"}
        return {"kind": "maze", "world_size": self.config.world_size}

    def config_for(self, anywhere: bool):
        """The run's maze options; ``anywhere`` puts the cheese on any free cell (the test
        distribution of the goal-misgeneralization study)."""
        return replace(self.config, cheese_region=None) if anywhere else self.config

    def reset(self, seed: int, level: int | None, anywhere: bool) -> tuple[Any, Any, Any]:
        from policylens.envs.maze import MazeVecEnv

        config = self.config_for(anywhere)
        envs = MazeVecEnv(num_envs=1, **config.__dict__)
        obs, infos = envs.reset(seed=seed)
        if level is not None:
            envs.set_state(0, self.level_state(level, anywhere))
            obs, infos = envs.batch.obs.copy(), envs.batch.infos()
        return envs, obs, infos

    def outcome(self, ep: engine.Episode) -> str:
        if ep.success:
            return "cheese"
        return "truncated" if ep.end.get("truncated") else "failure"

    # -- editing ----------------------------------------------------------------------------------
    def level_state(self, level: int, anywhere: bool = False):
        from policylens.envs.maze import generate_level

        if level < 0:
            raise ValueError(f"level must be a number >= 0, got {level}")
        return generate_level(level, self.config_for(anywhere))

    def parse_state(self, data: dict[str, Any]):
        """A maze state the page sent (``MazeState.to_dict`` form), checked against the rules."""
        from policylens.envs.maze import MazeState

        try:
            state = MazeState.from_dict(data)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ValueError(
                f"the maze state is malformed ({type(e).__name__}); send walls, mouse, cheese, "
                "maze_size as MazeState.to_dict() writes them"
            ) from None
        world = self.config.world_size
        if state.walls.shape != (world, world):
            raise ValueError(
                f"the maze must be {world}x{world} cells like this run's world, got "
                f"{state.walls.shape[0]}x{state.walls.shape[1] if state.walls.ndim > 1 else 0}"
            )
        state.validate()
        return state

    def observe(self, state: Any) -> np.ndarray:
        from policylens.envs.maze import MazeBatch

        return MazeBatch(self.config, 1).observe(state)

    def vector_field(self, agent: Any, state: Any, fwd_hooks: list | None = None):
        from policylens.studies.maze.vector_fields import vector_field

        return vector_field(agent, state, self.config, fwd_hooks)

    def cheese_vector(self, agent: Any, state: Any, hook: str) -> torch.Tensor:
        """The cheese vector of this maze at ``hook`` (Mini, Turner et al.): the activation with
        the cheese minus without it, as the maze study computes it."""
        from policylens.lenses.interventions import activation
        from policylens.studies.maze.steering import without_cheese

        obs = self.observe(state)[None]
        return (
            activation(agent, obs, hook) - activation(agent, without_cheese(obs, self.config), hook)
        )[0]

    def trajectories(
        self, agent: Any, state: Any, conditions: list[list], seed: int, max_steps: int
    ) -> list[dict[str, Any]]:
        """One sampled path from ``state`` per condition (its forward hooks; ``[]``: the agent
        itself), at most ``max_steps`` long, all played as one batch through the rollout engine:
        every forward serves all conditions, each row hooked by its own condition only, and every
        row draws the same uniforms, so paths differ by the change alone (equal luck) and a
        condition's path does not depend on which others it was played with."""
        from policylens.envs.maze import MazeVecEnv

        limited = replace(self.config, max_steps=min(self.config.max_steps, max_steps))
        envs = MazeVecEnv(num_envs=len(conditions), **limited.__dict__)
        envs.reset(seed=seed)
        for i in range(len(conditions)):
            envs.set_state(i, state)
        hooks = [h for i, hs in enumerate(conditions) for h in on_rows(hs, slice(i, i + 1))]
        policy = SharedUniforms(
            greedy=engine.policy_for(agent).greedy, uniforms=torch.Generator().manual_seed(seed)
        )
        eps = engine.first_episodes(
            agent, envs, envs.batch.obs.copy(), envs.batch.infos(), policy,
            torch.Generator().manual_seed(seed), hooks, trace_labels=("mouse_pos",),
        )  # fmt: skip
        return [
            {"positions": [[int(r), int(c)] for r, c in ep.trace["mouse_pos"]],
             "success": ep.success, "length": ep.length}
            for ep in eps
        ]  # fmt: skip

    # -- ground truth -------------------------------------------------------------------------------
    def dataset(self, agent: Any, n: int, seed: int) -> Dataset:
        """Test mazes (cheese anywhere) with the mouse on cells the agent itself visits."""
        from policylens.studies.maze.dataset import maze_dataset

        data = maze_dataset(self.config, n, seed=seed, agent=agent)
        return Dataset(data.obs, data.states)

    def masks(self, data: Dataset, hw: tuple[int, int]) -> dict[str, np.ndarray]:
        from policylens.studies.maze import dataset as md

        return md.resize_masks(md.object_masks(data.truth), hw)

    def categories(
        self, data: Dataset, hw: tuple[int, int]
    ) -> tuple[np.ndarray, tuple[str, ...]] | None:
        from policylens.studies.maze import dataset as md

        return md.categories(self.masks(data, hw)), md.CATEGORIES


class HazardsWorld(World):
    """The hazard world: the symbolic view drawn as a tile picture in the world's colours (the
    RL-vision study's :func:`~policylens.report.rl_vision.symbolic_rgb`), episodes ending by
    cause of death or the coin, levels by number, and the world's per-cell object masks as
    ground truth (the masks the study names NMF features by)."""

    kind = "hazards"
    has_levels = True
    end_labels = ("death_cause",)
    CATEGORIES = ("empty", "wall", "crate", "lava", "coin", "saw", "enemy", "agent", "velocity")
    """A position's ground-truth category: the world's kinds in drawing order, bottom to top,
    named as the study's masks (:data:`~policylens.studies.rl_vision.features.OBJECTS`)."""
    DATASET_EVERY = 4
    """The dataset keeps every 4th step of ``n // 5`` episodes, so its ``n`` frames span about 20
    steps of each level: a trained agent's whole level, not only its first steps."""
    about_dataset = "the agent's own play, every 4th step, with the world's object masks"

    def __init__(self, run: Run) -> None:
        super().__init__(run)
        self.config = HazardsConfig.from_kwargs(self.env_kwargs)

    def render(self) -> dict[str, Any]:
        """An image, with the colour of each kind for the page's key (the velocity's two cells
        top left run from black to white with the speed)."""
        kinds = [["sky", SKY]] + [[KINDS[code], rgb] for code, rgb in COLOURS.items()]
        legend = [[name, f"rgb{tuple(rgb)}"] for name, rgb in kinds]
        legend.append(["velocity (top left)", "linear-gradient(90deg, black, white)"])
        return {"kind": "image", "legend": legend}

    def drawn(self, obs: np.ndarray) -> np.ndarray:
        """Symbolic observations as pictures of one pixel per tile (image views pass)."""
        if self.config.obs_mode != "symbolic":
            return obs
        pictures = [symbolic_rgb(o, px=1) for o in obs]
        return np.stack(pictures) if pictures else np.zeros((0, *obs.shape[2:], 3), np.uint8)

    def study_layer(self) -> str | None:
        return rl_vision.DEFAULT_LAYER

    def level_kwargs(self, level: int | None) -> dict[str, Any]:
        """Level ``N`` is the world's level seed ``N``: ``start_level=N, num_levels=1``."""
        if level is None:
            return self.env_kwargs
        return {**self.env_kwargs, "start_level": level, "num_levels": 1}

    def outcome(self, ep: engine.Episode) -> str:
        """The coin, or the cause of death: saw, enemy, lava, fell, multiple, timeout."""
        return "coin" if ep.success else str(ep.end["death_cause"])

    def dataset(self, agent: Any, n: int, seed: int) -> Dataset:
        """Frames of the agent's play with the world's object masks, collected as the RL-vision
        study collects them."""
        frames = rl_vision.collect_frames(
            agent, self.env_kwargs, n, episodes=max(1, n // 5), every=self.DATASET_EVERY, seed=seed
        )
        return Dataset(frames.obs, frames.masks)

    def masks(self, data: Dataset, hw: tuple[int, int]) -> dict[str, np.ndarray]:
        return rl_vision.resize_masks(data.truth, hw)

    def categories(
        self, data: Dataset, hw: tuple[int, int]
    ) -> tuple[np.ndarray, tuple[str, ...]] | None:
        """Each position's top-most object (:data:`CATEGORIES`), "empty" where there is none."""
        masks = self.masks(data, hw)
        cat = np.zeros(masks["wall"].shape, dtype=np.int64)
        for i, name in enumerate(self.CATEGORIES[1:], start=1):
            cat[masks[name]] = i
        return cat, self.CATEGORIES


ADAPTERS: dict[str, type[World]] = {
    "policylens/Maze-v0": MazeWorld,
    "policylens/RookEndgame-v0": RookWorld,
    "policylens/Hazards-v0": HazardsWorld,
}
"""World id -> its adapter; a world not listed gets the generic :class:`World`."""


def world_for(run: Run) -> World:
    """The adapter for a run's world."""
    return ADAPTERS.get(run_world(run)["env_id"], World)(run)
