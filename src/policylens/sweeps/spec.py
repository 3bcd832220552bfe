"""What a sweep runs: a world's recipe, a grid over its parameters, seeds, a training length and
the evaluation called on each finished run folder. Built from a TOML file, from CLI flags, or both.

The recipe and the evaluation are named as ``module:function`` and imported when the sweep runs,
so this layer names no world (``policylens sweep`` fills both from the world's defaults; a user's
own world brings its own). A spec written in TOML::

    world = "maze"
    recipe = "policylens.worlds.maze:MazeRecipe"
    seeds = "0-4"                       # or [0, 1, 2], or "0,2,5"
    steps = 500000
    evaluate = "policylens.studies.maze.sweep:maze_metrics"

    [grid]                              # every combination, each with every seed
    cheese_region = [1, 3, "none"]

    [fixed]                             # recipe parameters shared by all trials
    world_size = 9

    [evaluate_kwargs]
    episodes = 500
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import itertools
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policylens.errors import check_known
from policylens.train.ppo import PPOConfig

CONTROLLED = ("seed", "total_steps")
"""Recipe parameters the sweep sets itself, from ``seeds`` and ``steps``."""

SETTINGS = ("world", "recipe", "grid", "fixed", "seeds", "steps", "evaluate", "evaluate_kwargs")
"""The keys of a spec (a TOML file's top level, ``sweep.json``)."""

MAX_STEPS = 100_000_000
"""Most environment steps per trial: beyond this a typo is likelier than a plan."""
MAX_SEEDS = 100
MAX_TRIALS = 1000

_LABEL = re.compile(r"^[A-Za-z0-9_.+-]+$")
"""What a grid value may look like as text: it becomes part of a folder name."""


def recipe_parameters(recipe: Callable[..., Any]) -> list[str]:
    """The settings of a ``recipe`` class a sweep may vary or fix."""
    names = inspect.signature(recipe).parameters
    return [n for n in names if n not in CONTROLLED]


def function_path(fn: Callable[..., Any]) -> str:
    """``module:name`` naming a function or class, as a spec's ``recipe`` and ``evaluate`` are
    written."""
    return f"{fn.__module__}:{fn.__qualname__}"


def check_function_path(path: str, setting: str) -> None:
    """Refuse a ``setting`` that is not written ``module:function``, in one sentence."""
    if not re.fullmatch(r"[\w.]+:\w+", path or ""):
        raise ValueError(
            f"{setting} must name a function as 'module:function' (e.g. "
            f"policylens.studies.maze.sweep:maze_metrics), got {path!r}."
        )


def import_function(path: str, setting: str) -> Callable[..., Any]:
    """The function a spec's ``setting`` names as ``module:function``, in one sentence if not."""
    check_function_path(path, setting)
    module_name, _, name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot import {module_name} (from {setting} {path}): {e}.") from e
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"module {module_name} has no function {name} (from {setting}).")
    return fn


def parse_value(value: Any) -> Any:
    """A value given as text (CLI flags, TOML strings): ``none``, ``true``/``false``, an integer, a
    float, or else the text itself; other values pass through unchanged."""
    if not isinstance(value, str):
        return value
    low = value.strip().lower()
    if low == "none":
        return None
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def parse_seeds(value: Any) -> list[int]:
    """Seeds from ``"0-4"`` (both ends included), ``"0,2,5"``, ``"3"``, an integer or a list."""
    if isinstance(value, bool):
        raise ValueError(f"seeds must be integers, got {value!r}.")
    if isinstance(value, int):
        return [value]
    if isinstance(value, list | tuple):
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in value):
            raise ValueError(f"seeds must be integers, got {list(value)!r}.")
        return list(value)
    text = str(value).strip()
    if re.fullmatch(r"\d+\s*-\s*\d+", text):
        first, last = (int(s) for s in text.split("-"))
        if last < first:
            raise ValueError(f"seed range {text!r} runs backwards; write it low-high, e.g. 0-4.")
        if last - first + 1 > MAX_SEEDS:
            raise ValueError(f"seeds {text!r} name {last - first + 1} seeds; at most {MAX_SEEDS}.")
        return list(range(first, last + 1))
    if re.fullmatch(r"\d+(\s*,\s*\d+)*", text):
        return [int(s) for s in text.split(",")]
    raise ValueError(
        f"seeds must be a range like 0-4, a list like 0,2,5 or one integer, got {text!r}."
    )


@dataclass(frozen=True)
class Trial:
    """One training run of a sweep: a point of the grid and a seed."""

    params: dict[str, Any]
    seed: int

    @property
    def name(self) -> str:
        """The trial's folder name, e.g. ``cheese_region=none,seed=3``."""
        parts = [f"{k}={_label(v)}" for k, v in self.params.items()]
        return ",".join([*parts, f"seed={self.seed}"])


def _label(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)


