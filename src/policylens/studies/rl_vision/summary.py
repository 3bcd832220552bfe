"""The whole study of one hazard run, read back from what its commands saved: the named
features, the dissected failures, the hallucinations, edited runs' experiments (their verdicts
judged again by today's rule) and a diversity sweep; the report draws this."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from policylens.artifacts import read_json
from policylens.runs import Run
from policylens.studies.rl_vision.dissection import DissectionResult
from policylens.studies.rl_vision.diversity import DiversityResult, diversity_result
from policylens.studies.rl_vision.editing import EditExperiment
from policylens.studies.rl_vision.features import FeaturesResult
from policylens.studies.rl_vision.hallucinations import HallucinationResult
from policylens.worlds.hazards import hazard_env_kwargs


@dataclass(frozen=True)
class SummaryOptions:
    """What the summary takes besides the run's own saved results."""

    edits: tuple[Path, ...] = ()
    """Edited runs (``policylens edit --levels N``) whose experiments are included."""
    sweep: Path | None = None
    """A diversity sweep folder (``policylens sweep --world hazards``) to include."""


@dataclass(frozen=True)
class StudySummary:
    """A hazard run's saved study results (None: that part was not run)."""

    analysis: Path
    """The run's analysis folder, which also holds the figures the commands drew."""
    features: FeaturesResult | None
    dissection: DissectionResult | None
    hallucinations: HallucinationResult | None
    edits: tuple[tuple[str, EditExperiment], ...]
    """Per edited run: its folder's name and its experiment."""
    diversity: DiversityResult | None


def run_summary(run: Run, options: SummaryOptions) -> StudySummary:
    """Read the study's saved results of ``run`` and of the edited runs and sweep named."""
    hazard_env_kwargs(run)  # refuses a run from another world with its own sentence
    analysis = run.analysis_dir

    def saved(name: str) -> dict | None:
        path = analysis / name
        return read_json(path) if path.exists() else None

    features = saved("rl_vision_features.json")
    dissection = saved("rl_vision_dissection.json")
    hallucinations = saved("rl_vision_hallucinations.json")
    edits = []
    for edit in options.edits:
        file = Path(edit) / "analysis" / "edit_experiment.json"
        if not file.exists():
            raise FileNotFoundError(f"{file} is missing; run `policylens edit ... --levels N`.")
        edits.append((Path(edit).name, EditExperiment.from_json(read_json(file))))
    return StudySummary(
        analysis=analysis,
        features=FeaturesResult.from_json(features) if features else None,
        dissection=DissectionResult.from_json(dissection) if dissection else None,
        hallucinations=HallucinationResult.from_json(hallucinations) if hallucinations else None,
        edits=tuple(edits),
        diversity=diversity_result(Path(options.sweep)) if options.sweep is not None else None,
    )
