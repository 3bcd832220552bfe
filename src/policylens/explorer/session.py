"""The run an explorer serves and everything computed about it, cached.

:class:`Explorer` answers the API's questions by calling the agents, the rollout engine, the
lenses and the studies; it computes nothing of its own. Quick answers (one frame's activations or
attribution, a vector field) run at once under :attr:`Explorer.lock`, because hooks and
attribution mode change the shared agent while they run. Slow ones (an episode, the dataset, NMF,
clusters, an SAE's data) run as background jobs on their own copy of the agent and are cached by
key, so a reload or a shared link finds them ready.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policylens import worlds
from policylens.artifacts import atomic_path, read_json, write_json
from policylens.errors import check_known
from policylens.explorer.jobs import Jobs, Progress
from policylens.explorer.worlds import cheese_vector, vector_field
from policylens.rollout.store import is_store
from policylens.runs import Run
from policylens.worlds.base import Dataset, Episode
from policylens.worlds.maze import MazeWorld

DATASET_SIZE = 256
"""Observations behind dataset examples, label correlations, clusters and NMF."""
SHOWN = 12
"""Dataset observations drawn with their cluster labels."""
LABEL = re.compile(r"^[^\x00-\x1f\x7f<>]{1,40}$")
"""A cluster label: 1-40 characters, no control characters or angle brackets."""
VECTOR_NAME = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
SERVED = {".html", ".png", ".svg", ".json", ".csv", ".txt"}
"""Suffixes of run files the explorer links to (reports and their pictures)."""
LABELS_FILE = Path("analysis") / "explorer" / "labels.json"
VECTORS_DIR = Path("analysis") / "vectors"
TRAJECTORY_STEPS = 40
MAP_METHODS = ("saliency", "grad_x_input", "ig", "lrp", "guided_backprop", "gradcam")
"""The attribution methods the observation view draws as a map."""
LAYER_METHODS = ("gradcam",)
"""Of those, the ones drawn at a conv layer only."""
"""Steps of a maze path drawn in the interventions view (about 0.5 ms of CPU each for one row of
the 9x9 maze CNN, measured; a 9x9 maze's shortest paths are shorter)."""


@dataclass
class Intervention:
    """What to change in the agent: a steering vector, clamped channels, an SAE spliced in."""

    vector: str = "none"
    """"none", "cheese" (this maze's cheese vector) or the name of a saved vector."""
    coef: float = 0.0
    hook: str | None = None
    """Hook for the vector and the clamp (default: the world's steering layer)."""
    clamp_channels: tuple[int, ...] = ()
    clamp_value: float = 0.0
    clamp_position: tuple[int, int] | None = None
    """Clamp at one position (the rest of each channel zeroed, as Mini et al.); None: everywhere."""
    sae: str | None = None

    @property
    def active(self) -> bool:
        return (
            (self.vector != "none" and self.coef != 0)
            or bool(self.clamp_channels)
            or bool(self.sae)
        )


class Explorer:
    """One run folder, its agents by checkpoint, and the cached results about them."""

    def __init__(
        self,
        run_path: str | os.PathLike,
        seed: int = 0,
        dataset_size: int = DATASET_SIZE,
        data: str | os.PathLike | None = None,
    ) -> None:
        """``data``: a decision transformer's trajectory store for the studies that read
        histories (default: the one it trained on; a zoo DT ships without it)."""
        self.run = Run(run_path)
        self.data = None if data is None else str(data)
        self.root = self.run.path.resolve()
        if not self.run.checkpoints():
            raise FileNotFoundError(f"run {self.run.path} has no checkpoints yet; train it first")
        self.world = worlds.of_run(self.run)
        if data is not None and (self.run.config.get("kind") != "dt" or not is_store(data)):
            raise ValueError(
                f"--data {data} must be a trajectory store (`policylens dt collect`) and the run "
                "a decision transformer."
            )
        self.seed = seed
        self.dataset_size = dataset_size
        self.lock = threading.RLock()
        self.jobs = Jobs(workers=2)
        self._agents: OrderedDict[int, Any] = OrderedDict()
        self._memo: OrderedDict[str, Any] = OrderedDict()
        self._memo_locks: dict[str, threading.Lock] = {}
        self._memo_lock = threading.Lock()
        self._files: tuple[float, dict[str, Path]] = (0.0, {})
        self._write_lock = threading.Lock()

    # -- caching ----------------------------------------------------------------------------------
    def memo(self, key: str, make: Callable[[], Any], keep: int = 96) -> Any:
        """``make()`` computed once per key (concurrent askers wait for the first); newest kept."""
        with self._memo_lock:
            if key in self._memo:
                self._memo.move_to_end(key)
                return self._memo[key]
            lock = self._memo_locks.setdefault(key, threading.Lock())
        with lock:
            with self._memo_lock:
                if key in self._memo:
                    return self._memo[key]
            value = make()
            with self._memo_lock:
                self._memo[key] = value
                while len(self._memo) > keep:
                    old, _ = self._memo.popitem(last=False)
                    self._memo_locks.pop(old, None)
            return value

    def compute(self, key: str, make: Callable[[Progress], Any]) -> Any:
        """The cached value of ``key``, else computed on a background job (raises
        :class:`~policylens.explorer.jobs.Pending` while the job runs)."""
        with self._memo_lock:
            if key in self._memo:
                return self._memo[key]
        return self.jobs.result(key, lambda progress: self.memo(key, lambda: make(progress)))

    # -- agents -------------------------------------------------------------------------------------
    def step(self, step: int | None) -> int:
        """A checkpoint step of the run (the latest for None); one sentence when there is none."""
        return self.run.checkpoint(step)[0]

    def agent(self, step: int) -> Any:
        """The shared agent at ``step``; use it under :attr:`lock`."""
        if self.is_dt:
            raise ValueError(
                "this is a decision-transformer run: the explorer shows it in its DT view only"
            )
        with self.lock:
            if step not in self._agents:
                self._agents[step] = self.run.load_agent(step).eval()
                while len(self._agents) > 3:
                    self._agents.popitem(last=False)
            self._agents.move_to_end(step)
            return self._agents[step]

    def own_agent(self, step: int) -> Any:
        """A private copy of the agent for a background job (the shared one stays free)."""
        with self.lock:
            return copy.deepcopy(self.agent(step))

    def layers(self, step: int) -> list[dict[str, Any]]:
        """Every hook with its activation shape for one observation."""

        def make() -> list[dict[str, Any]]:
            with self.lock:
                agent = self.agent(step)
                obs = np.zeros((1, *agent.obs_shape), dtype=np.float32)
                if agent.obs_kind in ("grid", "image"):
                    obs = obs.astype(np.uint8)
                _, cache = agent.run_with_cache(obs)
            return [{"name": n, "shape": list(cache[n].shape[1:])} for n in agent.hook_names()]

        return self.memo(f"layers:{step}", make)

    def default_layer(self, step: int) -> str:
        """The layer the world's study reads where the agent has it, else a middle residual conv
        layer where there is one (as the studies), else the first hidden layer."""
        from policylens.lenses.attribution import default_layer, spatial_layers

        with self.lock:
            studied = self.world.studied_layer(self.agent(step))
        if studied is not None and studied in {x["name"] for x in self.layers(step)}:
            return studied
        with self.lock:
            agent = self.agent(step)
            if spatial_layers(agent):
                return default_layer(agent)
        hidden = [
            x["name"] for x in self.layers(step) if x["name"] not in ("hook_logits", "hook_value")
        ]
        return hidden[len(hidden) // 2 - 1] if len(hidden) > 1 else hidden[0]

    def check_layer(self, step: int, layer: str) -> None:
        from policylens.errors import check_known

        check_known([layer], [x["name"] for x in self.layers(step)], "layer")

    # -- the run ------------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        if self.is_dt:
            return self.dt_info()
        step = self.step(None)
        world = self.world
        return {
            "run": self.run.name,
            "world": world.name,
            "env_id": world.run_env_id,
            "env_kwargs": world.env_kwargs,
            "render": world.render(),
            "has_levels": world.has_levels,
            "editable": world.editable,
            "dataset": world.about_dataset,
            "actions": world.action_names,
            "greedy": world.policy.greedy,
            "kind": self.run.config.get("kind"),
            "arch": self.run.config.get("agent", {}).get("arch"),
            "checkpoints": [s for s, _ in self.run.checkpoints()],
            "step": step,
            "done": self.run.done,
            "layers": self.layers(step),
            "default_layer": self.default_layer(step),
            "saes": self.saes(),
            "vectors": self.vectors(),
            "reports": [p for p in self.files() if p.endswith(".html")],
            "summary": self.run.summary(),
        }

    def metrics(self) -> tuple[list[str], np.ndarray]:
        """metrics.csv as column names and a ``(rows, columns)`` float array (NaN where empty)."""
        rows = self.run.metrics()
        names = list(dict.fromkeys(k for r in rows for k in r))
        table = np.array([[r.get(k, math.nan) for k in names] for r in rows], dtype=np.float32)
        return names, table.reshape(len(rows), len(names))

    def files(self) -> dict[str, Path]:
        """Run files the explorer may serve, by their path inside the run: reports and their
        pictures; symlinks, and anything resolving outside the run folder, are left out."""
        made, found = self._files
        if time.monotonic() - made < 2.0:
            return found
        found = {}
        for top, dirs, names in os.walk(self.root, followlinks=False):
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(top, d))]
            for name in names:
                path = Path(top) / name
                if path.suffix.lower() not in SERVED or path.is_symlink():
                    continue
                real = path.resolve()
                if real.is_relative_to(self.root) and real.is_file():
                    found[path.relative_to(self.root).as_posix()] = real
        self._files = (time.monotonic(), found)
        return found

    # -- episodes -----------------------------------------------------------------------------------
    def episode(self, step: int, seed: int, level: int | None, anywhere: bool) -> Episode:
        if level is not None and not self.world.has_levels:
            raise ValueError(f"{self.world.run_env_id} has no numbered levels; pick a seed instead")
        key = f"episode:{step}:{seed}:{level}:{anywhere}"

        def make(progress: Progress) -> Episode:
            return self.world.play(self.own_agent(step), seed, level, anywhere, progress=progress)

        return self.compute(key, make)

    @staticmethod
    def frame(ep: Episode, t: int) -> np.ndarray:
        if not 0 <= t < len(ep.obs):
            raise ValueError(f"frame {t} is outside the episode (frames 0 to {len(ep.obs) - 1})")
        return ep.obs[t][None]

    def activations(self, step: int, obs: np.ndarray, layer: str, hooks: list | None = None):
        """One observation's activation at ``layer`` (with ``hooks`` attached, if any)."""
        self.check_layer(step, layer)
        with self.lock, torch.no_grad():
            agent = self.agent(step)
            with agent.hooks(fwd_hooks=hooks or []):
                _, cache = agent.run_with_cache(obs, names=[layer])
        return cache[layer][0].float().numpy()

    def attribution(
        self, step: int, obs: np.ndarray, method: str, target: str, layer: str | None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """One of :data:`MAP_METHODS` of ``target`` for one observation: a map over the
        observation (``layer`` None) or over ``layer``'s positions. LRP explains the logit where
        a log-probability is asked for (its rules are defined for linear outputs)."""
        from policylens.lenses.attribution import attribute, method_from_name

        check_known([method], MAP_METHODS, "method")
        if method in LAYER_METHODS and layer is None:
            raise ValueError(f"{method} draws a map at a conv layer; pass a layer.")
        if layer is not None:
            self.check_layer(step, layer)
        if method == "lrp" and target.startswith("logprob:"):
            target = "logit:" + target.removeprefix("logprob:")
        how = method_from_name(method, n_steps=50 if layer is None else 10)
        names = self.world.action_names
        with self.lock:
            result = attribute(self.agent(step), obs, how, target, layer, action_names=names)
        if layer is None:
            amap = self.world.input_map(result)
        elif result.is_spatial:
            amap = result.spatial()[0].detach().numpy()
        else:
            amap = result.attributions[0].detach().reshape(1, -1).numpy()
        check = result.completeness
        return amap, {
            "completeness": check.to_json() if check else None,
            "output": float(result.outputs[0]),
            "target": target,
        }

    # -- the dataset ----------------------------------------------------------------------------------
    def dataset(self, step: int) -> Dataset:
        return self.memo(
            f"dataset:{step}",
            lambda: self.world.dataset(self.own_agent(step), self.dataset_size, self.seed),
        )

    def pictures(self, step: int) -> np.ndarray:
        """The dataset's observations as the page draws them (:meth:`World.drawn`); dataset
        examples are found on these, so their crops are of what the page shows."""
        return self.memo(f"pictures:{step}", lambda: self.world.drawn(self.dataset(step).obs))

    def dataset_acts(self, step: int, layer: str) -> np.ndarray:
        """The dataset's activations at ``layer`` as ``(N, channel, h, w)`` (vectors: h = w = 1)."""
        from policylens.lenses.interventions import activation

        self.check_layer(step, layer)

        def make() -> np.ndarray:
            acts = activation(self.own_agent(step), self.dataset(step).obs, layer).float().numpy()
            return acts if acts.ndim == 4 else acts.reshape(len(acts), -1, 1, 1)

        return self.memo(f"acts:{step}:{layer}", make)

    def correlations(self, step: int, layer: str) -> list[dict[str, Any]]:
        """Per channel: its correlation with each ground-truth label of the world
        (:func:`~policylens.lenses.nmf.label_features` with channels as features)."""
        from policylens.lenses.nmf import label_features

        def make() -> list[dict[str, Any]]:
            acts = self.dataset_acts(step, layer)
            masks = self.world.masks(self.dataset(step), acts.shape[2:])
            if not masks:
                return [{} for _ in range(acts.shape[1])]
            return label_features(acts.transpose(0, 2, 3, 1), masks)

        return self.memo(f"corr:{step}:{layer}", make)

    def channel(self, step: int, layer: str, channel: int) -> dict[str, Any]:
        """A channel's top dataset examples and label correlations (dataset built on a job)."""
        from policylens.lenses.features import examples_from_maps, feature_strength

        def make(progress: Progress) -> bool:
            progress(0.1, "playing the agent for the dataset")
            self.dataset(step)
            progress(0.7, "activations and label correlations")
            self.correlations(step, layer)
            return True

        self.compute(f"channelprep:{step}:{layer}", make)
        acts = self.dataset_acts(step, layer)
        maps = feature_strength(acts, channel)  # checks the channel exists
        examples = examples_from_maps(
            maps, self.pictures(step), k=6, outside_plane=self.world.outside_plane
        )
        return {
            "examples": examples,
            "obs": self.pictures(step)[[e.index for e in examples]],
            "correlations": self.correlations(step, layer)[channel],
            "map_range": [float(maps.min()), float(maps.max())],
        }

    # -- NMF and clusters --------------------------------------------------------------------------
    def nmf(self, step: int, layer: str, k: int) -> dict[str, Any]:
        """NMF of the dataset's value attributions at ``layer`` (Hilton et al.), labelled by the
        ground truth, with each feature's dataset examples."""
        from policylens.lenses.features import examples_from_maps
        from policylens.lenses.nmf import ValueFeatureOptions, value_features

        self.check_layer(step, layer)
        if not 1 <= k <= 12:
            raise ValueError(f"k (NMF features) must be between 1 and 12, got {k}")

        def make(progress: Progress) -> dict[str, Any]:
            progress(0.05, "playing the agent for the dataset")
            data = self.dataset(step)
            # the world's masks at the layer's resolution, by its own rule: they pass through
            masks = self.world.masks(data, self.dataset_acts(step, layer).shape[2:])
            result = value_features(
                self.own_agent(step), data.obs, masks, layer,
                ValueFeatureOptions(k=k, n_steps=10, seed=self.seed),
                lambda done, what: progress(0.2 + 0.7 * done, what),
            ).nmf  # fmt: skip
            pictures = self.pictures(step)
            plane = self.world.outside_plane
            examples = [
                examples_from_maps(result.maps[..., i], pictures, 4, outside_plane=plane)
                for i in range(k)
            ]
            return {"nmf": result, "examples": examples}

        return self.compute(f"nmf:{step}:{layer}:{k}", make)

    def nmf_frame(self, step: int, obs: np.ndarray, layer: str, k: int) -> np.ndarray:
        """One observation's NMF feature maps ``(h, w, k)`` with the fitted directions."""
        from policylens.lenses.attribution import IntegratedGradients, attribute

        fitted = self.nmf(step, layer, k)["nmf"]
        with self.lock:
            attr = attribute(self.agent(step), obs, IntegratedGradients(n_steps=10), "value", layer)
        return fitted.transform(attr.attributions)[0]

    def clusters(self, step: int, layer: str, k: int, method: str) -> dict[str, Any]:
        """Clusters of the dataset's per-position channel vectors (Trim & Grayston), scored
        against the world's ground truth where it has one."""
        from policylens.lenses.features import alignment_scores, cluster_positions

        def make(progress: Progress) -> Any:
            progress(0.1, "playing the agent for the dataset")
            acts = self.dataset_acts(step, layer)
            if acts.shape[2:] == (1, 1):
                raise ValueError(f"{layer} has no positions to cluster; pick a conv layer")
            progress(0.5, f"{method} clustering")
            found = cluster_positions(acts, k, method, seed=self.seed, layer=layer)
            truth = self.world.categories(self.dataset(step), acts.shape[2:])
            if truth is not None:
                scores = alignment_scores(found.labels, truth[0], truth[1])
                found.scores = {**scores, "categories": list(truth[1])}
            return found

        self.check_layer(step, layer)
        return {
            "clusters": self.compute(f"clusters:{step}:{layer}:{k}:{method}", make),
            "obs": self.pictures(step)[:SHOWN],
            "labels": self.cluster_labels(step, layer, k, method),
        }

    def frame_clusters(
        self, step: int, obs: np.ndarray, layer: str, k: int, method: str
    ) -> np.ndarray:
        """One observation's positions ``(h, w)`` labelled by the dataset's clusters (the nearest
        k-means centre, or a linkage's nearest clustered position)."""
        from policylens.lenses.features import assign_positions

        found = self.clusters(step, layer, k, method)["clusters"]
        return assign_positions(found, self.activations(step, obs, layer)[None])[0]

    def _labels_key(self, step: int, layer: str, k: int, method: str) -> str:
        return f"{layer}|{method}|k{k}|seed{self.seed}|step{step}"

    def _read_labels(self) -> dict[str, Any]:
        file = self.root / LABELS_FILE
        return read_json(file) if file.is_file() else {}

    def cluster_labels(self, step: int, layer: str, k: int, method: str) -> dict[str, str]:
        """The names given to clusters of this clustering, from the run folder."""
        saved = self._read_labels().get("clusters", {})
        return dict(saved.get(self._labels_key(step, layer, k, method), {}))

    def label_cluster(
        self, step: int, layer: str, k: int, method: str, cluster: int, label: str
    ) -> dict[str, str]:
        """Name a cluster (an empty label removes the name); written atomically to
        ``RUN/analysis/explorer/labels.json``."""
        from policylens.lenses.features import CLUSTER_METHODS

        self.check_layer(step, layer)
        if method not in CLUSTER_METHODS or not 2 <= k <= 12 or not 0 <= cluster < k:
            raise ValueError(f"no cluster {cluster} in a {method} clustering with k={k}")
        label = label.strip()
        if label and not LABEL.match(label):
            raise ValueError("a label is 1 to 40 characters without control characters or < >")
        with self._write_lock:
            data = self._read_labels()
            key = self._labels_key(step, layer, k, method)
            names = data.setdefault("clusters", {}).setdefault(key, {})
            if label:
                names[str(cluster)] = label
            else:
                names.pop(str(cluster), None)
            write_json(self.root / LABELS_FILE, data)
        return dict(names)

    # -- interventions -------------------------------------------------------------------------------
    def vectors(self) -> list[dict[str, Any]]:
        """Saved steering vectors (``RUN/analysis/vectors/<name>.safetensors``)."""
        from safetensors import safe_open

        out = []
        for file in sorted((self.root / VECTORS_DIR).glob("*.safetensors")):
            if file.is_symlink() or not VECTOR_NAME.match(file.stem):
                continue
            with safe_open(str(file), "pt") as f:
                meta = f.metadata() or {}
            out.append(
                {"name": file.stem, "hook": meta.get("hook", ""), "note": meta.get("note", "")}
            )
        return out

    def load_vector(self, name: str) -> tuple[torch.Tensor, str]:
        from safetensors.torch import load_file

        known = {v["name"]: v for v in self.vectors()}
        if name not in known:
            raise ValueError(f"no saved vector named {name!r}; saved: {', '.join(known) or 'none'}")
        return load_file(str(self.root / VECTORS_DIR / f"{name}.safetensors"))["vector"], known[
            name
        ]["hook"]

    def save_cheese_vector(self, step: int, name: str, state_data: dict, hook: str | None) -> dict:
        """Save this maze's cheese vector under ``name`` for later steering."""
        from safetensors.torch import save_file

        if not VECTOR_NAME.match(name):
            raise ValueError("a vector name is 1 to 40 letters, digits, _ or -")
        world = self.maze_world()
        state = world.parse_state(state_data)
        hook = hook or self.steering_hook(step)
        self.check_layer(step, hook)
        with self.lock:
            vector = cheese_vector(world, self.agent(step), state, hook).contiguous()
        note = f"cheese vector of level {state.level_seed} at step {step}"
        with self._write_lock, atomic_path(self.root / VECTORS_DIR / f"{name}.safetensors") as tmp:
            save_file({"vector": vector}, tmp, metadata={"hook": hook, "note": note})
        return {"name": name, "hook": hook, "note": note}

    def steering_hook(self, step: int) -> str:
        """Where vectors and clamps go by default: the maze study's steering layer, else the
        explorer's default layer."""
        if isinstance(self.world, MazeWorld):
            from policylens.studies.maze.misgeneralization import steering_hook

            config = self.world.config

            def make() -> str:
                with self.lock:
                    return steering_hook(self.agent(step), config)

            return self.memo(f"steeringhook:{step}", make)
        return self.default_layer(step)

    def hooks_for(self, step: int, iv: Intervention, state: Any = None) -> list:
        """The forward hooks of an intervention (use them under :attr:`lock`)."""
        from policylens.agents.sae import splice
        from policylens.lenses.interventions import add_vector, check_coefficient, clamp_channels

        hook = iv.hook or self.steering_hook(step)
        self.check_layer(step, hook)
        hooks: list = []
        coef = check_coefficient(iv.coef)
        if iv.vector == "cheese" and coef:
            if state is None:
                raise ValueError("the cheese vector is the maze's; open the maze editor to use it")
            key = json.dumps(state.to_dict(), sort_keys=True)
            vector = self.memo(  # one per maze: dragging the coefficient reuses it
                f"cheesevector:{step}:{key}:{hook}",
                lambda: cheese_vector(self.maze_world(), self.agent(step), state, hook),
            )
            hooks.append((hook, add_vector(vector, coef)))
        elif iv.vector not in ("none", "cheese") and coef:
            vector, saved_hook = self.load_vector(iv.vector)
            hooks.append((saved_hook or hook, add_vector(vector, coef)))
        if iv.clamp_channels:
            at = iv.clamp_position
            positions = [(int(at[0]), int(at[1]))] if at is not None else None
            hooks.append((hook, clamp_channels(list(iv.clamp_channels), iv.clamp_value, positions)))
        if iv.sae:
            sae, site = self.sae(step, iv.sae)
            hooks.append(splice(sae, site))
        return hooks

    def maze_world(self) -> MazeWorld:
        if not isinstance(self.world, MazeWorld):
            raise ValueError(
                f"{self.world.run_env_id} has no maze to edit; this view is the maze's"
            )
        return self.world

    def maze(self, step: int, state_data: dict, layer: str, iv: Intervention) -> dict[str, Any]:
        """Everything the maze editor and the interventions view draw at once for one maze state:
        the vector field, the action probabilities and value at the mouse and the layer's
        activations, for the agent ("base") and, with an intervention, the changed agent ("mod").
        The base is cached, so dragging a slider reruns only the change."""
        world = self.maze_world()
        state = world.parse_state(state_data)
        self.check_layer(step, layer)
        key = json.dumps(state.to_dict(), sort_keys=True)
        out = {"base": self.memo(
            f"maze:{step}:{key}:{layer}",
            lambda: self._maze_outputs(step, state, layer, None),
        )}  # fmt: skip
        if iv.active:
            out["mod"] = self._maze_outputs(step, state, layer, iv)
        return out

    def _maze_outputs(
        self, step: int, state: Any, layer: str, iv: Intervention | None
    ) -> dict[str, Any]:
        world = self.maze_world()
        obs = world.observe(state)[None]
        with self.lock:
            agent = self.agent(step)
            hooks = self.hooks_for(step, iv, state) if iv is not None else []
            field = vector_field(world, agent, state, hooks)
            with torch.no_grad(), agent.hooks(fwd_hooks=hooks):
                (logits, value), cache = agent.run_with_cache(obs, names=[layer])
        return {
            "cells": np.array(field.cells, dtype=np.int32).reshape(-1, 2),
            "field": field.probs,
            "probs": torch.softmax(logits.float(), -1)[0].numpy(),
            "value": float(value[0]),
            "acts": cache[layer][0].float().numpy(),
        }

    def maze_paths(
        self, step: int, state_data: dict, iv: Intervention, seed: int
    ) -> dict[str, Any]:
        """A sampled path (at most :data:`TRAJECTORY_STEPS`) from the maze state for the agent
        ("base") and, with an intervention, the changed agent ("mod"), on equal luck. Both play
        as one batch; the base is cached, so dragging a slider plays only the changed agent."""
        world = self.maze_world()
        state = world.parse_state(state_data)
        key = f"mazepath:{step}:{json.dumps(state.to_dict(), sort_keys=True)}:{seed}"
        with self._memo_lock:
            base = self._memo.get(key)
        with self.lock:
            hooks = self.hooks_for(step, iv, state) if iv.active else None
            conditions = ([[]] if base is None else []) + ([hooks] if hooks is not None else [])
            agent = self.agent(step)
            played = (
                world.trajectories(agent, state, conditions, seed, TRAJECTORY_STEPS)
                if conditions
                else []
            )
        out = {"base": base if base is not None else self.memo(key, lambda: played[0])}
        if hooks is not None:
            out["mod"] = played[-1]
        return out

    def intervene(self, step: int, ep: Episode, t: int, iv: Intervention) -> dict[str, Any]:
        """The changed agent on frame ``t`` of an episode, and the episode replayed from the
        same seed with the change (equal luck: the same uniforms)."""
        if not iv.active:
            raise ValueError(
                "choose an intervention: a vector with a coefficient, a clamp or an SAE"
            )
        obs = self.frame(ep, t)
        with self.lock:
            agent = self.agent(step)
            hooks = self.hooks_for(step, iv)
            with torch.no_grad():
                logits, value = agent.run_with_hooks(obs, fwd_hooks=hooks)
            played = self.world.play(agent, ep.seed, ep.level, ep.anywhere, hooks)
        return {"probs": torch.softmax(logits.float(), -1)[0].numpy(), "value": float(value[0]),
                "episode": played}  # fmt: skip

    # -- SAEs ------------------------------------------------------------------------------------------
    def saes(self) -> list[dict[str, Any]]:
        """SAE folders inside the run (``RUN/analysis/sae/<name>/``) with what they read."""
        from policylens.agents.sae import read_site

        out = []
        base = self.root / "analysis" / "sae"
        for folder in sorted(base.glob("*/")) if base.is_dir() else []:
            if folder.is_symlink() or not (
                (folder / "config.json").is_file() or (folder / "cfg.json").is_file()
            ):
                continue
            site = read_site(folder)
            metrics = site.get("metrics", {})
            out.append({"id": folder.name, "hook": site.get("hook"), "layout": site.get("layout"),
                        "checkpoint_step": site.get("checkpoint_step"),
                        "explained_variance": metrics.get("explained_variance"),
                        "dead_fraction": metrics.get("dead_fraction"), "l0": metrics.get("l0")})  # fmt: skip
        return out

    def sae(self, step: int, sae_id: str) -> tuple[Any, Any]:
        """The SAE ``sae_id`` of this run and its hook site on the agent at ``step``."""
        from policylens.agents.sae import load_sae, read_site, site_for_sae

        if sae_id not in {s["id"] for s in self.saes()}:
            raise ValueError(f"this run has no SAE {sae_id!r}; see the SAE view for its SAEs")
        folder = self.root / "analysis" / "sae" / sae_id

        def make() -> tuple[Any, Any]:
            with self.lock:
                return load_sae(folder).eval(), site_for_sae(self.agent(step), read_site(folder))

        return self.memo(f"sae:{step}:{sae_id}", make)

    def sae_data(self, step: int, sae_id: str) -> dict[str, Any]:
        """Fresh play of the agent at the SAE's hook, the latents encoded, and every latent's
        ablation effect (a background job)."""
        from policylens.studies.rook_sae.data import PlaySetting, gather_activations
        from policylens.studies.rook_sae.latents import (
            AblationOptions,
            LatentSurvey,
            latent_ablation,
            latent_activity,
            latent_entries,
        )

        sae, site = self.sae(step, sae_id)

        def make(progress: Progress) -> dict[str, Any]:
            w = self.world
            agent = self.own_agent(step)
            progress(0.05, "playing the agent")
            setting = PlaySetting(w.run_env_id, w.env_kwargs, w.policy.greedy,
                                  w.policy.mask_illegal)  # fmt: skip
            data = gather_activations(agent, site.hook, setting, 2048, seed=10_000,
                                      layout=site.layout)  # fmt: skip
            progress(0.4, "encoding")
            activity, where = latent_activity(sae, data)
            entries = latent_entries(sae, data)
            progress(0.5, "ablating each latent")
            options = AblationOptions(max_rows=256, greedy=w.policy.greedy)
            ranking = latent_ablation(agent, sae, data, None, options, entries)
            return {"data": data, "survey": LatentSurvey(activity, where, entries, ranking)}

        return self.compute(f"saedata:{step}:{sae_id}", make)

    def sae_latent(self, step: int, sae_id: str, latent: int) -> Any:
        """One latent's dashboard card (top activations, histogram, ablation effect)."""
        from policylens.studies.rook_sae.latents import AblationOptions, latent_cards

        sae, _ = self.sae(step, sae_id)
        prepared = self.sae_data(step, sae_id)
        options = AblationOptions(max_rows=256, greedy=self.world.policy.greedy)
        with self.lock:
            cards = latent_cards(self.agent(step), sae, prepared["data"], [latent],
                                 options=options, survey=prepared["survey"])  # fmt: skip
        return cards[0]

    # -- decision transformers ---------------------------------------------------------------------
    @property
    def is_dt(self) -> bool:
        """Whether the run is a decision transformer's (``policylens train dt``): the explorer
        then serves its DT view (:mod:`~policylens.explorer.dt`) and refuses the agent views."""
        return self.run.config.get("kind") == "dt"

    def dt_info(self) -> dict[str, Any]:
        """The DT run: world, actions, checkpoints, the model's shape, reports."""
        if not self.is_dt:
            raise ValueError("this run is not a decision transformer's; the DT view is for those")
        agent = self.run.config.get("agent", {})
        return {
            "run": self.run.name,
            "world": self.world.name,
            "env_id": self.world.run_env_id,
            "env_kwargs": self.world.env_kwargs,
            "render": self.world.render(),
            "actions": self.world.action_names,
            "kind": "dt",
            "arch": agent.get("arch"),
            "model": {k: agent.get(k) for k in ("context", "n_layers", "n_heads", "d_model",
                                                "d_mlp", "attn_only", "normalization_type")},
            "checkpoints": [s for s, _ in self.run.checkpoints()],
            "step": self.step(None),
            "done": self.run.done,
            "data": self.run.config.get("trainer", {}).get("data"),
            "reports": [p for p in self.files() if p.endswith(".html")],
            "summary": self.run.summary(),
            "editable": False,
            "saes": [],
            "vectors": [],
        }  # fmt: skip

    def dt_model(self, step: int) -> Any:
        """The run's decision transformer at ``step`` (shared: use it under :attr:`lock`)."""
        from policylens.train.dt import load_run_dt

        if not self.is_dt:
            raise ValueError("this run is not a decision transformer's; the DT view is for those")
        return self.memo(f"dtmodel:{step}", lambda: load_run_dt(self.run, step), keep=96)

    def dt_rollout(self, step: int, seed: int, rtg: float, greedy: bool) -> Any:
        """One episode played by the DT at target ``rtg`` from the reset of ``seed``, recorded
        step by step (:func:`~policylens.explorer.dt.play_recorded`: the episode
        ``play_dt`` plays with the same seed and target)."""
        from policylens.explorer.dt import play_recorded
        from policylens.studies.dt import check_playable

        check_playable(self.run)
        if not math.isfinite(rtg):
            raise ValueError(f"rtg must be finite, got {rtg}")
        model = self.dt_model(step)
        trainer = self.run.config["trainer"]

        def make() -> Any:
            with self.lock:
                return play_recorded(model, trainer["env_id"], rtg, seed, greedy,
                                     trainer.get("env_kwargs", {}))  # fmt: skip

        return self.memo(f"dtrollout:{step}:{seed}:{rtg!r}:{greedy}", make)

    def dt_attention(self, step: int, rollout: Any, t: int) -> np.ndarray:
        """Every head's attention pattern ``(layers, heads, 3K, 3K)`` on the window the DT acted
        on at step ``t`` of ``rollout``."""
        from policylens.explorer.dt import attention

        window = rollout.window(t)
        with self.lock:
            return attention(self.dt_model(step), window)

    def dt_patching(
        self, step: int, high: float, low: float, min_gap: float, histories: int
    ) -> Any:
        """The patching study between RTG ``high`` and ``low`` on histories of the explorer's
        store, by default the run's training store
        (:func:`~policylens.studies.dt_analysis.patching`; a background job)."""
        from policylens.studies.dt_analysis import PatchOptions, patching

        options = PatchOptions(data=self.data, histories=histories, step=step, high=high,
                               low=low, min_gap=min_gap)  # fmt: skip

        def make(progress: Progress) -> Any:
            progress(0.05, "patching each component")
            return patching(self.run, options)

        return self.compute(f"dtpatch:{step}:{high!r}:{low!r}:{min_gap!r}:{histories}", make)
