"""Linear probes: is a ground-truth concept linearly decodable from a layer's activations?

A probe is fit on activations from a rollout store (:mod:`policylens.rollout`) against one of the
labels the world published (maze: ``cheese_pos``, ``mouse_pos``, ``move_to_cheese``,
``dist_to_corner``, ``at_decision_square``, ...; chess: ``in_check``, ``num_attacked``, ...).

* Discrete labels (bools, small integer sets): multinomial logistic regression (scikit-learn,
  L2, class-balanced) on standardised features; score = balanced accuracy on held-out levels
  (a constant guess scores 1 / number of classes).
* Continuous labels: ridge regression on standardised features (closed form: one symmetric
  eigendecomposition serves the whole grid of penalties); score = R^2 on held-out levels (the
  training mean scores about 0, or below where held-out levels differ).
* Positions (integer ``(row, col)`` labels such as ``cheese_pos``): on a conv layer, one shared
  logistic probe reads "is it at this cell?" from the channel vector at every position (a 1x1
  convolution), and the score is how often its highest cell is the right one; on a flat layer,
  a least-squares one-hot readout over cells (a 81-way logistic regression on 1,296 features
  takes minutes per probe on 2 cores; the closed-form readout takes under a second), scored by
  top-1 accuracy. The baseline is the most frequent cell.

Regularisation (logistic C, ridge alpha) is chosen on a validation split of the *training*
levels from a small log grid, then the probe is refit on all training levels. The train/test
split is by level seed (by episode where the world has no levels): consecutive steps of one
episode are nearly identical, so a split by step leaks the answer into training.

Controls, reported beside every score:

* ``random_init``: the same probe on a randomly initialised network of the same architecture
  (a different seed), run on the same observations. A concept that is *in the input* -- the
  cheese's cell is a channel of the maze observation -- is decodable from a random CNN too; only
  the gap above this control says the trained network computed something.
* ``shuffled``: the same probe with labels shuffled across rows: the chance level the probe's
  capacity reaches on this much data.
* ``raw_input`` (asked for by name): the same kind of probe on the observation itself (the
  agent's preprocessed input; channels-first grids keep their cells, so positions get the spatial
  probe): what a linear read-out gets without any network.

Penalties (:attr:`ProbeOptions.penalties`): ``l2`` (the default above) and ``l1``: L1 logistic
regression (liblinear; one-vs-rest for more than two classes) and the lasso (coordinate descent,
penalty chosen from :data:`LASSO_GRID` times the label's standard deviation) for regression and
the flat one-hot position read-out. A concept an L1 probe reads as well as an L2 one is carried by
a few units.

:func:`probe_checkpoints` repeats the probes for every checkpoint of a run on one fixed set of
observations (collected with the final agent), so the curves show how the representation
changes, not how the data distribution does.

Why one file of this length: per-layer probes and probes over checkpoints share the data
preparation, the level-grouped splits and the regularisation search, which keep their
controls comparable.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from policylens import artifacts
from policylens.rollout.store import Store, open_store, unknown_message

if TYPE_CHECKING:
    from policylens.agents.agent import HookedAgent
    from policylens.runs import Run

NOT_CONCEPTS = {"level_seed", "steps", "success"}
"""Bookkeeping labels left out of the default concepts."""
CONTROLS = ("random_init", "shuffled", "raw_input")
DEFAULT_CONTROLS = ("random_init", "shuffled")
"""Controls reported unless others are asked for (``raw_input`` is asked for by name)."""
PENALTIES = ("l2", "l1")
MAX_CLASSES = 20
"""Integer labels with at most this many values are classified; more are regressed."""
C_GRID = (0.01, 0.1, 1.0)
ALPHA_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)
LASSO_GRID = (0.3, 0.1, 0.03, 0.01, 0.003)
"""Lasso penalties (strongest first), times the label's standard deviation."""
MAX_CELL_SAMPLES = 200_000
"""Training (row, cell) pairs for a spatial probe; negatives are subsampled beyond this."""


# ---------------------------------------------------------------------------------- targets
@dataclass
class Target:
    """A label resolved for probing: its kind and values on the sampled rows."""

    label: str
    kind: str
    """"classification", "regression" or "position"."""
    y: np.ndarray
    """(n,) class ids / values, or (n, 2) cells for positions."""
    classes: list = field(default_factory=list)


_INDEXED = re.compile(r"^(?P<key>[^\[\]]+)\[(?P<i>\d+)\]$")


