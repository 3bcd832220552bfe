"""The explorer's HTTP API: thin routes over :class:`~policylens.explorer.session.Explorer`.

JSON for small answers; tensors as :mod:`~policylens.explorer.tensors` messages. Observations go out
as the world draws them (:meth:`~policylens.worlds.base.World.drawn`). Work that is not ready
answers 202 with its job (the page shows its progress and asks again); a bad request
answers 400 with one sentence; unknown ids 404. Nothing here reads a path a client sends: run
files are looked up by their path inside the run in an index of what may be served.
"""

from __future__ import annotations

import mimetypes
from typing import Annotated, Any, Literal

import numpy as np
import torch
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from policylens.explorer.session import Explorer, Intervention
from policylens.explorer.tensors import MEDIA_TYPE, jsonable, pack
from policylens.worlds.base import Episode

router = APIRouter()

Seed = Annotated[int, Query(ge=0, le=2**31 - 1, description="Seed of the episode.")]
Step = Annotated[int | None, Query(ge=0, description="Checkpoint step (default: latest).")]
Level = Annotated[int | None, Query(ge=0, le=10**9, description="Level number (maze, hazards).")]
Frame = Annotated[int, Query(ge=0, le=100_000, description="Frame of the episode.")]
Layer = Annotated[str, Query(min_length=1, max_length=200, description="Hook name.")]


def explorer(request: Request) -> Explorer:
    return request.app.state.explorer


Ex = Annotated[Explorer, Depends(explorer)]


def tensors(arrays: dict[str, Any], meta: dict[str, Any] | None = None) -> Response:
    return Response(pack(arrays, meta), media_type=MEDIA_TYPE)


class EpisodeParams(BaseModel):
    """Which episode: a checkpoint, a seed, a level (maze, hazards) and the maze's cheese
    distribution."""

    model_config = ConfigDict(extra="forbid")
    step: int | None = Field(None, ge=0)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    level: int | None = Field(None, ge=0, le=10**9)
    anywhere: bool = False


def episode_params(
    step: Step = None, seed: Seed = 0, level: Level = None, anywhere: bool = False
) -> EpisodeParams:
    return EpisodeParams(step=step, seed=seed, level=level, anywhere=anywhere)


EpisodeQuery = Annotated[EpisodeParams, Depends(episode_params)]


def _episode(ex: Explorer, p: EpisodeParams) -> tuple[int, Episode]:
    step = ex.step(p.step)
    return step, ex.episode(step, p.seed, p.level, p.anywhere)


# -- the run -----------------------------------------------------------------------------------------
@router.get("/api/run")
def run_info(ex: Ex) -> JSONResponse:
    """The run: world, actions, checkpoints, layers, SAEs, saved vectors, reports."""
    return JSONResponse(jsonable(ex.info()))


@router.get("/api/metrics")
def metrics(ex: Ex) -> Response:
    """Training curves: metrics.csv as a (rows, columns) float32 table."""
    names, table = ex.metrics()
    return tensors({"table": table}, {"columns": names})


@router.get("/api/jobs/{job_id}")
def job(ex: Ex, job_id: Annotated[str, PathParam(max_length=64)]) -> JSONResponse:
    """A background job's status and progress."""
    found = ex.jobs.get(job_id)
    if found is None:
        raise HTTPException(404, "no such job (it may have been forgotten); ask again")
    return JSONResponse(found.to_dict())