@dataclass
class SweepSpec:
    """A sweep: every combination of ``grid`` with every seed is one trial, trained with the
    ``world``'s recipe (plus ``fixed``) for ``steps`` steps and scored by ``evaluate``.

    ``evaluate`` is a ``"module:function"`` path, imported when the sweep runs, called as
    ``function(run_path, **evaluate_kwargs)`` on each finished run folder; it returns a flat dict
    of numbers. Text values (``"none"``, ``"3"``) are read as by :func:`parse_value`.
    """

    world: str = "maze"
    """The world's name, for people: what runs is ``recipe``."""
    recipe: str = ""
    """``module:Class`` naming a world's recipe, an options class whose ``config()`` is one run's
    trainer config (e.g. ``policylens.worlds.maze:MazeRecipe``)."""
    grid: dict[str, list[Any]] = field(default_factory=dict)
    """Recipe parameter -> the values it takes (e.g. ``{"cheese_region": [1, 3, None]}``)."""
    seeds: list[int] = field(default_factory=lambda: [0])
    steps: int | None = None
    """Environment steps per trial (None: the recipe's default)."""
    evaluate: str = ""
    evaluate_kwargs: dict[str, Any] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    """Recipe parameters shared by every trial."""

    def __post_init__(self) -> None:
        self.seeds = parse_seeds(self.seeds)
        if not isinstance(self.grid, dict) or not isinstance(self.fixed, dict):
            raise ValueError("grid and fixed must be tables of recipe parameters.")
        if not isinstance(self.evaluate_kwargs, dict):
            raise ValueError("evaluate_kwargs must be a table of keyword arguments.")
        grid = {}
        for name in sorted(self.grid):  # sorted: one folder name whatever order they came in
            values = self.grid[name]
            values = values if isinstance(values, list | tuple) else [values]
            grid[name] = [parse_value(v) for v in values]
        self.grid = grid
        self.fixed = {k: parse_value(v) for k, v in self.fixed.items()}
        self.evaluate_kwargs = {k: parse_value(v) for k, v in self.evaluate_kwargs.items()}
        self._validate()

    def _validate(self) -> None:
        valid = recipe_parameters(import_function(self.recipe, "recipe"))
        check_known([*self.grid, *self.fixed], valid, f"parameter of the {self.world} recipe")
        for name, values in self.grid.items():
            if not values:
                raise ValueError(f"grid parameter {name} has no values; give at least one.")
            if name in self.fixed:
                raise ValueError(f"{name} is both in the grid and fixed; keep it in one of them.")
            for v in values:
                if not (v is None or isinstance(v, int | float | str)) or not _LABEL.match(
                    _label(v)
                ):
                    raise ValueError(
                        f"grid value {v!r} of {name} cannot name a trial folder; use numbers, "
                        "true/false, none, or text of letters, digits, '.', '-' and '_'."
                    )
            if len({_label(v) for v in values}) < len(values):
                raise ValueError(f"grid parameter {name} lists a value twice: {values!r}.")
        if not self.seeds:
            raise ValueError("a sweep needs at least one seed.")
        if len(self.seeds) > MAX_SEEDS:
            raise ValueError(f"a sweep takes at most {MAX_SEEDS} seeds, got {len(self.seeds)}.")
        if len(set(self.seeds)) < len(self.seeds) or min(self.seeds) < 0:
            raise ValueError(f"seeds must be distinct and non-negative, got {self.seeds}.")
        if self.steps is not None and (
            isinstance(self.steps, bool)
            or not isinstance(self.steps, int)
            or not 1 <= self.steps <= MAX_STEPS
        ):
            raise ValueError(f"steps must be an integer from 1 to {MAX_STEPS:,}, got {self.steps}.")
        n = len(self.trials())
        if n > MAX_TRIALS:
            raise ValueError(f"the sweep has {n} trials; one sweep runs at most {MAX_TRIALS}.")
        check_function_path(self.evaluate, "evaluate")  # imported when the sweep runs
        for params in self._combinations():  # the recipe checks the values with its own words
            self.config(Trial(params, self.seeds[0]), threads=1)

    def _combinations(self) -> list[dict[str, Any]]:
        names = list(self.grid)
        return [dict(zip(names, vs, strict=True)) for vs in itertools.product(*self.grid.values())]

    def trials(self) -> list[Trial]:
        """Every trial, grid combinations in order and each with every seed."""
        return [Trial(p, s) for p in self._combinations() for s in self.seeds]

    def config(self, trial: Trial, threads: int) -> PPOConfig:
        """The trainer config of ``trial``, running on ``threads`` torch threads."""
        kwargs = {**self.fixed, **trial.params, "seed": trial.seed, "total_steps": self.steps}
        try:
            config = import_function(self.recipe, "recipe")(**kwargs).config()
        except TypeError as e:  # a value of the wrong type deep in the recipe
            raise ValueError(f"the {self.world} recipe rejects {trial.params}: {e}.") from e
        return dataclasses.replace(config, threads=threads)

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data (``sweep.json``)."""
        return {k: getattr(self, k) for k in SETTINGS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepSpec:
        """A spec from plain data (a TOML table, ``sweep.json``), naming any unknown key."""
        check_known(data, SETTINGS, "sweep setting")
        return cls(**data)


def spec_settings(path: str | Path | None = None, **overrides: Any) -> dict[str, Any]:
    """A spec's settings from a TOML file (optional), completed or overridden by ``overrides``.

    ``grid``, ``fixed`` and ``evaluate_kwargs`` overrides replace the file's entries one name at a
    time; the other settings replace the file's value. None overrides are ignored.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"sweep spec {path} does not exist.")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path} is not valid TOML ({e}).") from e
        check_known(data, SETTINGS, "sweep setting")
    for key, value in overrides.items():
        if value is None:
            continue
        if key in ("grid", "fixed", "evaluate_kwargs"):
            data[key] = {**data.get(key, {}), **value}
        else:
            data[key] = value
    return data


def load_spec(path: str | Path | None = None, **overrides: Any) -> SweepSpec:
    """The spec of :func:`spec_settings`."""
    return SweepSpec.from_dict(spec_settings(path, **overrides))


def resolve_evaluate(spec: SweepSpec) -> Callable[..., dict[str, float]]:
    """Import the spec's evaluate function and check it takes ``(run_path, **evaluate_kwargs)``."""
    fn = import_function(spec.evaluate, "evaluate")
    try:
        inspect.signature(fn).bind("run", **spec.evaluate_kwargs)
    except TypeError as e:
        raise ValueError(
            f"{spec.evaluate} cannot be called with a run path and {spec.evaluate_kwargs}: {e}."
        ) from e
    return fn
