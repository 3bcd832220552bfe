"""The end-to-end demo behind the README's first command: train (or reuse) the default maze
agent and measure its goal misgeneralization; train (or reuse) a second agent with a larger
cheese region, which does go for the cheese, and steer both; write the report.

The cheese vector can only remove cheese-seeking an agent has: the default agent (cheese in the
top-right corner) almost never goes for the cheese off the corner path, so its steering result
is "no effect" by construction; the region-3 agent shows what the vector does.

Then the tour: a short section of every other research line on the agents shipped in the zoo
(Understanding RL Vision on ``zoo:hazards``, SAEs on ``zoo:rook-dqn``, isolating updates on
``zoo:lunar-phase1`` and ``zoo:lunar-phase2``), each a page with its headline against its control
and 95% intervals, and an index page linking them with the maze report. The demo composes the
studies' entry points and the report's renderers; the studies compute.

Rerunning reuses every finished step: a trained run is not retrained (an interrupted one
resumes), saved analyses are reused while the checkpoint is unchanged, and a tour section is
reused while its zoo agents and budget are. ``quick`` runs the same steps on a small budget (CI
runs it, so the main command cannot break silently).
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from policylens.agents.pretrained import zoo_names
from policylens.artifacts import FolderLock, read_json, write_bytes, write_json
from policylens.lenses import updates as weight_updates
from policylens.report import gallery as gallery_report
from policylens.report import maze as maze_report
from policylens.report import tour as tour_report
from policylens.report.html import Report
from policylens.report.rl_vision import feature_strip
from policylens.rollout import stats
from policylens.runs import Run, config_json, outcome_settings
from policylens.studies.hazards.failures import FailureStudy, SplitTables, hidden_vs_shown
from policylens.studies.lunar_updates.evaluation import evaluate_weights
from policylens.studies.lunar_updates.protocol import noise_seed
from policylens.studies.maze import gallery as levels
from policylens.studies.maze import misgeneralization
from policylens.studies.rl_vision.editing import (
    EditRecord,
    ExperimentOptions,
    edit_experiment,
    edit_verdict,
    reader_of,
)
from policylens.studies.rl_vision.features import FeatureOptions, fit_features, object_direction
from policylens.studies.rook_sae.runs import SAEEvalOptions, eval_run_sae
from policylens.train.ppo import PPOConfig, train_ppo
from policylens.worlds.hazards import hazard_env_kwargs
from policylens.worlds.maze import MazeRecipe

Log = Callable[[str], None]


@dataclass(frozen=True)
class TourBudget:
    """How much each tour section measures on the zoo's agents."""

    frames: int
    """Hazard-world frames the value's NMF features are fitted on."""
    levels: int
    """Unseen hazard levels per failure table (unedited, saws invisible, edited, random)."""
    random_controls: int
    """Random directions projected out, the edit's controls."""
    sae_episodes: int
    """Rook endgames per condition (original, SAE spliced in, zero and mean ablation)."""
    sae_steps: int
    """Fresh steps of the DQN's play for the SAE's held-out figures and the hook's mean."""
    lunar_episodes: int
    """Lunar-lander episodes per model (phase 1, phase 2, the noise control)."""


FULL_TOUR = TourBudget(
    frames=256, levels=2048, random_controls=2, sae_episodes=400, sae_steps=4096, lunar_episodes=30
)
QUICK_TOUR = TourBudget(
    frames=64, levels=256, random_controls=1, sae_episodes=100, sae_steps=512, lunar_episodes=5
)


@dataclass(frozen=True)
class DemoBudget:
    """How much the demo trains and measures."""

    steps: int | None
    """PPO environment steps of the main agent (None: the maze recipe's default)."""
    steering_steps: int
    """PPO environment steps of the steering agent (cheese region 3)."""
    episodes: int
    """Episodes per distribution for the behaviour figures."""
    n_mazes: int
    """Test mazes per decision-square and intervention experiment."""
    n_obs: int
    """Observations for the attribution, NMF and clustering sections."""
    tour: TourBudget = FULL_TOUR
    """The tour's sections on the zoo's agents."""


FULL = DemoBudget(steps=None, steering_steps=1_000_000, episodes=500, n_mazes=200, n_obs=128)
QUICK = DemoBudget(
    steps=100_000, steering_steps=50_000, episodes=100, n_mazes=100, n_obs=32, tour=QUICK_TOUR
)
"""A budget that runs every step in about a minute; its agent is barely trained."""


