"""Model editing: blind the agent to one feature by projecting its direction out of the next layer.

Hilton et al. (2020) removed an NMF direction ``v`` (a channel direction at a middle layer) from the
weights of the layer that reads it: ``W <- W P`` on the input-channel side with
``P = I - v v^T / |v|^2``, so the next layer no longer responds to activations along ``v`` and
responds as before to everything orthogonal to it. The effect is read from the failure table on
unseen levels, against two controls: the hazard made invisible in the observation (what full
blindness costs), and projecting out random directions (what any rank-one edit costs; ``P``
depends only on the direction, so random directions are of equal norm by construction).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from policylens.agents.agent import HookedAgent
from policylens.artifacts import FolderLock, check_writable, read_json, write_json
from policylens.errors import check_known
from policylens.rollout import stats
from policylens.runs import Run
from policylens.studies.hazards.failures import (
    FAILURE_CAUSES,
    INVISIBLE,
    FailureTable,
    failure_table,
)
from policylens.studies.rl_vision.features import FeatureOptions, fit_features, object_direction
from policylens.worlds.hazards import OBJECTS, hazard_env_kwargs, studied_layer

READERS = {
    "hook_conv": None,
    "hook_relu": "fc",
    "hook_pool1": "conv2a.conv",
    "hook_pool2": "conv3a.conv",
    "hook_pool3": "fc",
}
"""Layers whose reader is not found by name (``res<i>.hook_relu<j>`` is read by ``res<i>.conv<j>``;
``hook_conv`` feeds both a conv and the skip connection, so no single layer reads it; the pixel
agent's pooled maps are each read by one conv or the fc)."""


def reader_of(layer: str) -> str:
    """The module that alone reads ``layer``'s activation (a conv, or the fc over the map)."""
    parts = layer.split(".")
    if len(parts) == 2 and parts[0].startswith("res") and parts[1] in ("hook_relu1", "hook_relu2"):
        return f"{parts[0]}.conv{parts[1][-1]}"
    reader = READERS.get(layer)
    if reader is None:
        raise ValueError(
            f"layer {layer} has no single reader to edit; use res<i>.hook_relu1, "
            "res<i>.hook_relu2 or hook_relu (symbolic agents), or hook_pool1-3 (pixel agents)."
        )
    return reader


def project_out(weight: torch.Tensor, v: np.ndarray | torch.Tensor, channels: int) -> torch.Tensor:
    """``weight`` with direction ``v`` removed from its input channels.

    ``weight`` is a conv weight ``(out, channels, kh, kw)`` or a linear weight over a
    ``(channels, h, w)`` map ``(out, channels * h * w)``; ``P = I - v v^T / |v|^2`` acts on the
    channel axis, so the layer's output along ``v`` is zero and unchanged orthogonal to it.
    """
    v = torch.as_tensor(np.asarray(v, dtype=np.float64)).reshape(-1)
    if v.shape[0] != channels or not torch.any(v != 0):
        raise ValueError(f"The direction needs {channels} entries, not all zero; got {v.shape[0]}.")
    p = torch.eye(channels, dtype=torch.float64) - torch.outer(v, v) / (v @ v)
    w = weight.detach().to(torch.float64)
    shaped = w.reshape(w.shape[0], channels, -1)  # (out, channels, rest)
    edited = torch.einsum("ocr,cd->odr", shaped, p)
    return edited.reshape(w.shape).to(weight.dtype)


def edit_agent(agent: HookedAgent, layer: str, direction: np.ndarray) -> HookedAgent:
    """A copy of ``agent`` whose reader of ``layer`` ignores ``direction``."""
    edited = copy.deepcopy(agent)
    module = edited.net.get_submodule(reader_of(layer))
    channels = len(direction)
    if isinstance(module, nn.Conv2d):
        if module.in_channels != channels:
            raise ValueError(
                f"{layer} has {module.in_channels} channels, the direction {channels}."
            )
    elif not isinstance(module, nn.Linear) or module.in_features % channels:
        raise ValueError(
            f"The reader of {layer} is neither a conv nor a linear layer over its map."
        )
    with torch.no_grad():
        module.weight.copy_(project_out(module.weight, direction, channels))
    return edited


def random_directions(channels: int, n: int, seed: int) -> np.ndarray:
    """``n`` random unit directions ``(n, channels)`` (Gaussian, normalised), seeded."""
    d = np.random.default_rng(seed).standard_normal((n, channels))
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def save_edited(agent: HookedAgent, source: Run, out: Path, edit: EditRecord) -> Run:
    """Write ``agent`` as a run folder ``out`` (a copy of the source's config, one checkpoint)."""
    step, _ = source.checkpoint()
    run = Run.create(out, {**source.config, "edit": edit.to_json()})
    try:
        run.save_checkpoint(agent, step)
        write_json(run.analysis_dir / "edit.json", edit.to_json())
        run.mark_done(step)
    finally:
        run.release()
    return run


def table_key(agent: HookedAgent, env_kwargs: dict[str, Any], levels: int, seed: int) -> str:
    """What a failure table depends on: the agent's weights, the world's options, levels, seed."""
    digest = hashlib.sha256()
    for name, tensor in sorted(agent.net.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    what = json.dumps({"env_kwargs": env_kwargs, "levels": levels, "seed": seed}, sort_keys=True)
    digest.update(what.encode())
    return digest.hexdigest()[:24]


def rate_moves(table: FailureTable, base: FailureTable) -> dict[str, dict[str, Any]]:
    """Per cause (and completion): the rates, their difference (Newcombe) and the ratio of rates."""
    out = {}
    for cause in ("completion", *FAILURE_CAUSES):
        a, b = table.of_levels(cause), base.of_levels(cause)
        ratio = a["rate"] / b["rate"] if b["rate"] > 0 else float("inf") if a["rate"] else 1.0
        out[cause] = {"rate": a, "baseline": b, "diff": stats.difference(a, b), "ratio": ratio}
    return out


@dataclass(frozen=True)
class EditRecord:
    """What an edit removed, from where: saved with the edited run (``analysis/edit.json``)."""

    source: str
    """The run whose agent was edited."""
    layer: str
    reader: str
    """The module whose input channels lost the direction."""
    direction_from: str
    """"nmf" (a feature's direction) or "object" (the object's mean activation minus the rest)."""
    feature: int | None
    """The NMF feature removed (None for an object direction)."""
    requested: str
    """The object (or feature index) asked for."""
    label: str
    """The removed feature's label (the object, for an object direction)."""
    alignment: float
    """The feature's correlation with the requested object's mask (NaN for an object direction)."""
    nmf_seed: int
    direction: tuple[float, ...] = ()
    """The channel direction removed (empty when read back from an experiment, which leaves it
    out)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source, "layer": self.layer, "reader": self.reader,
            "direction_from": self.direction_from, "feature": self.feature,
            "requested": self.requested, "label": self.label, "alignment": self.alignment,
            "direction": list(self.direction), "nmf_seed": self.nmf_seed,
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EditRecord:
        return cls(**{**data, "direction": tuple(data.get("direction", ()))})


TARGET_RATIO = 10.0
TARGET_RISE = 0.05
"""The issue's bar for an edit: the targeted cause rises at least 10x, or by at least 5 points
of levels (the stricter reading of "to >= 5 percentage points": the paper's buzzsaw deaths rose
from 0.37% to 12.76%; here the unedited agent already dies on saws in about 4% of levels)."""
OTHERS_RATIO = 2.0
"""...while every other cause moves less than 2x."""


@dataclass(frozen=True)
class EditVerdict:
    """Whether projecting out a feature blinded the agent to its hazard, against the controls
    (:func:`edit_verdict`)."""

    feature: str
    rate: dict[str, Any]
    """The targeted cause's share of levels after the edit (Wilson interval)."""
    baseline: dict[str, Any]
    """...and before it."""
    ratio: float
    diff: dict[str, Any]
    """The rise, with its Newcombe interval."""
    effect: bool
    """The rise's 95% interval lies above zero."""
    invisible_diff: dict[str, Any] | None
    """The rise with the hazard invisible (no such control: None)."""
    share_of_invisible: float | None
    """The edit's rise over the invisible control's (a point estimate), where that one rose."""
    invisible_reaches_target: bool | None
    """Whether complete blindness itself clears the bar (where it does not, no edit can)."""
    random_diffs: list[float]
    beats_random: bool
    """The rise exceeds that of every random direction."""
    other_ratios: dict[str, float]
    """Rate ratios of the other causes the agent died of before the edit."""
    largest_rise: str
    rises: dict[str, float]
    target_met: bool
    """:data:`TARGET_RATIO` or :data:`TARGET_RISE`, every other cause below
    :data:`OTHERS_RATIO`, and beating every random direction."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ExperimentOptions:
    """The levels an edit experiment plays, its controls, and where it keeps its tables."""

    levels: int
    """Unseen levels each agent plays (the same levels and random numbers for all)."""
    random_controls: int = 3
    """Random directions projected out, as controls."""
    seed: int = 10_000
    cache: Path | None = None
    """Folder of failure tables by :func:`table_key`: a killed experiment resumes and the next
    feature's experiment reuses the unedited, invisible and random-direction tables."""

    def __post_init__(self) -> None:
        if self.levels < 1 or self.random_controls < 0:
            raise ValueError(
                f"levels must be >= 1 and random_controls >= 0, got {self.levels}, "
                f"{self.random_controls}."
            )


@dataclass(frozen=True)
class EditExperiment:
    """Failure tables of the unedited agent and of each variant on the same levels."""

    layer: str
    levels: int
    seed: int
    env_kwargs: dict[str, Any]
    baseline: FailureTable
    tables: dict[str, FailureTable]
    """``edit:<name>`` (feature projected out), ``invisible:<name>`` (the hazard hidden),
    ``random:<j>`` (a random direction projected out)."""
    verdict: EditVerdict | None = None
    """The edit judged against the controls, where it targets a failure cause."""
    edit: EditRecord | None = None

    @cached_property
    def moves(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Per variant: :func:`rate_moves` against the unedited agent."""
        return {name: rate_moves(t, self.baseline) for name, t in self.tables.items()}

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "layer": self.layer,
            "levels": self.levels,
            "seed": self.seed,
            "env_kwargs": self.env_kwargs,
            "baseline": self.baseline.to_json(),
            "tables": {name: t.to_json() for name, t in self.tables.items()},
            "moves": self.moves,
        }
        if self.verdict is not None:
            data["verdict"] = self.verdict.to_json()
        if self.edit is not None:
            data["edit"] = {k: v for k, v in self.edit.to_json().items() if k != "direction"}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EditExperiment:
        """An experiment as saved, its verdict judged again from the tables by today's rule."""
        exp = cls(
            layer=data["layer"],
            levels=int(data["levels"]),
            seed=int(data["seed"]),
            env_kwargs=data["env_kwargs"],
            baseline=FailureTable.from_json(data["baseline"]),
            tables={name: FailureTable.from_json(t) for name, t in data["tables"].items()},
            edit=EditRecord.from_json(data["edit"]) if "edit" in data else None,
        )
        if "verdict" not in data:
            return exp
        return dataclasses.replace(exp, verdict=edit_verdict(exp, data["verdict"]["feature"]))


def edit_experiment(
    agent: HookedAgent,
    layer: str,
    directions: dict[str, np.ndarray],
    env_kwargs: dict[str, Any],
    options: ExperimentOptions,
    log: Callable[[str], None] | None = None,
) -> EditExperiment:
    """Failure tables of the agent, of each feature projected out, of each hazard invisible and of
    random directions projected out, on the same levels and random numbers.

    ``directions``: hazard name ("saw", "enemy") -> its feature's channel direction.
    """
    levels, seed, cache = options.levels, options.seed, options.cache

    def table(name: str, a: HookedAgent, kwargs: dict[str, Any]) -> FailureTable:
        file = None if cache is None else cache / f"{table_key(a, kwargs, levels, seed)}.json"
        if file is not None and file.is_file():
            if log:
                log(f"{name}: {levels} levels (saved earlier: {file.name})")
            return FailureTable.from_json(read_json(file))
        if log:
            log(f"{name}: {levels} levels")
        result = failure_table(a, levels, kwargs, seed=seed)
        if file is not None:
            write_json(file, result.to_json())
        return result

    base = table("unedited", agent, env_kwargs)
    rows: dict[str, FailureTable] = {}
    for name, v in directions.items():
        rows[f"edit:{name}"] = table(f"edit {name}", edit_agent(agent, layer, v), env_kwargs)
        hidden = {"saw": "saws", "enemy": "enemies"}.get(name)
        if hidden:
            kwargs = {**env_kwargs, INVISIBLE[hidden]: True}
            rows[f"invisible:{name}"] = table(f"invisible {hidden}", agent, kwargs)
    channels = len(next(iter(directions.values())))
    for j, v in enumerate(random_directions(channels, options.random_controls, seed)):
        rows[f"random:{j}"] = table(
            f"random direction {j}", edit_agent(agent, layer, v), env_kwargs
        )
    return EditExperiment(layer, levels, seed, dict(env_kwargs), base, rows)


def edit_verdict(exp: EditExperiment, feature: str) -> EditVerdict:
    """Whether projecting out ``feature`` blinded the agent to that hazard, against the controls.

    ``effect``: the targeted cause's rise has a 95% interval above zero. ``beats_random``: it rose
    more than under every random direction. ``target_met``: the issue's bar (:data:`TARGET_RATIO`
    or :data:`TARGET_RISE`, every other cause below :data:`OTHERS_RATIO`x, beating random).
    ``share_of_invisible``: the edit's rise over the invisible-hazard control's, the fraction of
    complete blindness the edit achieves.
    """
    if f"edit:{feature}" not in exp.moves:
        raise ValueError(f"The experiment has no edit of {feature!r}; it has {list(exp.moves)}.")
    if feature not in FAILURE_CAUSES:
        raise ValueError(f"{feature!r} is not a failure cause ({', '.join(FAILURE_CAUSES)}).")
    moves = exp.moves[f"edit:{feature}"]
    target = moves[feature]
    others = {c: moves[c]["ratio"] for c in FAILURE_CAUSES
              if c != feature and moves[c]["baseline"]["rate"] > 0}  # fmt: skip
    randoms = [m[feature]["diff"]["diff"] for k, m in exp.moves.items() if k.startswith("random:")]
    invisible = exp.moves.get(f"invisible:{feature}")
    rise = target["diff"]["diff"]
    beats_random = bool(randoms) and rise > max(randoms)
    big_enough = target["ratio"] >= TARGET_RATIO or rise >= TARGET_RISE
    calm = all(r < OTHERS_RATIO for r in others.values())
    blind = invisible[feature] if invisible else None
    rises = {c: moves[c]["diff"]["diff"] for c in FAILURE_CAUSES}
    return EditVerdict(
        feature=feature,
        rate=target["rate"],
        baseline=target["baseline"],
        ratio=target["ratio"],
        diff=target["diff"],
        effect=bool(target["diff"]["effect"] and rise > 0),
        invisible_diff=blind["diff"] if blind else None,
        share_of_invisible=(
            rise / blind["diff"]["diff"] if blind and blind["diff"]["diff"] > 0 else None
        ),
        invisible_reaches_target=(
            bool(blind["ratio"] >= TARGET_RATIO or blind["diff"]["diff"] >= TARGET_RISE)
            if blind
            else None
        ),
        random_diffs=randoms,
        beats_random=beats_random,
        other_ratios=others,
        largest_rise=max(rises, key=lambda c: rises[c]),
        rises=rises,
        target_met=bool(big_enough and calm and beats_random),
    )


DIRECTIONS = ("nmf", "object")
"""Where an edit's direction comes from: the best-aligned NMF feature (the paper), or the
object's mean activation minus the rest, from the masks (the best one direction can do)."""


@dataclass(frozen=True)
class EditOptions:
    """Which direction :func:`run_edit` removes, where the edited agent goes, and how it is
    measured."""

    feature: str
    """The object whose best-aligned feature is removed (saw, enemy, ...), or a feature index."""
    out: Path
    """Run folder to write the edited agent to (a new one)."""
    levels: int = 0
    """Unseen levels of the failure tables (0: save the edited agent only)."""
    random_controls: int = 3
    direction: str = "nmf"
    """One of :data:`DIRECTIONS`."""
    features: FeatureOptions = FeatureOptions()
    """The frames and NMF the direction is found with; the tables' levels are seeded
    ``10_000 + features.seed``."""

    def __post_init__(self) -> None:
        check_known([self.direction], DIRECTIONS, "direction")
        names = ", ".join(OBJECTS)
        if not self.feature.isdigit() and self.feature not in OBJECTS:
            raise ValueError(f"feature must be one of {names} or an index, not {self.feature!r}.")
        if self.direction == "object" and self.feature not in OBJECTS:
            raise ValueError(f"direction object needs feature one of {names}.")
        if self.levels < 0 or self.random_controls < 0:
            raise ValueError(
                f"levels and random_controls must be >= 0, got {self.levels}, "
                f"{self.random_controls}."
            )


@dataclass(frozen=True)
class EditResult:
    """The edit made, the edited run, and (with levels) its experiment."""

    edit: EditRecord
    out: str
    experiment: EditExperiment | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"edit": self.edit.to_json(), "out": self.out}
        if self.experiment is not None:
            data["experiment"] = self.experiment.to_json()
        return data


def run_edit(
    run: Run, options: EditOptions, log: Callable[[str], None] | None = None
) -> EditResult:
    """Project one direction out of the reader of the layer and save the edited agent as a new
    run; with ``options.levels``, compare failure tables with the invisible-hazard and random
    controls (saved as the edited run's ``analysis/edit_experiment.json``)."""
    env_kwargs = hazard_env_kwargs(run)
    out = check_writable(options.out, "out run folder")
    if (out / "config.json").exists():
        raise ValueError(f"out {out} already holds a run; pick a new folder.")
    # the tables are kept in the run's analysis folder: held (or refused) before anything is written
    held = FolderLock(run.analysis_dir, "analysis folder") if options.levels else None
    with held or contextlib.nullcontext():
        fo = options.features
        agent = run.load_agent(fo.step)
        layer = fo.layer or studied_layer(agent)
        reader = reader_of(layer)  # a layer without a single reader fails before any work
        hf = fit_features(agent, env_kwargs, dataclasses.replace(fo, layer=layer))
        index = hf.feature_for(options.feature)
        label = hf.nmf.labels[index]
        if options.direction == "object":
            v = object_direction(agent, hf.frames, layer, options.feature)
            label = {"label": options.feature, "correlation": float("nan"), "correlations": {}}
        else:
            v = hf.direction(index)
        record = EditRecord(
            source=str(run.path), layer=layer, reader=reader, direction_from=options.direction,
            feature=index if options.direction == "nmf" else None, requested=options.feature,
            label=label["label"],
            alignment=float(label["correlations"].get(options.feature, label["correlation"])),
            nmf_seed=fo.seed, direction=tuple(float(x) for x in v),
        )  # fmt: skip
        edited = save_edited(edit_agent(agent, layer, v), run, out, record)
        if not options.levels:
            return EditResult(record, str(edited.path))
        name = label["label"] if options.feature.isdigit() else options.feature
        tables = ExperimentOptions(
            options.levels, options.random_controls, seed=10_000 + fo.seed,
            cache=run.analysis_dir / "failure_tables",
        )  # fmt: skip
        exp = edit_experiment(agent, layer, {name: v}, env_kwargs, tables, log)
        verdict = edit_verdict(exp, name) if name in FAILURE_CAUSES else None
        exp = dataclasses.replace(exp, verdict=verdict, edit=record)
        write_json(edited.analysis_dir / "edit_experiment.json", exp.to_json())
        return EditResult(record, str(edited.path), exp)