# -- episodes and frames ---------------------------------------------------------------------------------
@router.get("/api/episode")
def episode(ex: Ex, p: EpisodeQuery) -> Response:
    """An episode: observations (as drawn), logits, values, advantages, actions, rewards,
    bookmarks."""
    _, ep = _episode(ex, p)
    adv = ex.world.advantages(ep)
    top = np.argsort(-np.abs(adv), kind="stable")[:5]
    marks = [{"t": int(t), "kind": "advantage", "label": f"A = {adv[t]:+.2f}"} for t in sorted(top)]
    marks.append({"t": ep.length, "kind": "success" if ep.success else "end", "label": ep.outcome})
    probs = torch.softmax(torch.from_numpy(ep.logits), -1).numpy()
    return tensors(
        {"obs": ex.world.drawn(ep.obs), "logits": ep.logits, "probs": probs, "values": ep.values,
         "advantages": adv, "actions": ep.actions, "rewards": ep.rewards},
        {"outcome": ep.outcome, "success": ep.success, "length": ep.length, "seed": ep.seed,
         "level": ep.level, "bookmarks": marks, "return": float(ep.rewards.sum())},
    )  # fmt: skip


@router.get("/api/frame/activations")
def frame_activations(ex: Ex, p: EpisodeQuery, t: Frame, layer: Layer) -> Response:
    """One frame's activation at a layer: (channels, h, w) or (units,)."""
    step, ep = _episode(ex, p)
    acts = ex.activations(step, ex.frame(ep, t), layer)
    return tensors({"acts": acts}, {"layer": layer})


Method = Literal["saliency", "grad_x_input", "ig", "lrp", "guided_backprop", "gradcam"]


