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

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from policylens.artifacts import read_json, write_json
from policylens.rollout import stats
from policylens.runs import Run
from policylens.studies.hazards.failures import FAILURE_CAUSES, INVISIBLE, failure_table

READERS = {"hook_conv": None, "hook_relu": "fc"}
"""Layers whose reader is not found by name (``res<i>.hook_relu<j>`` is read by ``res<i>.conv<j>``;
``hook_conv`` feeds both a conv and the skip connection, so no single layer reads it)."""


def reader_of(layer: str) -> str:
    """The module that alone reads ``layer``'s activation (a conv, or the fc over the map)."""
    parts = layer.split(".")
    if len(parts) == 2 and parts[0].startswith("res") and parts[1] in ("hook_relu1", "hook_relu2"):
        return f"{parts[0]}.conv{parts[1][-1]}"
    reader = READERS.get(layer)
    if reader is None:
        raise ValueError(
            f"--layer {layer} has no single reader to edit; use res<i>.hook_relu1, "
            "res<i>.hook_relu2 or hook_relu."
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


def edit_agent(agent: Any, layer: str, direction: np.ndarray) -> Any:
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


def save_edited(agent: Any, source: Run, out: Path, edit: dict[str, Any]) -> Run:
    """Write ``agent`` as a run folder ``out`` (a copy of the source's config, one checkpoint)."""
    out = Path(out)
    if (out / "config.json").exists():
        raise ValueError(f"--out {out} already holds a run; pick a new folder.")
    step, _ = source.checkpoint()
    run = Run.create(out, {**source.config, "edit": edit})
    try:
        run.save_checkpoint(agent, step)
        write_json(run.analysis_dir / "edit.json", edit)
        run.mark_done(step)
    finally:
        run.release()
    return run


def table_key(agent: Any, env_kwargs: dict[str, Any], levels: int, seed: int) -> str:
    """What a failure table depends on: the agent's weights, the world's options, levels, seed."""
    digest = hashlib.sha256()
    for name, tensor in sorted(agent.net.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    what = json.dumps({"env_kwargs": env_kwargs, "levels": levels, "seed": seed}, sort_keys=True)
    digest.update(what.encode())
    return digest.hexdigest()[:24]


def _moves(table: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Per cause: the rates, their difference (Newcombe) and the ratio of rates."""
    out = {}
    for cause in ("completion", *FAILURE_CAUSES):
        a = table["completion"] if cause == "completion" else table["failures"][cause]["of_levels"]
        b = base["completion"] if cause == "completion" else base["failures"][cause]["of_levels"]
        ratio = a["rate"] / b["rate"] if b["rate"] > 0 else float("inf") if a["rate"] else 1.0
        out[cause] = {"rate": a, "baseline": b, "diff": stats.difference(a, b), "ratio": ratio}
    return out


def edit_experiment(
    agent: Any,
    layer: str,
    directions: dict[str, np.ndarray],
    env_kwargs: dict[str, Any],
    levels: int,
    *,
    random_controls: int = 3,
    seed: int = 10_000,
    log: Any = None,
    cache: Path | None = None,
) -> dict[str, Any]:
    """Failure tables of the agent, of each feature projected out, of each hazard invisible and of
    random directions projected out, on the same ``levels`` levels and random numbers.

    ``directions``: hazard name ("saw", "enemy") -> its feature's channel direction. Each table is
    saved under ``cache`` (if given) by :func:`table_key`, so a killed experiment resumes and the
    next feature's experiment reuses the unedited, invisible and random-direction tables.
    """

    def table(name: str, a: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        file = None if cache is None else cache / f"{table_key(a, kwargs, levels, seed)}.json"
        if file is not None and file.is_file():
            if log:
                log(f"{name}: {levels} levels (saved earlier: {file.name})")
            return read_json(file)
        if log:
            log(f"{name}: {levels} levels")
        result = failure_table(a, levels, kwargs, seed=seed)
        if file is not None:
            write_json(file, result)
        return result

    base = table("unedited", agent, env_kwargs)
    rows: dict[str, Any] = {}
    for name, v in directions.items():
        rows[f"edit:{name}"] = table(f"edit {name}", edit_agent(agent, layer, v), env_kwargs)
        hidden = {"saw": "saws", "enemy": "enemies"}.get(name)
        if hidden:
            kwargs = {**env_kwargs, INVISIBLE[hidden]: True}
            rows[f"invisible:{name}"] = table(f"invisible {hidden}", agent, kwargs)
    channels = len(next(iter(directions.values())))
    for j, v in enumerate(random_directions(channels, random_controls, seed)):
        rows[f"random:{j}"] = table(
            f"random direction {j}", edit_agent(agent, layer, v), env_kwargs
        )
    return {
        "layer": layer,
        "levels": levels,
        "seed": seed,
        "env_kwargs": env_kwargs,
        "baseline": base,
        "tables": rows,
        "moves": {name: _moves(t, base) for name, t in rows.items()},
    }


TARGET_RATIO = 10.0
TARGET_RISE = 0.05
"""The issue's bar for an edit: the targeted cause rises at least 10x, or by at least 5 points
of levels (the stricter reading of "to >= 5 percentage points": the paper's buzzsaw deaths rose
from 0.37% to 12.76%; here the unedited agent already dies on saws in about 4% of levels)."""
OTHERS_RATIO = 2.0
"""...while every other cause moves less than 2x."""


def edit_verdict(exp: dict[str, Any], feature: str) -> dict[str, Any]:
    """Whether projecting out ``feature`` blinded the agent to that hazard, against the controls.

    ``effect``: the targeted cause's rise has a 95% interval above zero. ``beats_random``: it rose
    more than under every random direction. ``target_met``: the issue's bar (:data:`TARGET_RATIO`
    or :data:`TARGET_RISE`, every other cause below :data:`OTHERS_RATIO`x, beating random).
    ``share_of_invisible``: the edit's rise over the invisible-hazard control's (a point estimate),
    the fraction of complete blindness the edit achieves; ``invisible_reaches_target``: whether
    complete blindness itself clears the bar (where it does not, no edit can).
    """
    if f"edit:{feature}" not in exp["moves"]:
        raise ValueError(f"The experiment has no edit of {feature!r}; it has {list(exp['moves'])}.")
    if feature not in FAILURE_CAUSES:
        raise ValueError(f"{feature!r} is not a failure cause ({', '.join(FAILURE_CAUSES)}).")
    moves = exp["moves"][f"edit:{feature}"]
    target = moves[feature]
    others = {c: moves[c]["ratio"] for c in FAILURE_CAUSES
              if c != feature and moves[c]["baseline"]["rate"] > 0}  # fmt: skip
    randoms = [
        m[feature]["diff"]["diff"] for k, m in exp["moves"].items() if k.startswith("random:")
    ]
    invisible = exp["moves"].get(f"invisible:{feature}")
    rise = target["diff"]["diff"]
    beats_random = bool(randoms) and rise > max(randoms)
    big_enough = target["ratio"] >= TARGET_RATIO or rise >= TARGET_RISE
    calm = all(r < OTHERS_RATIO for r in others.values())
    blind = invisible[feature] if invisible else None
    rises = {c: moves[c]["diff"]["diff"] for c in FAILURE_CAUSES}
    return {
        "feature": feature,
        "rate": target["rate"],
        "baseline": target["baseline"],
        "ratio": target["ratio"],
        "diff": target["diff"],
        "effect": bool(target["diff"]["effect"] and rise > 0),
        "invisible_diff": blind["diff"] if blind else None,
        "share_of_invisible": (
            rise / blind["diff"]["diff"] if blind and blind["diff"]["diff"] > 0 else None
        ),
        "invisible_reaches_target": (
            bool(blind["ratio"] >= TARGET_RATIO or blind["diff"]["diff"] >= TARGET_RISE)
            if blind
            else None
        ),
        "random_diffs": randoms,
        "beats_random": beats_random,
        "other_ratios": others,
        "largest_rise": max(rises, key=lambda c: rises[c]),
        "rises": rises,
        "target_met": bool(big_enough and calm and beats_random),
    }


def edit_description(edit: dict[str, Any]) -> str:
    """What an edit removed, from where, in one sentence (the CLI and the report)."""
    if edit["direction_from"] == "object":
        what = f"the {edit['requested']} direction from its masks"
    else:
        what = (
            f"NMF feature {edit['feature']} (labelled {edit['label']}; alignment with "
            f"{edit['requested']}: {edit['alignment']:.2f})"
        )
    return f"Removed {what} at {edit['layer']} from the weights of {edit['reader']}."


def verdict_sentence(v: dict[str, Any]) -> str:
    """The verdict in one sentence, saying "no effect" where the interval includes zero."""
    d = v["diff"]
    head = (
        f"{v['feature']} deaths {v['baseline']['rate']:.2%} -> {v['rate']['rate']:.2%} of levels "
        f"(x{v['ratio']:.2f}, {d['diff']:+.2%} [{d['ci'][0]:+.2%}, {d['ci'][1]:+.2%}])"
    )
    if not v["effect"]:
        head += ": no effect"
    parts = [head]
    if v["invisible_diff"]:
        i = v["invisible_diff"]
        parts.append(f"hazard invisible {i['diff']:+.2%} [{i['ci'][0]:+.2%}, {i['ci'][1]:+.2%}]")
        if v.get("share_of_invisible") is not None and v["effect"]:
            parts.append(f"the edit does {v['share_of_invisible']:.0%} of what invisibility does")
    if v["random_diffs"]:
        parts.append("random directions " + ", ".join(f"{r:+.2%}" for r in v["random_diffs"]))
    top = v.get("largest_rise", v["feature"])
    if top != v["feature"]:
        parts.append(f"not specific: {top} deaths rose more ({v['rises'][top]:+.2%})")
    if v["other_ratios"]:
        worst = max(v["other_ratios"], key=lambda c: abs(np.log(max(v["other_ratios"][c], 1e-9))))
        parts.append(f"largest other move {worst} x{v['other_ratios'][worst]:.2f}")
    met = "met" if v["target_met"] else "not met"
    if v.get("invisible_reaches_target") is False:
        met += " (the invisible hazard itself does not reach it, so no edit could)"
    return (
        "; ".join(parts) + f". Target (x{TARGET_RATIO:.0f} or +5 points, others < x2, "
        f"above every random direction): {met}."
    )