def resolve_target(store: Store, label: str, rows: np.ndarray, kind: str | None = None) -> Target:
    """Read ``label`` (``"key"`` or ``"key[i]"`` for one component) on ``rows`` and classify it."""
    m = _INDEXED.match(label)
    key, index = (m["key"], int(m["i"])) if m else (label, None)
    if key not in store.labels:
        skipped = store.meta.get("skipped_labels", [])
        why = f" ({key!r} is not numeric, so it was not stored)" if key in skipped else ""
        raise ValueError(
            unknown_message(
                f"label{why} for world {store.meta.get('env_id', '?')}", key, store.labels
            )
        )
    arr = store[f"labels/{key}"]
    y = arr[rows]
    if index is not None:
        if y.ndim != 2 or index >= y.shape[1]:
            raise ValueError(
                f"Label {key!r} has per-step shape {arr.row_shape}; {label!r} needs a vector label "
                f"and an index below {arr.row_shape[0] if arr.row_shape else 0}."
            )
        y = y[:, index]
    elif y.ndim == 2 and y.shape[1] == 2 and np.issubdtype(y.dtype, np.integer):
        kind = kind or "position"
    elif y.ndim != 1:
        raise ValueError(
            f"Label {key!r} has per-step shape {arr.row_shape}; probe one component with "
            f"'{key}[i]' (e.g. '{key}[0]')."
        )
    if kind is None:
        if y.dtype == bool:
            kind = "classification"
        elif np.issubdtype(y.dtype, np.integer):
            kind = "classification" if len(np.unique(y)) <= MAX_CLASSES else "regression"
        else:
            kind = "regression"
    if kind not in ("classification", "regression", "position"):
        raise ValueError(
            f"Unknown probe kind {kind!r}; use classification, regression or position."
        )
    if kind == "position":
        if y.ndim != 2:
            raise ValueError(f"Label {label!r} is not a (row, col) position; probe it as {kind}.")
        values = np.unique(y[(y >= 0).all(axis=1)], axis=0)
        if len(values) < 2:
            shown = values[0].tolist() if len(values) else "none valid"
            raise ValueError(
                f"Label {label!r} has a single class ({shown}) in this data; collect more episodes "
                "or choose another label."
            )
        return Target(label, kind, y.astype(np.int64))
    if kind == "classification":
        classes = np.unique(y)
        if len(classes) < 2:
            shown = classes[0].item() if len(classes) else "no rows"
            if isinstance(shown, bool):
                shown = int(shown)
            raise ValueError(
                f"Label {label!r} has a single class (all {shown}) in this data; collect more "
                "episodes or choose another label."
            )
        return Target(label, kind, np.searchsorted(classes, y), classes.tolist())
    if np.ptp(y.astype(np.float64)) == 0:
        raise ValueError(
            f"Label {label!r} is constant ({y[0].item()}) in this data; collect more episodes or "
            "choose another label."
        )
    return Target(label, kind, y.astype(np.float64))


def default_concepts(store: Store, preferred: Sequence[str] = ()) -> list[str]:
    """The ``preferred`` concepts (a world's) that the store has, else every scalar numeric
    label."""
    found = [c for c in preferred if c in store.labels]
    if found:
        return found
    return [
        k
        for k in store.labels
        if k not in NOT_CONCEPTS and len(store[f"labels/{k}"].row_shape) == 0
    ]


def default_hooks(names: Sequence[str]) -> list[str]:
    """A few layers from input to output: the first hook, block outputs, and the logits."""
    names = list(names)
    picked = [
        n
        for i, n in enumerate(names)
        if i == 0 or n == "hook_logits" or n.endswith(("hook_out", "hook_act"))
    ]
    return list(dict.fromkeys(picked))


def group_split(
    groups: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (train, test) masks that never put one group (level) on both sides."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}.")
    unique = np.unique(groups)
    if len(unique) < 2:
        raise ValueError(
            f"The probe data holds {len(unique)} level(s); a split by level needs at least 2; "
            "collect more episodes."
        )
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(unique)
    n_test = min(len(unique) - 1, max(1, round(test_fraction * len(unique))))
    test = np.isin(groups, shuffled[:n_test])
    return ~test, test


# ---------------------------------------------------------------------------------- fitting
def _standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std[std < 1e-6] = 1.0
    return [((x - mean) / std).astype(np.float32) for x in (train, *others)]


def _logistic(
    C: float, seed: int, warm: bool = False, penalty: str = "l2", n_classes: int = 2
) -> Any:
    from sklearn.linear_model import LogisticRegression

    if penalty == "l1":  # liblinear: fast for L1; one-vs-rest beyond two classes
        model = LogisticRegression(C=C, l1_ratio=1.0, solver="liblinear", class_weight="balanced",
                                   max_iter=300, tol=1e-3, random_state=seed)  # fmt: skip
        if n_classes > 2:
            from sklearn.multiclass import OneVsRestClassifier

            return OneVsRestClassifier(model)
        return model
    return LogisticRegression(
        C=C, class_weight="balanced", max_iter=300, tol=1e-3, random_state=seed, warm_start=warm
    )


def _fit_quiet(model: Any, X: np.ndarray, y: np.ndarray) -> bool:
    """Fit, returning False (instead of warning) when the solver hit its iteration cap."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(X, y)
    return not any(issubclass(w.category, ConvergenceWarning) for w in caught)


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    classes = np.unique(y)
    return float(np.mean([np.mean(pred[y == c] == c) for c in classes]))


def _inner_split(groups: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, validation) masks over training rows, by group; all-fit when too few groups."""
    if len(np.unique(groups)) < 4:
        ones = np.ones(len(groups), dtype=bool)
        return ones, ones
    return group_split(groups, 0.25, seed + 7919)