@router.get("/api/frame/attribution")
def frame_attribution(
    ex: Ex,
    p: EpisodeQuery,
    t: Frame,
    method: Method = "saliency",
    target: Annotated[str, Query(max_length=40, pattern=r"^[\w:]+$")] = "value",
    layer: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """Saliency, gradient x input, integrated gradients, LRP, guided backprop or Grad-CAM (at a
    layer) of the value, the action taken ("action") or one action ("logit:<a>",
    "logprob:<a>") for one frame: a map over the observation, or over a layer's positions."""
    step, ep = _episode(ex, p)
    if target == "action":  # the action taken at this frame (the greedy one at the last)
        a = int(ep.actions[t]) if t < ep.length else int(np.argmax(ep.logits[-1]))
        target = f"logprob:{a}"
    amap, meta = ex.attribution(step, ex.frame(ep, t), method, target, layer or None)
    return tensors({"map": amap}, meta)


@router.get("/api/frame/nmf")
def frame_nmf(
    ex: Ex, p: EpisodeQuery, t: Frame, layer: Layer, k: Annotated[int, Query(ge=1, le=12)] = 6
) -> Response:
    """A frame's NMF features of the value attribution at a layer, with the legend: each
    feature's colour, ground-truth label and alignment, and dataset examples."""
    step, ep = _episode(ex, p)
    fitted = ex.nmf(step, layer, k)
    maps = ex.nmf_frame(step, ex.frame(ep, t), layer, k)
    nmf, examples = fitted["nmf"], fitted["examples"]
    features = nmf.to_json()["features"]
    shown = [e for ex_list in examples for e in ex_list]
    return tensors(
        {"maps": maps, "example_obs": ex.pictures(step)[[e.index for e in shown]]},
        {"features": features, "explained": nmf.explained,
         "examples": [[{"index": e.index, "position": e.position, "value": e.value} for e in f]
                      for f in examples]},
    )  # fmt: skip


# -- the dataset: channels and clusters --------------------------------------------------------------
@router.get("/api/channel")
def channel(
    ex: Ex, layer: Layer, channel: Annotated[int, Query(ge=0, le=100_000)], step: Step = None
) -> Response:
    """A channel's (or unit's) top dataset examples and its correlation with each label."""
    info = ex.channel(ex.step(step), layer, channel)
    examples = info["examples"]
    return tensors(
        {"obs": info["obs"]},
        {"examples": [{"index": e.index, "position": e.position, "value": e.value}
                      for e in examples],
         "correlations": info["correlations"], "range": info["map_range"]},
    )  # fmt: skip


ClusterMethod = Literal["kmeans", "single", "average", "ward"]
ClusterK = Annotated[int, Query(ge=2, le=12)]


@router.get("/api/clusters")
def clusters(
    ex: Ex, layer: Layer, k: ClusterK = 4, method: ClusterMethod = "kmeans", step: Step = None
) -> Response:
    """Clusters of per-position channel vectors over the dataset: labels of the first dataset
    observations, scores against the ground truth, and the names given to clusters (a frame's
    clusters: /api/frame/clusters)."""
    found = ex.clusters(ex.step(step), layer, k, method)
    c = found["clusters"]
    return tensors(
        {"labels": c.labels[: len(found["obs"])], "obs": found["obs"],
         "sizes": np.bincount(c.labels.reshape(-1), minlength=k)},
        {"scores": c.scores, "names": found["labels"], "k": k, "method": method},
    )  # fmt: skip


@router.get("/api/frame/clusters")
def frame_clusters(
    ex: Ex, p: EpisodeQuery, t: Frame, layer: Layer, k: ClusterK = 4,
    method: ClusterMethod = "kmeans",
) -> Response:  # fmt: skip
    """One frame's positions labelled by the dataset's clusters: (h, w) cluster numbers."""
    step, ep = _episode(ex, p)
    labels = ex.frame_clusters(step, ex.frame(ep, t), layer, k, method)
    return tensors({"labels": labels}, {"t": t})


class ClusterLabel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    layer: str = Field(min_length=1, max_length=200)
    k: int = Field(ge=2, le=12)
    method: ClusterMethod = "kmeans"
    cluster: int = Field(ge=0, le=11)
    label: str = Field(max_length=40)
    step: int | None = Field(None, ge=0)


@router.put("/api/clusters/label")
def label_cluster(ex: Ex, body: ClusterLabel) -> JSONResponse:
    """Name a cluster (an empty label removes the name); saved in the run folder."""
    names = ex.label_cluster(
        ex.step(body.step), body.layer, body.k, body.method, body.cluster, body.label
    )
    return JSONResponse({"names": names})


# -- the maze and interventions ------------------------------------------------------------------------
class InterventionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vector: str = Field("none", max_length=40)
    coef: float = Field(0.0, ge=-100, le=100)
    hook: str | None = Field(None, max_length=200)
    clamp_channels: list[Annotated[int, Field(ge=0, le=4096)]] = Field([], max_length=64)
    clamp_value: float = Field(0.0, ge=-1000, le=1000)
    clamp_position: tuple[Annotated[int, Field(ge=0, le=512)], Annotated[int, Field(ge=0, le=512)]] | None = None  # fmt: skip
    sae: str | None = Field(None, max_length=200)

    def intervention(self) -> Intervention:
        return Intervention(
            vector=self.vector, coef=self.coef, hook=self.hook,
            clamp_channels=tuple(self.clamp_channels), clamp_value=self.clamp_value,
            clamp_position=self.clamp_position, sae=self.sae,
        )  # fmt: skip


class MazeQuestion(BaseModel):
    model_config = ConfigDict(extra="forbid")
    state: dict[str, Any]
    """The maze as MazeState.to_dict() writes it."""
    step: int | None = Field(None, ge=0)
    intervention: InterventionBody | None = None

    def iv(self) -> Intervention:
        return (self.intervention or InterventionBody.model_validate({})).intervention()


class MazeBody(MazeQuestion):
    layer: str = Field(min_length=1, max_length=200)


class MazePathsBody(MazeQuestion):
    seed: int = Field(0, ge=0, le=2**31 - 1)


@router.get("/api/maze/level")
def maze_level(
    ex: Ex, level: Annotated[int, Query(ge=0, le=10**9)] = 0, anywhere: bool = False
) -> JSONResponse:
    """A maze level as a state the editor can change."""
    return JSONResponse(ex.maze_world().level_state(level, anywhere).to_dict())


@router.post("/api/maze")
def maze(ex: Ex, body: MazeBody) -> Response:
    """For one maze state: the vector field, action probabilities and value at the mouse and the
    layer's activations, of the agent ("base_*") and of the agent with the intervention
    ("mod_*")."""
    out = ex.maze(ex.step(body.step), body.state, body.layer, body.iv())
    arrays, meta = {}, {}
    for which, o in out.items():
        for name in ("cells", "field", "probs", "acts"):
            arrays[f"{which}_{name}"] = o[name]
        meta[which] = {"value": o["value"]}
    return tensors(arrays, meta)


@router.post("/api/maze/paths")
def maze_paths(ex: Ex, body: MazePathsBody) -> JSONResponse:
    """A sampled path from the maze state (up to 40 steps: cells, success, length) of the agent
    ("base") and of the agent with the intervention ("mod"), on equal luck (one ``seed``)."""
    return JSONResponse(ex.maze_paths(ex.step(body.step), body.state, body.iv(), body.seed))


class InterveneBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    episode: EpisodeParams | None = None
    t: int = Field(0, ge=0, le=100_000)
    intervention: InterventionBody


@router.post("/api/intervene")
def intervene(ex: Ex, body: InterveneBody) -> Response:
    """The changed agent on one frame, and the episode replayed from its seed with the change."""
    step, ep = _episode(ex, body.episode or EpisodeParams.model_validate({}))
    out = ex.intervene(step, ep, body.t, body.intervention.intervention())
    played = out["episode"]
    base = torch.softmax(torch.from_numpy(ep.logits[body.t]), -1).numpy()
    return tensors(
        {"probs": out["probs"], "base_probs": base, "actions": played.actions,
         "base_actions": ep.actions, "final_obs": ex.world.drawn(played.obs[-1:])[0]},
        {"value": out["value"], "base_value": float(ep.values[body.t]),
         "outcome": played.outcome, "length": played.length, "base_outcome": ep.outcome,
         "base_length": ep.length},
    )  # fmt: skip


class VectorBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=40)
    state: dict[str, Any]
    hook: str | None = Field(None, max_length=200)
    step: int | None = Field(None, ge=0)


