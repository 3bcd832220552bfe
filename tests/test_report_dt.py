"""`policylens dt report`: the decision transformer's static page written end to end on a tiny DT
run (calibration, RTG scan, attention by token type, DLA, patching; self-contained, no script),
its JSON equal to the studies' results, and the page without patching when no history changes
its action."""

from __future__ import annotations

import json
import re

import pytest
from test_explorer_dt import build_dt_run
from typer.testing import CliRunner

from policylens.cli import app

runner = CliRunner()
TITLES = ("RTG calibration", "RTG scan", "Attention by token type",
          "Direct logit attribution: top components",
          "Activation patching between a high and a low RTG")  # fmt: skip


@pytest.fixture(scope="module")
def dt_run(tmp_path_factory):
    return build_dt_run(tmp_path_factory.mktemp("dt_report"))


def report(*args):
    return runner.invoke(app, ["dt", "report", *(str(a) for a in args)])


def test_the_report_is_written_end_to_end(dt_run, tmp_path):
    out = tmp_path / "dt.html"
    r = report(dt_run, "--out", out, "--episodes", 2, "--target", -1, "--target", 1,
               "--histories", 16, "--high", 200, "--low", -200, "--min-gap", 0, "--top", 4,
               "--json")  # fmt: skip
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["report"] == str(out)
    page = out.read_text()
    for title in TITLES:
        assert f">{title}</h2>" in page, title
    assert page.count("data:image/png;base64,") == 4  # calibration, scan, attention, DLA
    assert "<script" not in page and "http://" not in page and "https://" not in page
    cal = data["calibration"]
    assert [row["target"] for row in cal["rows"]] == [-1.0, 1.0] and cal["episodes"] == 2
    assert len(data["scan"]["rows"]) == 21 and data["scan"]["histories"] == 16
    assert [h["head"] for h in data["attention"]["heads"]] == ["L0H0", "L0H1"]
    assert data["attribution"]["max_sum_error"] < 1e-5
    rows = {row["component"]: row for row in data["patching"]["rows"]}
    assert rows["residual stream before the unembed"]["recovered"]["mean"] == pytest.approx(1)
    # every patching row is in the page's table, with its interval
    for name, row in rows.items():
        rec = row["recovered"]
        assert f"<td>{name}</td><td>{rec['mean']:.3f} [" in page, name
    top = [c["component"] for c in data["attribution"]["components"][:4]]
    assert all(re.search(rf"<td>{re.escape(c)}</td>", page) for c in top)


def test_without_a_changed_action_the_page_says_why(dt_run, tmp_path):
    out = tmp_path / "same.html"
    r = report(dt_run, "--out", out, "--episodes", 1, "--target", 0, "--target", 1,
               "--histories", 4, "--high", 0.5, "--low", 0.5001, "--min-gap", 1000)  # fmt: skip
    assert r.exit_code == 0, r.output
    page = out.read_text()
    assert "Not available: only 0 of" in page and "wrote" in r.output
    assert page.count("data:image/png;base64,") == 4


def test_bad_outputs_and_runs_are_refused_before_any_play(dt_run, tmp_path):
    r = report(dt_run, "--out", tmp_path)
    assert r.exit_code == 2 and "folder" in r.output
    r = report(tmp_path / "nope", "--out", tmp_path / "x.html")
    assert r.exit_code == 2
    assert not (tmp_path / "x.html").exists()