def _choose_C(
    X: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int, penalty: str = "l2"
) -> float:
    fit, val = _inner_split(groups, seed)
    if len(np.unique(y[fit])) < 2:
        return C_GRID[len(C_GRID) // 2]
    Xf, Xv = _standardise(X[fit], X[val])
    n_classes = len(np.unique(y))
    model = _logistic(C_GRID[0], seed, warm=True, penalty=penalty, n_classes=n_classes)
    best, best_score = C_GRID[0], -np.inf
    for C in C_GRID:  # strongest regularisation first; each L2 fit warm-starts from the last
        if penalty == "l2":
            model.set_params(C=C)
        else:
            model = _logistic(C, seed, penalty=penalty, n_classes=n_classes)
        _fit_quiet(model, Xf, y[fit])
        score = _balanced_accuracy(y[val], model.predict(Xv))
        if score > best_score + 1e-4:
            best, best_score = C, score
    return best


def _ridge_path(
    X: np.ndarray, Y: np.ndarray, Xv: np.ndarray, alphas: Sequence[float]
) -> list[np.ndarray]:
    """Validation predictions of ridge (intercept via centring) for every alpha, from one
    symmetric eigendecomposition (of X^T X, or of X X^T when there are fewer rows than features).
    """
    xm = X.mean(axis=0)
    X = X.astype(np.float64) - xm
    Xv = Xv.astype(np.float64) - xm
    Y = Y.reshape(len(Y), -1).astype(np.float64)  # (n, outputs)
    ym = Y.mean(axis=0)
    Yc = Y - ym
    if X.shape[1] <= X.shape[0]:
        lam, V = np.linalg.eigh(X.T @ X)  # (d,), (d, d)
        left, right = Xv @ V, V.T @ (X.T @ Yc)  # (n_val, d), (d, outputs)
    else:
        lam, U = np.linalg.eigh(X @ X.T)  # (n,), (n, n)
        left, right = Xv @ (X.T @ U), U.T @ Yc  # (n_val, n), (n, outputs)
    lam = np.clip(lam, 0, None)
    return [left @ (right / (lam + a)[:, None]) + ym for a in alphas]


def _lasso_path(
    X: np.ndarray, Y: np.ndarray, Xv: np.ndarray, alphas: Sequence[float]
) -> list[np.ndarray]:
    """Validation predictions of the lasso for every alpha (strongest first, warm-started)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import Lasso

    model = Lasso(alpha=alphas[0], max_iter=500, tol=1e-3, warm_start=True)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for a in alphas:
            model.set_params(alpha=a)
            model.fit(X, Y)
            out.append(model.predict(Xv).reshape(len(Xv), -1))
    return out


def _lasso_scale(Y: np.ndarray) -> float:
    std = float(np.mean(Y.reshape(len(Y), -1).std(axis=0)))
    return std if std > 0 else 1.0


def _choose_alpha(
    X: np.ndarray,
    Y: np.ndarray,
    groups: np.ndarray,
    seed: int,
    score: Callable[[np.ndarray, np.ndarray], float],
    penalty: str = "l2",
) -> float:
    fit, val = _inner_split(groups, seed)
    Xf, Xv = _standardise(X[fit], X[val])
    if penalty == "l1":
        grid = [g * _lasso_scale(Y[fit]) for g in LASSO_GRID]
        preds = _lasso_path(Xf, Y[fit], Xv, grid)
    else:
        grid = list(ALPHA_GRID)
        preds = _ridge_path(Xf, Y[fit], Xv, grid)
    scores = [score(Y[val], p) for p in preds]
    return float(grid[int(np.argmax(scores))])


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    y, pred = y.reshape(len(y), -1), pred.reshape(len(pred), -1)
    ss = ((y - y.mean(axis=0)) ** 2).sum()
    return float(1 - ((y - pred) ** 2).sum() / ss) if ss > 0 else 0.0


def _ridge_fit_predict(
    Xtr: np.ndarray, Ytr: np.ndarray, Xte: np.ndarray, alpha: float, penalty: str = "l2"
) -> np.ndarray:
    """Ridge regression (intercept unpenalised) fit on the training rows, predicted on ``Xte``
    (the lasso with ``penalty="l1"``)."""
    path = _lasso_path if penalty == "l1" else _ridge_path
    pred = path(Xtr, Ytr, Xte, [alpha])[0]
    return pred if np.ndim(Ytr) > 1 else pred[:, 0]


def _cells(pos: np.ndarray, grid: int, h: int, w: int) -> np.ndarray:
    """Flat activation-cell index of world cells ``pos`` (n, 2); -1 where there is no position."""
    valid = (pos >= 0).all(axis=1) & (pos < grid).all(axis=1)
    r = np.clip(pos[:, 0], 0, grid - 1) * h // grid
    c = np.clip(pos[:, 1], 0, grid - 1) * w // grid
    return np.where(valid, r * w + c, -1)


def fit_probe(
    features: np.ndarray,
    target: Target,
    train: np.ndarray,
    test: np.ndarray,
    groups: np.ndarray,
    seed: int = 0,
    grid_size: int | None = None,
    params: dict[str, float] | None = None,
    penalty: str = "l2",
) -> dict[str, Any]:
    """Fit one probe on ``features[train]`` and score it on ``features[test]``.

    ``features`` is ``(n, d)`` or, for a conv layer, ``(n, channels, h, w)`` (spatial probes for
    positions). ``params`` fixes the regularisation ({"C": ..} or {"alpha": ..}) instead of
    choosing it. ``penalty`` is ``"l2"`` or ``"l1"``. Returns ``score``, ``metric``,
    ``baseline``, ``params`` and details.
    """
    if penalty not in PENALTIES:
        raise ValueError(unknown_message("penalty", penalty, PENALTIES))
    y = target.y
    if target.kind == "position":
        return _fit_position(
            features, target, train, test, groups, seed, grid_size, params, penalty
        )
    X = features.reshape(len(features), -1)
    if target.kind == "classification":
        ytr = y[train]
        if len(np.unique(ytr)) < 2:
            raise ValueError(
                f"Label {target.label!r} has a single class in the training levels; collect more "
                "episodes or choose another label."
            )
        C = (params or {}).get("C") or _choose_C(X[train], ytr, groups[train], seed, penalty)
        Xtr, Xte = _standardise(X[train], X[test])
        model = _logistic(C, seed, penalty=penalty, n_classes=len(np.unique(y)))
        converged = _fit_quiet(model, Xtr, ytr)
        pred = model.predict(Xte)
        n_classes = len(np.unique(y[test]))
        return {
            "metric": "balanced_accuracy",
            "score": _balanced_accuracy(y[test], pred),
            "baseline": 1.0 / n_classes,
            "accuracy": float(np.mean(pred == y[test])),
            "majority": float(np.mean(y[test] == np.bincount(ytr).argmax())),
            "classes": target.classes,
            "params": {"C": C},
            "converged": converged,
        }
    alpha = (params or {}).get("alpha") or _choose_alpha(
        X[train], y[train], groups[train], seed, _r2, penalty
    )
    Xtr, Xte = _standardise(X[train], X[test])
    pred = _ridge_fit_predict(Xtr, y[train], Xte, alpha, penalty)
    baseline = _r2(y[test], np.full(test.sum(), y[train].mean()))
    return {
        "metric": "r2",
        "score": _r2(y[test], pred),
        "baseline": baseline,
        "rmse": float(np.sqrt(np.mean((pred - y[test]) ** 2))),
        "params": {"alpha": alpha},
    }


def _fit_position(
    features: np.ndarray,
    target: Target,
    train: np.ndarray,
    test: np.ndarray,
    groups: np.ndarray,
    seed: int,
    grid_size: int | None,
    params: dict[str, float] | None,
    penalty: str = "l2",
) -> dict[str, Any]:
    pos = target.y
    valid = (pos >= 0).all(axis=1)
    train, test = train & valid, test & valid
    if grid_size is None:
        grid_size = int(pos[valid].max()) + 1
    if features.ndim == 4:  # (n, channels, h, w): one shared probe on every cell's channels
        n, ch, h, w = features.shape
        cells = _cells(pos, grid_size, h, w)
        rng = np.random.default_rng(seed)
        tr_rows = np.nonzero(train)[0]
        per_cell = features[tr_rows].transpose(0, 2, 3, 1).reshape(-1, ch)  # (rows*h*w, ch)
        labels = (np.arange(h * w)[None, :] == cells[tr_rows, None]).ravel()
        cell_groups = np.repeat(groups[tr_rows], h * w)
        if len(labels) > MAX_CELL_SAMPLES:
            pos_idx = np.nonzero(labels)[0]
            neg_idx = np.nonzero(~labels)[0]
            keep = rng.choice(neg_idx, MAX_CELL_SAMPLES - len(pos_idx), replace=False)
            sel = np.sort(np.concatenate([pos_idx, keep]))
            per_cell, labels, cell_groups = per_cell[sel], labels[sel], cell_groups[sel]
        C = (params or {}).get("C") or _choose_C(
            per_cell, labels.astype(np.int64), cell_groups, seed, penalty
        )
        mean, std = per_cell.mean(axis=0), per_cell.std(axis=0)
        std[std < 1e-6] = 1.0
        model = _logistic(C, seed, penalty=penalty)
        converged = _fit_quiet(model, ((per_cell - mean) / std).astype(np.float32), labels)
        te_rows = np.nonzero(test)[0]
        te = features[te_rows].transpose(0, 2, 3, 1).reshape(-1, ch)
        logit = model.decision_function(((te - mean) / std).astype(np.float32))
        guess = logit.reshape(len(te_rows), h * w).argmax(axis=1)
        truth = cells[te_rows]
        majority = np.bincount(cells[tr_rows], minlength=h * w).argmax()
        return {
            "metric": "localisation_accuracy",
            "score": float(np.mean(guess == truth)),
            "baseline": float(np.mean(truth == majority)),
            "params": {"C": C},
            "probe": "spatial",
            "converged": converged,
        }
    X = features.reshape(len(features), -1)
    cls = pos[:, 0] * grid_size + pos[:, 1]
    classes = np.unique(cls[train])
    onehot = (cls[:, None] == classes[None, :]).astype(np.float64)  # (n, classes)

    def top1(Y: np.ndarray, P: np.ndarray) -> float:
        return float(np.mean(P.argmax(axis=1) == Y.argmax(axis=1)))

    alpha = (params or {}).get("alpha") or _choose_alpha(
        X[train], onehot[train], groups[train], seed, top1, penalty
    )
    Xtr, Xte = _standardise(X[train], X[test])
    pred = _ridge_fit_predict(Xtr, onehot[train], Xte, alpha, penalty)
    guess = classes[pred.argmax(axis=1)]
    majority = np.bincount(cls[train]).argmax()
    return {
        "metric": "accuracy",
        "score": float(np.mean(guess == cls[test])),
        "baseline": float(np.mean(cls[test] == majority)),
        "params": {"alpha": alpha},
        "probe": "one-hot lasso" if penalty == "l1" else "one-hot least squares",
    }


# ---------------------------------------------------------------------------------- datasets
def agent_activations(
    agent: HookedAgent, obs: np.ndarray, hooks: Sequence[str], batch_size: int = 2048
) -> dict[str, np.ndarray]:
    """Activations ``{hook: (n, ...)}`` (float32) of ``agent`` on observations ``obs``."""
    valid = agent.hook_names()
    for h in hooks:
        if h not in valid:
            raise ValueError(unknown_message("hook", h, valid))
    parts: dict[str, list[np.ndarray]] = {h: [] for h in hooks}
    was_training = agent.training
    agent.eval()
    try:
        for start in range(0, len(obs), batch_size):
            with torch.no_grad():
                _, cache = agent.run_with_cache(obs[start : start + batch_size], names=list(hooks))
            for h in hooks:
                parts[h].append(cache[h].detach().float().cpu().contiguous().numpy())
    finally:
        agent.train(was_training)
    return {h: np.concatenate(p) if p else np.zeros((0,)) for h, p in parts.items()}


def raw_input_features(obs: np.ndarray, agent: HookedAgent | None = None) -> np.ndarray:
    """The observations as probe features (float32): the agent's preprocessed input, else the
    observations with an image's channels moved first (so cells stay cells)."""
    if agent is not None:
        parts = []
        with torch.no_grad():
            for start in range(0, len(obs), 2048):
                batch = agent.preprocess(obs[start : start + 2048])
                parts.append(batch.detach().float().cpu().numpy())
        return np.concatenate(parts) if parts else np.zeros((0,), np.float32)
    arr = np.asarray(obs, dtype=np.float32)
    return np.moveaxis(arr, -1, 1) if arr.ndim == 4 and arr.shape[-1] in (1, 3) else arr


def random_init_agent(agent_config: dict[str, Any], seed: int = 0) -> HookedAgent:
    """A freshly initialised agent of the same architecture with a seed unlike the trained one's."""
    from policylens.agents.models import agent_from_config

    if not agent_config:
        raise ValueError(
            "The random-init control needs the agent's architecture, which this store does not "
            "record; pass the agent or leave out the random_init control."
        )
    if agent_config.get("arch") is None:
        raise ValueError(
            "The random-init control needs a built-in architecture, but this agent is a custom "
            "network; leave out the random_init control."
        )
    fresh_seed = int(agent_config.get("seed", 0)) + 1_000_003 + seed
    return agent_from_config({**agent_config, "seed": fresh_seed})


@dataclass
class ProbeData:
    """Sampled rows of a store with their labels resolved and the split by level fixed."""

    store: Store
    rows: np.ndarray
    targets: dict[str, Target]
    groups: np.ndarray
    train: np.ndarray
    test: np.ndarray
    seed: int

    @classmethod
    def from_store(
        cls,
        store: Store,
        labels: Sequence[str],
        max_samples: int = 10_000,
        test_fraction: float = 0.25,
        seed: int = 0,
        kinds: dict[str, str] | None = None,
    ) -> ProbeData:
        if max_samples < 10:
            raise ValueError(f"max_samples must be >= 10, got {max_samples}.")
        n = len(store)
        rng = np.random.default_rng(seed)
        rows = np.arange(n) if n <= max_samples else np.sort(rng.choice(n, max_samples, False))
        targets = {
            label: resolve_target(store, label, rows, (kinds or {}).get(label)) for label in labels
        }
        key = "labels/level_seed" if "labels/level_seed" in store else "episode"
        groups = store[key][rows]
        train, test = group_split(groups, test_fraction, seed)
        return cls(store, rows, targets, groups, train, test, seed)

    def obs(self) -> np.ndarray:
        if "obs" not in self.store:
            raise ValueError(f"Store {self.store.path} has no observations to run agents on.")
        return self.store["obs"][self.rows]

    def stored_activations(self, hooks: Sequence[str]) -> dict[str, np.ndarray]:
        missing = [h for h in hooks if h not in self.store.hooks]
        if missing:
            stored = ", ".join(self.store.hooks) or "none"
            raise ValueError(
                f"Store {self.store.path} has no activations for {', '.join(missing)} (stored: "
                f"{stored}); pass the agent to compute them or collect with those hooks."
            )
        return {
            h: self.store[f"activations/{h}"][self.rows].astype(np.float32, copy=False)
            for h in hooks
        }

    def shuffled(self, target: Target) -> Target:
        rng = np.random.default_rng(self.seed + 104_729)
        return Target(target.label, target.kind, target.y[rng.permutation(len(target.y))],
                      target.classes)  # fmt: skip

    def fit(
        self,
        features: np.ndarray,
        target: Target,
        params: dict | None = None,
        penalty: str = "l2",
    ) -> dict[str, Any]:
        return fit_probe(
            features,
            target,
            self.train,
            self.test,
            self.groups,
            seed=self.seed,
            grid_size=self.store.meta.get("grid_size"),
            params=params,
            penalty=penalty,
        )


@dataclass(frozen=True)
class ProbeResult:
    """One probe: how well ``label`` is decoded from ``hook`` on held-out levels."""

    label: str
    hook: str
    kind: str
    metric: str
    score: float
    baseline: float
    n_train: int
    n_test: int
    params: dict[str, float]
    controls: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ProbeReport:
    """Every probe of one call, with the settings that produced them."""

    results: list[ProbeResult]
    meta: dict[str, Any]

    def get(self, label: str, hook: str) -> ProbeResult:
        for r in self.results:
            if r.label == label and r.hook == hook:
                return r
        raise ValueError(f"No probe of {label!r} at {hook!r} in this report.")

    def to_json(self) -> dict[str, Any]:
        return {"meta": self.meta, "results": [r.to_json() for r in self.results]}


def _result(data: ProbeData, label: str, hook: str, fit: dict[str, Any]) -> ProbeResult:
    details = {k: v for k, v in fit.items() if k not in ("metric", "score", "baseline", "params")}
    return ProbeResult(
        label=label,
        hook=hook,
        kind=data.targets[label].kind,
        metric=fit["metric"],
        score=float(fit["score"]),
        baseline=float(fit["baseline"]),
        n_train=int(data.train.sum()),
        n_test=int(data.test.sum()),
        params=fit["params"],
        details=details,
    )


@dataclass(frozen=True)
class ProbeOptions:
    """How probes are fit and checked: the same for every label and layer of one call."""

    controls: Sequence[str] = DEFAULT_CONTROLS
    """Controls reported beside each score, any of :data:`CONTROLS`."""
    max_samples: int = 10_000
    """Rows sampled from the store (probes hold their features in memory)."""
    test_fraction: float = 0.25
    """Share of levels (episodes, where the world has no levels) held out for the score."""
    seed: int = 0
    """Seed of the sample, the split and the controls."""
    kinds: Mapping[str, str] | None = None
    """A probe kind forced per label (``{"dist_to_cheese": "classification"}``)."""
    penalties: Sequence[str] = ("l2",)
    """Probes fit per label and layer, any of :data:`PENALTIES`: ``l1`` adds
    :attr:`ProbeCurves.l1_scores` over training, ``details["l1_score"]`` to a single probe."""

    def __post_init__(self) -> None:
        for c in self.controls:
            if c not in CONTROLS:
                raise ValueError(unknown_message("ProbeOptions.controls value", c, CONTROLS))
        for pen in self.penalties:
            if pen not in PENALTIES:
                raise ValueError(unknown_message("ProbeOptions.penalties value", pen, PENALTIES))
        if "l2" not in self.penalties:
            raise ValueError("ProbeOptions.penalties must include l2 (the controls use it).")
        n = self.max_samples
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"ProbeOptions.max_samples must be an integer >= 1, got {n!r}.")
        if not 0 < self.test_fraction < 1:
            raise ValueError(
                f"ProbeOptions.test_fraction must lie in (0, 1), got {self.test_fraction}."
            )