@router.post("/api/vectors")
def save_vector(ex: Ex, body: VectorBody) -> JSONResponse:
    """Save this maze's cheese vector under a name, for steering later."""
    return JSONResponse(ex.save_cheese_vector(ex.step(body.step), body.name, body.state, body.hook))


# -- SAEs ------------------------------------------------------------------------------------------------
SaeId = Annotated[str, PathParam(min_length=1, max_length=200)]


@router.get("/api/sae/{sae_id}")
def sae_overview(ex: Ex, sae_id: SaeId, step: Step = None) -> Response:
    """Every latent's firing frequency, largest activation and ablation effect on fresh play,
    the dead-latent count, and the ranking by effect."""
    step = ex.step(step)
    sae, site = ex.sae(step, sae_id)
    prepared = ex.sae_data(step, sae_id)
    survey = prepared["survey"]
    activity = survey.activity
    d_sae = sae.config.d_sae
    effect = np.zeros(d_sae, dtype=np.float32)
    key = "flip_all" if ex.world.policy.greedy else "kl_all"
    for e in survey.ranking:
        effect[e["latent"]] = e[key]
    frequency = (activity > 0).float().mean(0).numpy()
    return tensors(
        {"frequency": frequency, "max": activity.max(0).values.numpy(), "effect": effect},
        {"d_sae": d_sae, "arch": sae.config.arch, "site": site.to_dict(),
         "dead": int((frequency == 0).sum()), "observations": len(prepared["data"]),
         "effect": key, "ranking": [{k: v for k, v in e.items()
                                     if k not in ("logit_change", "prob_change")}
                                    for e in survey.ranking[:30]]},
    )  # fmt: skip


