"""The CLI's exits as a user meets them: a bug shows its traceback and where to report it (exit
1), ``--debug`` shows the traceback of any error, and ``policylens explore`` really serves a run
on 127.0.0.1 behind its token."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from policylens.cli import app

runner = CliRunner()
POLICYLENS = str(Path(sys.executable).parent / "policylens")


def broken_find_runs(error: Exception):
    def find_runs(*args, **kwargs):
        raise error

    return find_runs


def test_a_bug_exits_1_with_its_traceback_and_where_to_report_it(monkeypatch, tmp_path):
    monkeypatch.setattr("policylens.runs.find_runs", broken_find_runs(RuntimeError("boom")))
    r = runner.invoke(app, ["runs", str(tmp_path)])
    assert r.exit_code == 1
    assert "Traceback" in r.output and "RuntimeError: boom" in r.output
    assert "This is a bug in policylens (RuntimeError)" in r.output and "report it" in r.output


def test_a_user_error_is_one_sentence_and_debug_shows_its_traceback(monkeypatch, tmp_path):
    monkeypatch.setattr("policylens.runs.find_runs", broken_find_runs(ValueError("bad input")))
    r = runner.invoke(app, ["runs", str(tmp_path)])
    assert r.exit_code == 2 and r.output.strip() == "error: bad input"
    debug = runner.invoke(app, ["--debug", "runs", str(tmp_path)])
    assert debug.exit_code != 0 and isinstance(debug.exception, ValueError)  # not swallowed
    assert str(debug.exception) == "bad input"


@pytest.mark.slow
def test_explore_serves_a_run_on_loopback_behind_its_token(tmp_path):
    env = {**os.environ, "POLICYLENS_HOME": str(tmp_path)}
    server = subprocess.Popen(
        [POLICYLENS, "explore", "zoo:maze-corner", "--no-browser", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        line = ""
        while "http://" not in line:
            line = server.stdout.readline()
            assert line or server.poll() is None, "the explorer exited before serving"
        url = re.search(r"http://\S+/", line).group(0)
        host, token = re.match(r"http://([^/]+)/([^/]+)/", url).groups()
        assert host.startswith("127.0.0.1:") and len(token) >= 24
        with urllib.request.urlopen(url + "api/run", timeout=60) as answer:
            info = json.loads(answer.read())
        assert info["env_id"] == "policylens/Maze-v0" and info["arch"] == "maze_cnn"
        assert len(info["actions"]) == 4 and info["step"] == info["checkpoints"][-1]
        wrong = f"http://{host}/{'x' * len(token)}/api/run"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(wrong, timeout=60)
        assert refused.value.code in (403, 404)
        evil = urllib.request.Request(url + "api/run", headers={"Host": "evil.example"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(evil, timeout=60)
        assert refused.value.code == 403
    finally:
        server.terminate()
        server.wait(timeout=30)