@dataclass(frozen=True)
class DemoResult:
    """What the demo made: the gallery, the solver check, the headline and the report."""

    gallery: dict[str, Any]
    """The gallery's figures and its PNG (``path``)."""
    solver: levels.SolverCheck
    headline: misgeneralization.Headline
    report: Path
    tour: list[TourSection] = field(default_factory=list)
    """The other research lines on the zoo's agents, in the order run."""
    index: Path | None = None
    """The index page linking the maze report and every tour section's page."""

    def to_json(self) -> dict[str, Any]:
        return {"gallery": self.gallery, "solver": self.solver.to_json(),
                "headline": self.headline.to_json(), "report": str(self.report),
                "tour": [t.to_json() for t in self.tour],
                "index": None if self.index is None else str(self.index)}  # fmt: skip


def run_demo(
    out: str | Path,
    console: Console | None = None,
    budget: DemoBudget = FULL,
    precision: str = "auto",
) -> DemoResult:
    """Gallery -> train -> analyse -> report; prints the headline and the report's path.

    ``precision`` is PPO's (``auto`` trains in bf16 only on a CPU with native bf16).
    """
    console = console or Console()
    out = Path(out)
    recipe, steering_recipe = demo_recipes(budget, precision)
    steering_dir = out / "steering_agent"
    check_demo_folder(out, budget, precision)
    out.mkdir(parents=True, exist_ok=True)
    shown = levels.GalleryOptions(n=12, seed=0)
    solutions = levels.run(shown)
    png = gallery_report.render(solutions, out / "analysis" / "maze_gallery.png")
    drawn = {"path": str(png), **solutions.to_json()}
    solved = levels.solve_levels(shown.config, episodes=200, seed=0)
    console.print(
        f"[bold]1. world[/]: {shown.n} mazes -> {png}; the BFS solver solved "
        f"{solved.episodes}/{solved.episodes} optimally: {solved.optimal}"
    )
    run = train_or_reuse(out, recipe, "2. agent", "cheese in the top-right corner", console)
    steering_run = train_or_reuse(
        steering_dir, steering_recipe, "2b. steering agent",
        f"cheese in the top-right {STEERING_REGION}x{STEERING_REGION} region", console,
    )  # fmt: skip

    console.print(
        "[bold]3. analysis[/]: behaviour, decision squares, cheese vector, channel clamping"
    )
    analysis = misgeneralization.AnalysisOptions(episodes=budget.episodes, n_mazes=budget.n_mazes)
    options = misgeneralization.StudyOptions(
        analysis, n_obs=budget.n_obs, steering_runs=(steering_run.path,)
    )
    study = misgeneralization.study(run, options, log=lambda m: console.print(f"   {m}"))
    report = maze_report.render(study).write(run.analysis_dir / "report.html")
    (steered,) = study.others.values()
    numbers = misgeneralization.headline(study.analysis, steered)
    console.print("[bold]4. headline[/] (95% intervals)")
    steered_by = f"the agent trained with cheese region {STEERING_REGION} ({steering_dir})"
    maze_lines = maze_report.headline_lines(numbers, steered_by)
    for line in maze_lines:
        console.print(f"   {line}", highlight=False)

    tour_dir = run.analysis_dir / "tour"
    console.print(
        "[bold]5. tour[/]: every other research line on the zoo's agents "
        "(headlines against their controls, 95% intervals)"
    )
    sections = run_tour(tour_dir, budget.tour, lambda m: console.print(f"      {m}"))
    for section in sections:
        console.print(f"   {section.line}: {section.headline or section.skipped}", highlight=False)
    index = write_index(run.analysis_dir, report, maze_lines, sections)
    console.print(f"[bold]report[/]: {report.resolve()}")
    console.print(f"[bold]index[/]: {index.resolve()}")
    console.print(
        f"[bold]explore it[/]: policylens explore {shlex.quote(str(out))}", highlight=False
    )
    return DemoResult(drawn, solved, numbers, report, sections, index)


STEERING_REGION = 3
"""Cheese region of the steering agent: large enough that it goes for the cheese off the corner
path (measured: 35% of test mazes at 1M steps), small enough to train in about a minute."""


def demo_recipes(budget: DemoBudget, precision: str) -> tuple[PPOConfig, PPOConfig]:
    """The trainer configs of the corner agent and the steering agent."""
    return (
        MazeRecipe(total_steps=budget.steps, precision=precision).config(),
        MazeRecipe(
            cheese_region=STEERING_REGION, total_steps=budget.steering_steps, precision=precision
        ).config(),
    )