def probe(
    store: Store | str | Path,
    labels: Sequence[str] | None = None,
    hooks: Sequence[str] | None = None,
    agent: HookedAgent | None = None,
    options: ProbeOptions = ProbeOptions(),
    progress: Callable[[str], None] | None = None,
) -> ProbeReport:
    """Probe every label at every hook, with controls; returns a :class:`ProbeReport`.

    Args:
        store: a rollout store (or its path) from :func:`policylens.rollout.collect`.
        labels: label keys (``"key[i]"`` for one component of a vector label); default: the
            store's scalar labels (:func:`default_concepts`).
        hooks: hook names; default: a few layers from input to output.
        agent: compute activations by running this agent on the stored observations; default:
            the activations stored in ``store``.
    """
    store = store if isinstance(store, Store) else open_store(store)
    controls, seed, test_fraction = list(options.controls), options.seed, options.test_fraction
    say = progress or (lambda message: None)
    labels = list(labels) if labels else default_concepts(store)
    if hooks:
        hooks = list(hooks)
    elif agent is not None:
        hooks = default_hooks(agent.hook_names())
    else:
        hooks = default_hooks(store.hooks)
    if not hooks:
        raise ValueError(
            f"Store {store.path} holds no activations; pass an agent or collect with --hook."
        )
    kinds = dict(options.kinds) if options.kinds is not None else None
    data = ProbeData.from_store(store, labels, options.max_samples, test_fraction, seed, kinds)
    if agent is not None:
        say(f"activations of {len(hooks)} hook(s) on {len(data.rows)} observations")
        feats = agent_activations(agent, data.obs(), hooks)
    else:
        feats = data.stored_activations(hooks)
    random_feats = None
    if "random_init" in controls:
        config = agent.config if agent is not None else store.meta.get("agent", {})
        random_feats = agent_activations(random_init_agent(config, seed), data.obs(), hooks)
    raw: dict[str, float] = {}
    if "raw_input" in controls:
        raw_feats = raw_input_features(data.obs(), agent)
        raw = {label: float(data.fit(raw_feats, data.targets[label])["score"]) for label in labels}
    results = []
    for hook in hooks:
        for label in labels:
            say(f"probe {label} at {hook}")
            target = data.targets[label]
            fit = data.fit(feats[hook], target)
            result = _result(data, label, hook, fit)
            if random_feats is not None:
                result.controls["random_init"] = data.fit(random_feats[hook], target)["score"]
            if "shuffled" in controls:
                shuffled = data.shuffled(target)
                result.controls["shuffled"] = data.fit(feats[hook], shuffled, fit["params"])[
                    "score"
                ]
            if label in raw:
                result.controls["raw_input"] = raw[label]
            if "l1" in options.penalties:
                result.details["l1_score"] = float(
                    data.fit(feats[hook], target, penalty="l1")["score"]
                )
            results.append(result)
    meta = {
        "store": str(store.path),
        "env_id": store.meta.get("env_id"),
        "rows": int(len(data.rows)),
        "levels": int(len(np.unique(data.groups))),
        "test_fraction": test_fraction,
        "seed": seed,
        "controls": controls,
        "split": "level_seed" if "labels/level_seed" in store else "episode",
    }
    return ProbeReport(results, meta)