@router.get("/api/sae/{sae_id}/latent/{latent}")
def sae_latent(
    ex: Ex, sae_id: SaeId, latent: Annotated[int, PathParam(ge=0, le=10**7)], step: Step = None
) -> Response:
    """One latent's card: top activations with their observations, the activation histogram's
    values, and what removing it does to the Q-values / logits and the value."""
    card = ex.sae_latent(ex.step(step), sae_id, latent)
    return tensors(
        {"top_obs": ex.world.drawn(card.top_obs),
         "top_values": np.array(card.top_values, dtype=np.float32),
         "activations": card.activations},
        {"latent": card.latent, "frequency": card.frequency, "positions": card.top_positions,
         "ablation": card.ablation},
    )  # fmt: skip


# -- decision transformers -----------------------------------------------------------------------------
Rtg = Annotated[float, Query(ge=-1000, le=1000, description="Target return-to-go.")]


def _dt_rollout(ex: Ex, step: int | None, seed: int, rtg: float, greedy: bool) -> tuple[int, Any]:
    at = ex.step(step)
    return at, ex.dt_rollout(at, seed, rtg, greedy)


@router.get("/api/dt/rollout")
def dt_rollout(
    ex: Ex, step: Step = None, seed: Seed = 0, rtg: Rtg = 1.0, greedy: bool = False
) -> Response:
    """An episode the decision transformer plays at target ``rtg`` from the reset of ``seed``
    (the one ``play_dt`` plays with that seed): per step its view (as drawn), RTG token,
    direction, action, logits and probabilities, and reward."""
    _, ro = _dt_rollout(ex, step, seed, rtg, greedy)
    e = ro.episode
    probs = torch.softmax(torch.from_numpy(ro.logits), -1).numpy()
    return tensors(
        {"obs": ex.world.drawn(ro.obs), "rtg": ro.rtg, "directions": ro.directions,
         "actions": ro.actions, "logits": ro.logits, "probs": probs, "rewards": ro.rewards},
        {"target": e.target, "seed": e.seed, "return": e.ret, "length": e.length,
         "success": e.success, "outcome": e.outcome, "greedy": ro.greedy,
         "context": int(ro.windows.mask.shape[1])},
    )  # fmt: skip


@router.get("/api/dt/attention")
def dt_attention(
    ex: Ex, t: Frame, step: Step = None, seed: Seed = 0, rtg: Rtg = 1.0, greedy: bool = False
) -> Response:
    """Every head's attention pattern ``(layers, heads, 3K, 3K)`` on the window the DT acted on
    at step ``t`` of the episode, with the window's tokens and the query the action is read at
    (the last state token)."""
    from policylens.explorer.dt import window_tokens

    at, ro = _dt_rollout(ex, step, seed, rtg, greedy)
    pattern = ex.dt_attention(at, ro, t)
    layers, heads, n, _ = pattern.shape
    return tensors(
        {"pattern": pattern},
        {"tokens": window_tokens(ro, t, list(ex.world.action_names)), "query": n - 2,
         "heads": [f"L{layer}H{h}" for layer in range(layers) for h in range(heads)], "t": t},
    )  # fmt: skip


@router.get("/api/dt/patching")
def dt_patching(
    ex: Ex,
    step: Step = None,
    high: Rtg = 1.0,
    low: Rtg = -1.0,
    min_gap: Annotated[float, Query(ge=0, le=1000)] = 0.5,
    histories: Annotated[int, Query(ge=2, le=1024)] = 64,
) -> JSONResponse:
    """The patching study between a high- and a low-RTG run of the same histories: per
    component the share of the logit gap recovered (95% interval), and the fewest components
    that recover the bar."""
    result = ex.dt_patching(ex.step(step), high, low, min_gap, histories)
    return JSONResponse(jsonable(result.to_json()))


# -- run files -----------------------------------------------------------------------------------------
@router.get("/files/{path:path}")
def run_file(ex: Ex, path: str) -> FileResponse:
    """A report (or its picture) inside the run, by its path there; only files in the index of
    servable files (no symlinks, nothing outside the run) are found."""
    found = ex.files().get(path)
    if found is None:
        raise HTTPException(404, "no such report in this run")
    media = mimetypes.guess_type(found.name)[0] or "application/octet-stream"
    return FileResponse(found, media_type=media)