def check_demo_folder(out: Path, budget: DemoBudget, precision: str) -> None:
    """Refuse, in one sentence and before any work, an ``out`` holding agents the demo would
    not have trained with these settings (another run, or a demo of another budget); a demo
    folder of the same settings is reused, a killed one resumed."""
    recipe, steering_recipe = demo_recipes(budget, precision)
    for folder, wanted in ((out, recipe), (out / "steering_agent", steering_recipe)):
        check_reusable(folder, config_json(asdict(wanted)))


def check_reusable(folder: Path, trainer: dict[str, Any]) -> None:
    """One sentence when ``folder`` holds an agent trained with other settings than ``trainer``."""
    if (folder / "config.json").exists():
        trained = Run(folder).config["trainer"]
        if outcome_settings(trained) != outcome_settings(trainer):  # steps as trained (rounded)
            raise ValueError(
                f"{folder} holds an agent trained with other settings "
                f"({trained['total_steps']:,} steps, precision {trained['precision']}); "
                "pass another --out or delete the folder"
            )


def train_or_reuse(folder: Path, recipe: PPOConfig, label: str, what: str, console: Console) -> Run:
    """The run in ``folder``: reused when finished, resumed when killed, else trained."""
    if (folder / "config.json").exists() and Run(folder).done:
        console.print(f"[bold]{label}[/]: reusing the trained agent in {folder}")
        return Run(folder)
    resume = (folder / "resume.pt").exists()
    console.print(
        f"[bold]{label}[/]: {'resuming' if resume else 'training'} PPO "
        f"({recipe.total_steps:,} steps, {what}) -> {folder}"
    )
    return train_ppo(recipe, folder, resume=resume)


# -- the tour: every other research line on the zoo's agents ------------------------------------
TOUR_VERSION = 1
"""Bumped when a section computes something else, so a saved section is not reused."""
FRAME_STEPS = 100
"""The features' frames come from the first 100 steps of each episode (the recipe agent's
episodes last about 40): a rare stuck episode does not hold the whole batch for 500 steps."""
HAZARD_SEED = 10_000
"""Seed of the hazard levels and actions of every failure table (the failures command's)."""
LUNAR_SEED = 1_000_000
"""Seed of the lunar episodes (the isolating-updates experiment's evaluation seed)."""


@dataclass(frozen=True)
class TourSection:
    """One research line run on zoo agents: its page and headline, or why it was skipped."""

    line: str
    """The research line, e.g. "Understanding RL Vision"."""
    title: str
    """What the section ran, on which agents."""
    sources: tuple[str, ...]
    headline: str | None = None
    """The headline against its control with 95% intervals (None when skipped)."""
    page: Path | None = None
    figure: Path | None = None
    """The headline's figure (PNG), shown on the page and on the index."""
    skipped: str | None = None
    """Why the section did not run (a zoo agent missing), in one sentence."""
    seconds: float = 0.0
    """How long it took when it was computed."""
    reused: bool = False
    """Read back from an earlier run of the demo."""

    def to_json(self) -> dict[str, Any]:
        return {
            "line": self.line, "title": self.title, "sources": list(self.sources),
            "headline": self.headline, "page": None if self.page is None else str(self.page),
            "figure": None if self.figure is None else str(self.figure),
            "skipped": self.skipped, "seconds": self.seconds, "reused": self.reused,
        }  # fmt: skip


@dataclass(frozen=True)
class SectionOutput:
    """What a section made: its headline, its page and the headline's figure (PNG)."""

    headline: str
    page: Report
    figure: bytes


Compute = Callable[[tuple[Run, ...], TourBudget, Path, Log], SectionOutput]


@dataclass(frozen=True)
class TourSpec:
    """A tour section: its research line, the zoo agents it needs, and what it runs."""

    slug: str
    line: str
    title: str
    agents: tuple[str, ...]
    compute: Compute