# ---------------------------------------------------------------------------------- over training
def probe_store_for_run(
    run: Run | str | Path,
    episodes: int = 200,
    seed: int = 0,
    step: int | None = None,
    env_kwargs: dict[str, Any] | None = None,
    out: str | Path | None = None,
    num_envs: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> Store:
    """The rollout store probes of ``run`` use: collected once, reused while settings match.

    Collected with the checkpoint ``step`` (latest by default) in the run's world, with the
    run's world options updated by ``env_kwargs`` (callers pass the world's probe options).
    """
    from policylens.rollout.collect import CollectOptions, collect_run
    from policylens.rollout.store import MANIFEST
    from policylens.runs import Run, config_json

    run = run if isinstance(run, Run) else Run(run)
    step, _ = run.checkpoint(step)
    world = dict(env_kwargs or {})
    out = Path(out) if out is not None else run.analysis_dir / "probes" / "rollouts"
    wanted = {"checkpoint_step": step, "episodes_requested": episodes, "seed": seed}
    if (out / MANIFEST).is_file():
        existing = open_store(out)
        full_world = {**run.config["trainer"].get("env_kwargs", {}), **world}
        same = all(existing.meta.get(k) == v for k, v in wanted.items())
        if same and existing.meta.get("env_kwargs") == config_json(full_world):
            return existing
    options = CollectOptions(episodes=episodes, seed=seed, num_envs=num_envs)
    return collect_run(run, options, out, step, world, overwrite=True, progress=progress)


@dataclass(frozen=True)
class ProbeCurves:
    """Probe scores at every checkpoint of a run, with the controls."""

    steps: list[int]
    labels: list[str]
    hooks: list[str]
    metrics: dict[str, str]
    """label -> metric name(s) ("localisation_accuracy / accuracy" when layers differ)."""
    scores: dict[str, dict[str, list[float]]]
    """label -> hook -> score per step."""
    baselines: dict[str, float]
    controls: dict[str, dict[str, dict[str, float]]]
    """label -> hook -> control -> score (random_init; shuffled at the last checkpoint;
    raw_input, the same for every hook)."""
    meta: dict[str, Any] = field(default_factory=dict)
    l1_scores: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    """label -> hook -> L1 probe score per step (empty unless ``l1`` was among the penalties)."""
    l1_controls: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    """label -> hook -> control -> score of the L1 probe."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def probe_checkpoints(
    run: Run | str | Path,
    store: Store | str | Path | None = None,
    labels: Sequence[str] | None = None,
    hooks: Sequence[str] | None = None,
    steps: Sequence[int] | None = None,
    options: ProbeOptions = ProbeOptions(max_samples=5_000),
    *,
    save: bool = True,
    progress: Callable[[str], None] | None = None,
) -> ProbeCurves:
    """Probe every checkpoint of ``run`` on one fixed set of observations.

    The store (default: :func:`probe_store_for_run` with its defaults and ``options.seed``) is
    collected with the final agent; each
    checkpoint's activations are computed on the same observations. Regularisation is chosen
    per probe at the last checkpoint and kept for every other checkpoint and for the controls,
    so only the activations change along a curve. With ``save`` the curves go to
    ``RUN/analysis/probes/probes_over_training.json`` (:func:`policylens.report.probes.write_probe_curves` draws them).
    """
    from policylens.runs import Run

    run = run if isinstance(run, Run) else Run(run)
    controls, seed = list(options.controls), options.seed
    say = progress or (lambda message: None)
    available = run.checkpoints()
    if not available:
        raise FileNotFoundError(f"run {run.path} has no checkpoints yet; train it first")
    if steps is None:
        chosen = [s for s, _ in available]
    else:
        known = {s for s, _ in available}
        bad = [s for s in steps if s not in known]
        if bad:
            raise ValueError(
                f"Run {run.path} has no checkpoint at step(s) {bad}; it has {sorted(known)}."
            )
        chosen = sorted(set(steps))
    if store is None:
        say("collecting probe data with the final agent")
        store = probe_store_for_run(run, seed=seed)
    store = store if isinstance(store, Store) else open_store(store)
    final = run.load_agent(chosen[-1])
    labels = list(labels) if labels else default_concepts(store)
    hooks = list(hooks) if hooks else default_hooks(final.hook_names())
    kinds = dict(options.kinds) if options.kinds is not None else None
    data = ProbeData.from_store(
        store, labels, options.max_samples, options.test_fraction, seed, kinds
    )
    obs = data.obs()

    penalties = list(dict.fromkeys(options.penalties))
    say(f"checkpoint {chosen[-1]} (choosing regularisation)")
    feats = agent_activations(final, obs, hooks)
    Key = tuple[str, str, str]  # (penalty, label, hook)
    params: dict[Key, dict] = {}
    last: dict[Key, float] = {}
    baselines: dict[str, float] = {}
    metrics: dict[str, str] = {}
    ctrl: dict[str, dict[str, dict[str, dict[str, float]]]] = {
        pen: {lab: {h: {} for h in hooks} for lab in labels} for pen in penalties
    }
    for hook in hooks:
        for label in labels:
            for pen in penalties:
                fit = data.fit(feats[hook], data.targets[label], penalty=pen)
                params[pen, label, hook] = fit["params"]
                last[pen, label, hook] = float(fit["score"])
                if pen == "l2":
                    baselines[label] = float(fit["baseline"])
                    metrics[label] = " / ".join(
                        sorted({*metrics.get(label, "").split(" / "), fit["metric"]} - {""})
                    )
                if "shuffled" in controls:
                    shuffled = data.shuffled(data.targets[label])
                    ctrl[pen][label][hook]["shuffled"] = float(
                        data.fit(feats[hook], shuffled, fit["params"], pen)["score"]
                    )
    if "random_init" in controls:
        say("random-init control")
        rfeats = agent_activations(random_init_agent(run.config["agent"], seed), obs, hooks)
        for hook in hooks:
            for label in labels:
                for pen in penalties:
                    ctrl[pen][label][hook]["random_init"] = float(
                        data.fit(rfeats[hook], data.targets[label], params[pen, label, hook],
                                 pen)["score"]
                    )  # fmt: skip
    if "raw_input" in controls:
        say("raw-input control")
        raw_feats = raw_input_features(obs, final)
        for label in labels:
            for pen in penalties:
                value = float(data.fit(raw_feats, data.targets[label], penalty=pen)["score"])
                for hook in hooks:
                    ctrl[pen][label][hook]["raw_input"] = value
    scores: dict[str, dict[str, dict[str, list[float]]]] = {
        pen: {lab: {h: [] for h in hooks} for lab in labels} for pen in penalties
    }
    for step in chosen:
        if step == chosen[-1]:
            for key, value in last.items():
                pen, label, hook = key
                scores[pen][label][hook].append(value)
            continue
        say(f"checkpoint {step}")
        feats = agent_activations(run.load_agent(step), obs, hooks)
        for hook in hooks:
            for label in labels:
                for pen in penalties:
                    fit = data.fit(feats[hook], data.targets[label], params[pen, label, hook], pen)
                    scores[pen][label][hook].append(float(fit["score"]))
    curves = ProbeCurves(
        steps=list(chosen),
        labels=labels,
        hooks=hooks,
        metrics=metrics,
        scores=scores["l2"],
        baselines=baselines,
        controls=ctrl["l2"],
        meta={
            "run": str(run.path),
            "store": str(store.path),
            "rows": int(len(data.rows)),
            "levels": int(len(np.unique(data.groups))),
            "seed": seed,
            "penalties": penalties,
            "params": {
                f"{'' if pen == 'l2' else pen + ': '}{lab} @ {h}": p
                for (pen, lab, h), p in params.items()
            },
        },
        l1_scores=scores.get("l1", {}),
        l1_controls=ctrl.get("l1", {}),
    )
    if save:
        artifacts.write_json(
            run.analysis_dir / "probes" / "probes_over_training.json", curves.to_json()
        )
    return curves
