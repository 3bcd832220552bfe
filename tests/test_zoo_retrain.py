"""Each card's command retrains its agent: the cheapest zoo entries (the corner maze agent, the
rook DQN) are trained again from the command their card records, and every headline figure of
the new agent, measured as the card's were, falls within the shipped 95% interval."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from policylens.agents.pretrained import RESULTS_FILE, zoo_folder
from policylens.cli import app
from policylens.runs import Run
from policylens.studies.zoo import headline_results


def training_command(name: str, out: Path) -> list[str]:
    """The card's (first) command, writing to ``out``: the training, without what follows it."""
    config = json.loads((zoo_folder(name) / "config.json").read_text())
    words = shlex.split(config["provenance"]["command"].split("&&")[0])
    assert words[:2] == ["policylens", "train"], words
    words = words[1:]
    words[words.index("--out") + 1] = str(out)
    return words


@pytest.mark.slow
@pytest.mark.parametrize("name", ["maze-corner", "rook-dqn"])
def test_the_card_command_retrains_the_agent_within_its_intervals(name, tmp_path):
    out = tmp_path / name
    result = CliRunner().invoke(app, [*training_command(name, out), "--quiet"])
    assert result.exit_code == 0, result.output
    shipped = json.loads((zoo_folder(name) / RESULTS_FILE).read_text())
    again = headline_results(Run(out), **shipped["measured_with"]["options"])
    assert again.keys() == shipped["metrics"].keys()
    for metric, stat in shipped["metrics"].items():
        value = again[metric].get("rate", again[metric].get("mean"))
        low, high = stat["ci"]
        assert low <= value <= high, (metric, value, stat)