def hazards_section(
    runs: tuple[Run, ...], budget: TourBudget, folder: Path, log: Log
) -> SectionOutput:
    """Understanding RL Vision on the hazard agent: the value's NMF features named by object
    masks, the failure table with saws hidden and shown, and the saw's direction projected out
    against random directions (the same unseen levels and random numbers for every table)."""
    (run,) = runs
    agent, (step, _) = run.load_agent(), run.checkpoint()
    unseen = hazard_env_kwargs(run)
    options = FeatureOptions(n_obs=budget.frames, nmf=8)
    log(f"features: value attribution and NMF on {budget.frames} frames of unseen levels")
    fitted = fit_features(agent, {**unseen, "max_steps": FRAME_STEPS}, options)
    features = fitted.result()
    layer = fitted.layer  # the study's layer of this network
    direction = object_direction(agent, fitted.frames, layer, "saw")
    source = str(run.config.get("pretrained", {}).get("source", run.path))
    record = EditRecord(
        source=source, layer=layer, reader=reader_of(layer),
        direction_from="object", feature=None, requested="saw", label="saw",
        alignment=float("nan"), nmf_seed=options.seed,
        direction=tuple(float(x) for x in direction),
    )  # fmt: skip
    tables = ExperimentOptions(
        budget.levels, budget.random_controls, seed=HAZARD_SEED, cache=folder / "failure_tables"
    )
    exp = edit_experiment(
        agent, layer, {"saw": direction}, unseen, tables, lambda m: log(f"failures: {m}")
    )
    exp = replace(exp, verdict=edit_verdict(exp, "saw"), edit=record)
    shown, hidden = exp.baseline, exp.tables["invisible:saw"]
    failures = FailureStudy(
        run=str(run.path), step=step, episodes=budget.levels, policy="sampled",
        invisible=("saws",),
        splits={"unseen": SplitTables(shown, {"saws": hidden},
                                      {"saws": hidden_vs_shown(hidden, shown)})},
    )  # fmt: skip
    frames_note = f"the agent's play on unseen levels, the first {FRAME_STEPS} steps of each"
    page = tour_report.hazards_page(
        features, feature_strip(features), failures, exp, "zoo:hazards", frames_note
    )
    return SectionOutput(tour_report.hazards_headline(exp), page, tour_report.hazards_figure(exp))


def shipped_sae(run: Run) -> Path:
    """The SAE folder shipped beside a zoo agent (``analysis/sae/<name>``), where its run is laid
    out; one sentence when the entry ships none."""
    shipped = sorted(
        {Path(f).parent for f in run.config.get("pretrained", {}).get("sha256", {})
         if f.startswith("analysis/sae/")}
    )  # fmt: skip
    if not shipped:
        raise FileNotFoundError(
            f"{run.name} ships no SAE under analysis/sae/; the rook-dqn zoo entry holds its kl "
            "SAE there (reinstall policylens)."
        )
    return run.path / shipped[0]


def sae_section(runs: tuple[Run, ...], budget: TourBudget, folder: Path, log: Log) -> SectionOutput:
    """The rook DQN's shipped SAE spliced in against the original agent and zero/mean ablation
    of its hook, the same starts for every condition."""
    (run,) = runs
    sae_dir = shipped_sae(run)
    games = budget.sae_episodes
    log(f"the SAE {sae_dir.name} spliced in, zero and mean ablation: {games} games each")
    options = SAEEvalOptions(
        episodes=budget.sae_episodes, steps=budget.sae_steps, ablation_top=0, write=False
    )
    evaluation = eval_run_sae(run, sae_dir, options)
    return SectionOutput(
        tour_report.sae_headline(evaluation),
        tour_report.sae_page(evaluation, "zoo:rook-dqn"),
        tour_report.sae_figure(evaluation),
    )


def updates_section(
    runs: tuple[Run, ...], budget: TourBudget, folder: Path, log: Log
) -> SectionOutput:
    """Phase 1 against phase 2 of the isolating-updates protocol on the same episodes, with the
    protocol's noise control (phase 1 plus noise of the update's norm in every tensor), and the
    update's size tensor by tensor."""
    pre_run, post_run = runs
    pre = weight_updates.load_state(pre_run.checkpoint()[1])
    post = weight_updates.load_state(post_run.checkpoint()[1])
    weight_updates.check_compatible(pre, post, "the two phases' weights")
    update = weight_updates.weight_delta(pre, post)
    trainer = post_run.config["trainer"]
    noise = weight_updates.noise_like(
        update, noise_seed(int(trainer["seed"]), trainer["env_kwargs"]["reward_variant"])
    )
    models = {
        "phase 1": pre,
        "phase 2": post,
        tour_report.NOISE: weight_updates.apply_update(pre, noise, 1.0),
    }
    agent = pre_run.load_agent()
    evaluated = {}
    for name, state in models.items():
        log(f"{name}: {budget.lunar_episodes} episodes")
        evaluated[name] = evaluate_weights(agent, state, budget.lunar_episodes, LUNAR_SEED)
    fuel = {n: [-f for f in e["episodes"]["fuel"]] for n, e in evaluated.items()}
    summaries = {n: e["summary"] for n, e in evaluated.items()}
    others = [n for n in models if n != "phase 1"]
    result = {
        "episodes": budget.lunar_episodes,
        "seed": LUNAR_SEED,
        "models": summaries,
        "fuel": fuel,
        "fuel_vs_phase1": {n: stats.welch_difference(fuel[n], fuel["phase 1"]) for n in others},
        "landed_vs_phase1": {
            n: stats.difference(summaries[n]["landed"], summaries["phase 1"]["landed"])
            for n in others
        },
        "update": weight_updates.summarize_update(pre, update),
        "noise_top_mass": weight_updates.summarize_update(pre, noise)["top_mass"],
    }
    sources = ("zoo:lunar-phase1", "zoo:lunar-phase2")
    return SectionOutput(
        tour_report.updates_headline(result),
        tour_report.updates_page(result, sources),
        tour_report.updates_figure(result),
    )


