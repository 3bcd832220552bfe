"""The hazard world's pictures and report: a level gallery with hazards outlined, the trained
agent's play as a frame strip and a GIF, and the failure tables, drawn from the study's results."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from policylens.artifacts import write_bytes, write_png
from policylens.envs.hazards import HazardsConfig, generate_level, render_level
from policylens.report.html import Report, Section
from policylens.studies.hazards.episodes import HazardsEpisode
from policylens.studies.hazards.failures import FAILURE_CAUSES, FailureStudy
from policylens.studies.hazards.overview import HazardsOverview

GAP = 4


def _grid(images: Sequence[np.ndarray], cols: int) -> np.ndarray:
    """Images (of equal height) in a white-gapped grid, left-aligned."""
    rows = -(-len(images) // cols)
    h = max(im.shape[0] for im in images)
    w = max(im.shape[1] for im in images)
    canvas = np.full((rows * (h + GAP) - GAP, cols * (w + GAP) - GAP, 3), 255, np.uint8)
    for k, im in enumerate(images):
        r, c = divmod(k, cols)
        canvas[
            r * (h + GAP) : r * (h + GAP) + im.shape[0], c * (w + GAP) : c * (w + GAP) + im.shape[1]
        ] = im
    return canvas


def level_gallery(
    n: int = 8, seed: int = 0, config: HazardsConfig | None = None, tile_px: int = 8, cols: int = 2
) -> np.ndarray:
    """Levels ``seed .. seed + n - 1`` drawn whole, hazards outlined, in a grid."""
    if n < 1:
        raise ValueError(f"the gallery needs at least one level, got n={n}.")
    return _grid(
        [render_level(generate_level(s, config), tile_px) for s in range(seed, seed + n)], cols
    )


def episode_frames(episode: HazardsEpisode, tile_px: int = 8, every: int = 1) -> list[np.ndarray]:
    """The episode drawn whole at every ``every``-th step (the last included), path so far drawn."""
    last = len(episode.agent) - 1
    steps = sorted({*range(0, last + 1, every), last})
    return [
        render_level(
            episode.state_at(t), tile_px, trajectory=[tuple(p) for p in episode.agent[: t + 1]]
        )
        for t in steps
    ]


def frame_strip(episode: HazardsEpisode, frames: int = 6, tile_px: int = 8) -> np.ndarray:
    """``frames`` evenly spaced moments of an episode stacked top to bottom."""
    every = max(1, -(-(len(episode.agent) - 1) // max(frames - 1, 1)))
    return _grid(episode_frames(episode, tile_px, every), cols=1)


def gif_bytes(frames: Sequence[np.ndarray], ms_per_frame: int = 80) -> bytes:
    """An animated GIF (looping) of RGB frames."""
    from PIL import Image

    pics = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    pics[0].save(
        buf, format="GIF", save_all=True, append_images=pics[1:], duration=ms_per_frame, loop=0
    )
    return buf.getvalue()


def _rate(p: dict[str, Any]) -> str:
    return f"{p['rate']:.3f} [{p['ci'][0]:.3f}, {p['ci'][1]:.3f}]"


def failure_rows(result: FailureStudy) -> list[dict[str, Any]]:
    """One row per split and observation: completion and each cause's share of levels (95% CI)."""
    rows = []
    for split, tables in result.splits.items():
        conditions = {"all shown": tables.shown}
        conditions |= {f"{h} invisible": t for h, t in tables.hidden.items()}
        for label, t in conditions.items():
            row = {"levels": split, "observation": label, "n": t.episodes,
                   "completion": _rate(t.completion)}  # fmt: skip
            row |= {cause: _rate(t.of_levels(cause)) for cause in FAILURE_CAUSES}
            rows.append(row)
    return rows


def difference_rows(result: FailureStudy) -> list[dict[str, Any]]:
    """Per split and hidden hazard: hidden minus shown, for completion and each cause (95%
    Newcombe interval; "(none)" where it holds zero)."""
    rows = []
    for split, tables in result.splits.items():
        for hazard, d in tables.hidden_vs_shown.items():
            row: dict[str, Any] = {"levels": split, "hidden": hazard}
            for key in ("completion", *FAILURE_CAUSES):
                v = d[key]
                ci = f"{v['diff']:+.3f} [{v['ci'][0]:+.3f}, {v['ci'][1]:+.3f}]"
                row[key] = ci if v["effect"] else f"{ci} (none)"
            rows.append(row)
    return rows


def rows_table(rows: list[dict[str, Any]], title: str) -> Table:
    """Rows of equal keys as a console table (the keys are its columns)."""
    table = Table(*rows[0].keys(), title=title)
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    return table


def _gif_part(section: Section, data: bytes, alt: str) -> None:
    encoded = base64.b64encode(data).decode()
    section.parts.append(f'<img alt="{alt}" src="data:image/gif;base64,{encoded}">')


def render(overview: HazardsOverview, analysis: Path, out: Path | None = None) -> Path:
    """The run's report: level gallery, the agent on the levels it played (frame strips, a GIF)
    and the failure tables. Writes ``level_gallery.png``, ``agent.gif`` and
    ``hazards_report.html`` (or ``out``) under the run's ``analysis`` folder."""
    first, n = overview.first_level, overview.gallery_levels
    report = Report(
        f"policylens hazards report: {overview.name}",
        f"PPO agent ({overview.arch}) trained in {overview.env_id} with "
        f"{overview.env_kwargs}, seed {overview.train_seed}. Sampled actions; intervals are 95%.",
    )
    gallery = level_gallery(n, seed=first, config=overview.config)
    write_png(analysis / "level_gallery.png", gallery)
    report.section("Levels").figure(_png(gallery), "level gallery").note(
        f"Training levels {first}-{first + n - 1}, drawn whole. Outlines: saws red, enemies "
        "magenta, lava orange, chasms dark red; the agent is blue at the left, the coin yellow."
    )
    unseen = overview.split == "unseen"
    section = report.section("The agent on unseen levels" if unseen else "The agent")
    for k, ep in enumerate(overview.episodes):
        section.figure(_png(frame_strip(ep)), f"episode {k}").note(
            f"Level {ep.start.level_seed}: {'coin' if ep.success else ep.death_cause} after "
            f"{len(ep.agent) - 1} steps (white: the path so far)."
        )
    gif = gif_bytes(episode_frames(overview.episodes[0], every=2))
    write_bytes(analysis / "agent.gif", gif)
    _gif_part(section, gif, f"the agent playing {'an unseen' if unseen else 'a'} level")
    failures = overview.failures
    s = report.section("Failure table")
    s.table(failure_rows(failures)).note(
        "Each cause's share of all levels; 'multiple': several hazards struck in the same step. "
        "Unseen levels are those after the training levels' seeds."
    )
    if failures.invisible:
        s.text("Hiding a hazard from the observation: hidden minus shown, on the same levels "
               "with the same random numbers.")  # fmt: skip
        s.table(difference_rows(failures))
    s.json(failures.to_json())
    return report.write(out or analysis / "hazards_report.html")


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()
