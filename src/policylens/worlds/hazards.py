"""The hazard world (Understanding RL Vision): its recipe, its ground truth (object masks at
observation resolution, the training / unseen level split), frames of an agent's play with their
masks, the tile drawing, and the world the explorer, sweeps and the study look up."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from policylens.agents.agent import HookedAgent
from policylens.envs.hazards import (
    ACTION_NAMES,
    AGENT,
    CHANNELS,
    COIN,
    COLOURS,
    CRATE,
    ENEMY,
    KINDS,
    LAVA,
    SAW,
    SKY,
    WALL,
    HazardsConfig,
)
from policylens.lenses.masks import resize_masks
from policylens.rollout import engine
from policylens.rollout.engine import EpisodeOptions, Step, policy_for, run_episodes
from policylens.runs import Run
from policylens.train.ppo import PPOConfig
from policylens.worlds.base import Dataset, World

ENV_ID = "policylens/Hazards-v0"
STUDIED_LAYERS = {"maze_cnn": "hook_relu", "clear_cnn": "hook_pool2"}
"""Network -> the layer the RL-vision study reads: the symbolic recipe's conv map after its ReLU
(16 x 13 x 13, read only by ``fc``); the pixel agent's pooled conv2b map (Hilton et al.'s layer
2b; after its L2 pool, so that its one reader ``conv3a`` is linear and an edit is exact)."""
OBJECTS = ("saw", "enemy", "coin", "agent", "wall", "crate", "lava", "velocity")
"""Ground-truth masks a feature may be named after."""
HAZARDS = ("saw", "enemy", "lava")

HAZARDS_STEPS = 3_000_000
"""Default training length of the hazards recipe: about 5 minutes on 2 cores (a 1M-step run on
2 threads, the machine nearly quiet, ran at 9.7k steps/s); seeds 0-2 ended at 90-94% completion
on their training levels and 88-89% on unseen ones."""
HAZARDS_LEVELS = 1000
"""Training levels of the hazards recipe; unseen levels are those from start_level + this up."""


@dataclass(frozen=True)
class HazardsRecipe:
    """PPO on the hazard world: the symbolic 13 x 13-tile agent-centred view and a one-conv CNN.

    Levels of difficulty 1-2 (1-3 sections). On difficulties 1-3 the same PPO finished 72% of
    its training episodes after 1.5M steps and about a quarter of its difficulty-3 levels (3-5
    sections, wide pits). The network is a 3 x 3 conv (16 channels) under a 256-unit layer:
    a residual block learned no faster per step and cost 1.6x the compute. PPO takes 2 epochs of
    8 minibatches of 1,024 per 8,192-step rollout at lr 1e-3 with a small entropy bonus (0.003):
    with 4 minibatches at 5e-4 the policy moved too little per update (approximate KL 0.002),
    and 3 epochs learned no more per step than 2. Episodes end at 500 steps (the world's default
    is procgen's 1,000; a competent agent finishes any of these levels in under 100).
    ``num_envs`` x ``num_steps`` is one rollout; smaller ones make tiny runs (tests).
    ``channels`` and ``res_blocks`` vary the network (a sweep may try deeper or wider agents).

    ``layout="path"`` puts a hazard the agent must pass in every section (CoinRun's levels, where
    seeing a saw decides the outcome). ``obs_mode="rgb"`` (13 x 13 tiles at ``tile_px`` pixels,
    52 x 52 at 4) or ``"rgb64"`` trains the pixel agent of Understanding RL Vision: ``clear_cnn``
    (``channels`` in its first layer, twice that above; ``first_stride`` in its first conv) in
    place of the one-conv net; ``salient_saws`` draws their saws dark with a light hub (see
    :class:`HazardsConfig`). ``learning_rate``, ``threads`` and ``init_weights`` (a
    ``.safetensors`` file to start from, to continue a long training) go to :class:`PPOConfig`.
    """

    num_levels: int = HAZARDS_LEVELS
    start_level: int = 0
    distribution_mode: str = "hard"
    max_difficulty: int = 2
    total_steps: int | None = None
    seed: int = 0
    precision: str = "auto"
    num_envs: int = 64
    num_steps: int = 128
    channels: int = 16
    res_blocks: int = 0
    layout: str = "classic"
    obs_mode: str = "symbolic"
    tile_px: int = 4
    first_stride: int = 2
    salient_saws: bool = False
    learning_rate: float = 1e-3
    threads: int = 0
    init_weights: str | None = None

    def __post_init__(self) -> None:
        self.config()  # refuse bad settings now, in the world's own words

    def config(self) -> PPOConfig:
        """The trainer config of these settings."""
        if self.channels < 1 or self.res_blocks < 0:
            raise ValueError(
                f"channels must be >= 1 and res_blocks >= 0, got {self.channels}, {self.res_blocks}"
            )
        pixels = self.obs_mode != "symbolic"
        if pixels and self.res_blocks:
            raise ValueError("res_blocks applies to the symbolic agent only; clear_cnn has none.")
        if self.salient_saws and not pixels:
            raise ValueError(
                "salient_saws changes how saws are drawn: it needs a pixel obs_mode (rgb or rgb64)."
            )
        env_kwargs: dict = {
            "num_levels": self.num_levels,
            "start_level": self.start_level,
            "distribution_mode": self.distribution_mode,
            "max_difficulty": self.max_difficulty,
            "max_steps": 500,
            "masks": False,  # training reads no pixel labels; the study's evaluations need none either
        }
        # only where they differ from the world's defaults: earlier runs' configs stay as they were
        if self.layout != "classic":
            env_kwargs["layout"] = self.layout
        if pixels:
            env_kwargs["obs_mode"] = self.obs_mode
        if self.obs_mode == "rgb":
            env_kwargs["tile_px"] = self.tile_px
        if self.salient_saws:
            env_kwargs["salient_saws"] = True
        HazardsConfig.from_kwargs(env_kwargs)  # fail early, with the world's own message
        arch_kwargs: dict = (
            {"channels": self.channels, "first_stride": self.first_stride, "hidden": 256}
            if pixels
            else {"channels": self.channels, "res_blocks": self.res_blocks, "hidden": 256}
        )
        return PPOConfig(
            env_id=ENV_ID,
            env_kwargs=env_kwargs,
            arch="clear_cnn" if pixels else "maze_cnn",
            arch_kwargs=arch_kwargs,
            total_steps=HAZARDS_STEPS if self.total_steps is None else self.total_steps,
            num_envs=self.num_envs,
            num_steps=self.num_steps,
            learning_rate=self.learning_rate,
            anneal_lr=False,
            gamma=0.99,
            gae_lambda=0.95,
            update_epochs=2,
            num_minibatches=8,
            ent_coef=0.003,
            seed=self.seed,
            threads=self.threads,
            precision=self.precision,
            init_weights=self.init_weights,
        )


def level_splits(env_kwargs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The training levels, and unseen ones (seeds from the first after them upward).

    A run trained on unlimited levels (``num_levels=0``) has no unseen levels: only its
    training distribution is returned.
    """
    num = int(env_kwargs.get("num_levels", 0))
    start = int(env_kwargs.get("start_level", 0))
    splits = {"training": dict(env_kwargs)}
    if num:
        splits = {"unseen": {**env_kwargs, "num_levels": 0, "start_level": start + num}, **splits}
    return splits


def hazard_env_kwargs(run: Run) -> dict[str, Any]:
    """The run's unseen levels (or its training distribution when it trained on all levels)."""
    trainer = run.config.get("trainer", {})
    if trainer.get("env_id") != ENV_ID:
        raise ValueError(
            f"{run.path} was trained in {trainer.get('env_id')}, not {ENV_ID}; this study needs a "
            "hazard-world run (`policylens train hazards`)."
        )
    splits = level_splits(trainer.get("env_kwargs", {}))
    return dict(splits.get("unseen", splits["training"]))


def velocity_mask(config: HazardsConfig) -> np.ndarray:
    """Where the velocity marker is painted: two tiles in the top-left corner ``(side, side)``."""
    p = config.pixels_per_tile
    mask = np.zeros((config.obs_side, config.obs_side), dtype=bool)
    if config.paint_vel_info:
        mask[:p, : 2 * p] = True
    return mask


@dataclass
class Frames:
    """Observations from play with their object masks and ground-truth flags, one row per step."""

    obs: np.ndarray
    masks: dict[str, np.ndarray]
    """Name -> bool ``(n, side, side)`` at observation resolution (see :data:`OBJECTS`)."""
    values: np.ndarray


def collect_frames(
    agent: HookedAgent,
    env_kwargs: dict[str, Any],
    n_frames: int,
    *,
    episodes: int | None = None,
    every: int = 4,
    seed: int = 20_000,
) -> Frames:
    """``n_frames`` frames drawn at random (seeded) from every ``every``-th step of ``episodes``
    sampled episodes, so that they cover whole levels, not only their first steps.

    ``episodes`` defaults to ``max(64, n_frames // 8)``: an episode of the recipe's agent gives
    about 10-25 frames at ``every=4``, so there are more to draw from than are kept. Fewer frames
    than asked are returned only when the episodes are too short to give them.
    """
    episodes = max(64, n_frames // 8) if episodes is None else episodes
    if n_frames < 1 or episodes < 1 or every < 1:
        raise ValueError("n_frames, episodes and every must be >= 1.")
    config = HazardsConfig.from_kwargs({**env_kwargs, "masks": True})
    hud = velocity_mask(config)
    rows: dict[str, list[Any]] = {"obs": [], "values": []}
    masks: dict[str, list[np.ndarray]] = {name: [] for name in OBJECTS}
    t = [0]

    def keep(step: Step, active: np.ndarray) -> None:
        if t[0] % every == 0:
            for i in np.nonzero(active)[0].tolist():
                rows["obs"].append(step.obs[i])
                rows["values"].append(float(step.values[i]))
                for name in OBJECTS:
                    masks[name].append(hud if name == "velocity" else step.infos[f"mask_{name}"][i])
        t[0] += 1

    options = EpisodeOptions(seed=seed, policy=policy_for(agent), max_envs=min(episodes, 256))
    run_episodes(agent, episodes, ENV_ID, {**env_kwargs, "masks": True}, options, on_step=keep)
    n = len(rows["obs"])
    pick = np.sort(np.random.default_rng(seed).permutation(n)[:n_frames])
    return Frames(
        obs=np.stack(rows["obs"])[pick],
        masks={k: np.stack(v)[pick].astype(bool) for k, v in masks.items()},
        values=np.array(rows["values"])[pick],
    )


def masks_at(masks: dict[str, np.ndarray], hw: tuple[int, int]) -> dict[str, np.ndarray]:
    """Object masks at a layer's resolution: a cell is on if any observation cell under it is
    (hazards are a tile or less: a half rule would drop them at coarse layers)."""
    return resize_masks(masks, hw, any_cover=masks)


SKY_RGB = (170, 210, 245)
_CHANNEL_KIND = {"wall": WALL, "crate": CRATE, "lava": LAVA, "coin": COIN, "saw": SAW,
                 "enemy_left": ENEMY, "enemy_right": ENEMY, "agent": AGENT}  # fmt: skip


def symbolic_rgb(obs: np.ndarray, px: int = 4) -> np.ndarray:
    """A symbolic observation ``(channels, v, v)`` as a uint8 picture ``(v*px, v*px, 3)``; image
    observations pass through."""
    obs = np.asarray(obs)
    if obs.ndim == 3 and obs.shape[-1] == 3:
        return obs
    img = np.broadcast_to(np.array(SKY_RGB, np.uint8), (*obs.shape[1:], 3)).copy()
    for ch, name in enumerate(CHANNELS):
        if name in _CHANNEL_KIND:
            img[obs[ch] > 0] = COLOURS[_CHANNEL_KIND[name]]
    img[0, :2] = (np.clip(obs[-1, 0, :2].astype(float) * 20, 0, 255)[:, None]).astype(np.uint8)
    return np.repeat(np.repeat(img, px, 0), px, 1)


class HazardsWorld(World):
    """The hazard world: the symbolic view drawn as a tile picture in the world's colours (the
    world's :func:`symbolic_rgb`), episodes ending by
    cause of death or the coin, levels by number, and the world's per-cell object masks as
    ground truth (the masks the study names NMF features by)."""

    name = "hazards"
    env_id = ENV_ID
    recipe = HazardsRecipe
    sweep_metrics = "policylens.studies.rl_vision.diversity:diversity_metrics"
    headline = "policylens.studies.hazards.failures:headline_results"
    studied_layers = STUDIED_LAYERS
    has_levels = True
    outside_plane = CHANNELS.index("wall")  # the symbolic view's; images are not grids
    end_labels = ("death_cause",)
    CATEGORIES = ("empty", "wall", "crate", "lava", "coin", "saw", "enemy", "agent", "velocity")
    """A position's ground-truth category: the world's kinds in drawing order, bottom to top,
    named as the world's masks (:data:`OBJECTS`)."""
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

    @classmethod
    def world_actions(cls, env_kwargs: Mapping[str, Any]) -> Sequence[str]:
        return ACTION_NAMES

    @classmethod
    def picture(cls, obs: np.ndarray, env_kwargs: Mapping[str, Any]) -> np.ndarray | None:
        """A symbolic observation drawn as tiles in the world's colours (images as they are)."""
        return symbolic_rgb(obs)

    def level_kwargs(self, level: int | None) -> dict[str, Any]:
        """Level ``N`` is the world's level seed ``N``: ``start_level=N, num_levels=1``."""
        if level is None:
            return self.env_kwargs
        return {**self.env_kwargs, "start_level": level, "num_levels": 1}

    def outcome(self, ep: engine.Episode) -> str:
        """The coin, or the cause of death: saw, enemy, lava, fell, multiple, timeout."""
        return "coin" if ep.success else str(ep.end["death_cause"])

    def dataset(self, agent: HookedAgent, n: int, seed: int) -> Dataset:
        """Frames of the agent's play with the world's object masks, collected as the RL-vision
        study collects them."""
        frames = collect_frames(
            agent, self.env_kwargs, n, episodes=max(1, n // 5), every=self.DATASET_EVERY, seed=seed
        )
        return Dataset(frames.obs, frames.masks)

    def masks(self, data: Dataset, hw: tuple[int, int]) -> dict[str, np.ndarray]:
        return masks_at(data.truth, hw)

    def categories(
        self, data: Dataset, hw: tuple[int, int]
    ) -> tuple[np.ndarray, tuple[str, ...]] | None:
        """Each position's top-most object (:data:`CATEGORIES`), "empty" where there is none."""
        masks = self.masks(data, hw)
        cat = np.zeros(masks["wall"].shape, dtype=np.int64)
        for i, name in enumerate(self.CATEGORIES[1:], start=1):
            cat[masks[name]] = i
        return cat, self.CATEGORIES


def studied_layer(agent: HookedAgent) -> str:
    """The layer the RL-vision study reads in ``agent`` (:data:`STUDIED_LAYERS`)."""
    layer = HazardsWorld.studied_layer(agent)
    if layer is None:
        raise ValueError(
            f"The RL-vision study knows no layer of a {agent.config.get('arch')} network; pass "
            "a layer (one of agent.hook_names())."
        )
    return layer