TOUR = (
    TourSpec("hazards", "Understanding RL Vision",
             "features, failures with saws hidden, an edit (zoo:hazards)",
             ("hazards",), hazards_section),
    TourSpec("sae", "SAEs on a DQN",
             "the kl SAE spliced in vs ablation (zoo:rook-dqn)", ("rook-dqn",), sae_section),
    TourSpec("updates", "Isolating updates",
             "phase 1 vs phase 2 and the weight update (zoo:lunar-phase1, zoo:lunar-phase2)",
             ("lunar-phase1", "lunar-phase2"), updates_section),
)  # fmt: skip
"""The tour's sections in the order they run."""


def tour_section(spec: TourSpec, budget: TourBudget, folder: Path, log: Log) -> TourSection:
    """Run one section into ``folder`` (its page ``<slug>.html`` and ``<slug>.json``), or reuse
    the saved one while its zoo agents and budget are unchanged; skipped with one sentence when
    a zoo agent it needs is not installed."""
    sources = tuple(f"zoo:{name}" for name in spec.agents)
    missing = [name for name in spec.agents if name not in zoo_names()]
    if missing:
        names = ", ".join(f"zoo:{m}" for m in missing)
        verb = "is" if len(missing) == 1 else "are"
        why = f"skipped: {names} {verb} not in the zoo (`policylens zoo list`)"
        return TourSection(spec.line, spec.title, sources, skipped=why)
    runs = tuple(Run(source) for source in sources)
    key = {
        "version": TOUR_VERSION,
        "agents": {
            s: r.config.get("pretrained", {}).get("sha256")
            for s, r in zip(sources, runs, strict=True)
        },
        "budget": asdict(budget),
    }
    page, figure = folder / f"{spec.slug}.html", folder / f"{spec.slug}.png"
    saved = folder / f"{spec.slug}.json"
    if page.is_file() and figure.is_file() and saved.is_file():
        record = read_json(saved)
        if record.get("key") == key:
            log(f"{spec.line}: reusing the saved section ({page})")
            return TourSection(spec.line, spec.title, sources, record["headline"], page, figure,
                               seconds=record["seconds"], reused=True)  # fmt: skip
    log(f"{spec.line}: {spec.title}")
    started = time.perf_counter()
    made = spec.compute(runs, budget, folder, log)
    seconds = round(time.perf_counter() - started, 1)
    made.page.write(page)
    write_bytes(figure, made.figure)
    write_json(saved, {"key": key, "headline": made.headline, "seconds": seconds})  # last
    log(f"{spec.line}: {seconds:.0f} s -> {page}")
    return TourSection(spec.line, spec.title, sources, made.headline, page, figure, seconds=seconds)


def run_tour(folder: Path, budget: TourBudget, log: Log) -> list[TourSection]:
    """Every section of :data:`TOUR` into ``folder`` (held locked), at one torch thread: the zoo's
    networks are small and their batches a few hundred rows at most, where a second thread gains
    nothing alone and, beside any busy process, spins waiting (several times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with FolderLock(folder, "tour folder"):
            return [tour_section(spec, budget, folder, log) for spec in TOUR]
    finally:
        torch.set_num_threads(threads)


def write_index(
    analysis: Path, maze: Path, maze_lines: list[str], sections: list[TourSection]
) -> Path:
    """``analysis/index.html``: the maze report and every tour section's page, with headlines."""
    entries = [
        {"line": s.line, "title": s.title, "headline": s.headline, "skipped": s.skipped,
         "page": None if s.page is None else tour_report.relative(s.page, analysis),
         "figure": None if s.figure is None else s.figure.read_bytes()}
        for s in sections
    ]  # fmt: skip
    page = tour_report.index_page(tour_report.relative(maze, analysis), maze_lines, entries)
    return page.write(analysis / "index.html")
