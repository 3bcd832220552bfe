"""The zoo and the pretrained layout: save_pretrained loads back bit-exact, offline, from a folder,
``zoo:NAME`` or ``hf://org/name``; an altered weight file is refused by its sha256; nothing is
written over a run; a zoo name opens as a run for every command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from oracles import require

from policylens import load_agent
from policylens.agents import build_agent
from policylens.agents.pretrained import source_name
from policylens.artifacts import sha256_of


def small_agent(seed: int = 0):
    return build_agent("maze_cnn", (3, 9, 9), 4, seed=seed)


def same_weights(a, b) -> bool:
    sa, sb = a.net.state_dict(), b.net.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_save_pretrained_loads_back_bit_exact(tmp_path):
    agent = small_agent()
    folder = agent.save_pretrained(tmp_path / "agent", extra={"provenance": {"seed": 0}})
    config = json.loads((folder / "config.json").read_text())
    assert config["policylens"] == 1 and config["agent"] == agent.config
    assert config["sha256"] == {"model.safetensors": sha256_of(folder / "model.safetensors")}
    assert config["provenance"] == {"seed": 0}
    again = load_agent(folder)
    assert same_weights(agent, again)
    obs = torch.zeros(2, 3, 9, 9)
    assert torch.equal(agent(obs)[0], again(obs)[0])


def test_an_altered_weight_file_is_refused_in_one_sentence(tmp_path):
    folder = small_agent().save_pretrained(tmp_path / "agent")
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match the sha256") as e:
        load_agent(folder)
    assert "\n" not in str(e.value)
    # a weight file that is another agent's (valid safetensors, wrong bytes) is refused too
    small_agent(seed=1).save_weights(weights)
    with pytest.raises(ValueError, match="does not match the sha256"):
        load_agent(folder)


def test_save_pretrained_writes_over_nothing_it_did_not_create(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.json").write_text('{"trainer": {}, "agent": {}}')
    with pytest.raises(ValueError, match="already exists; pass overwrite=True"):
        small_agent().save_pretrained(folder)
    assert json.loads((folder / "config.json").read_text()) == {"trainer": {}, "agent": {}}
    assert not (folder / "model.safetensors").exists()
    with pytest.raises(ValueError, match="takes a folder"):
        small_agent().save_pretrained(tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="may not set"):
        small_agent().save_pretrained(tmp_path / "y", extra={"sha256": {}})
    saved = small_agent().save_pretrained(tmp_path / "z")
    small_agent(seed=1).save_pretrained(saved, overwrite=True)
    assert same_weights(load_agent(saved), small_agent(seed=1))


def test_an_unknown_zoo_agent_is_one_sentence_with_the_closest_names():
    from policylens.agents.pretrained import zoo_names

    names = zoo_names()
    assert names, "the zoo ships its agents inside the package"
    with pytest.raises(ValueError, match="Unknown zoo agent") as e:
        load_agent(f"zoo:{names[0]}x")
    assert names[0] in str(e.value) and "\n" not in str(e.value)


def lay_out_hub_cache(hub: Path, repo: str, folder: Path, revision: str = "main") -> None:
    """The files of ``folder`` as huggingface_hub's cache holds a downloaded snapshot of ``repo``
    (``models--org--name/snapshots/<commit>/`` and ``refs/<revision>``), so that
    ``snapshot_download`` finds it offline."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = hub / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (root / "refs").mkdir()
    (root / "refs" / revision).write_text(commit)


@pytest.mark.slow
def test_hf_agents_load_offline_from_the_hub_cache(tmp_path):
    require("huggingface_hub")
    agent = small_agent()
    folder = agent.save_pretrained(tmp_path / "agent")
    lay_out_hub_cache(tmp_path / "hf" / "hub", "policylens/tiny-maze", folder)
    expected = str(folder / "model.safetensors")
    script = (
        "import sys, torch\n"
        "from policylens import load_agent\n"
        "from policylens.agents.load import load_agent as direct\n"
        "a = load_agent(sys.argv[1])\n"
        "b = direct(sys.argv[2])\n"
        "same = all(torch.equal(x, y) for x, y in zip(a.net.state_dict().values(), "
        "b.net.state_dict().values()))\n"
        "print('same' if same else 'different')\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    for source in ("hf://policylens/tiny-maze", "hf://policylens/tiny-maze@main"):
        out = subprocess.run(
            [sys.executable, "-c", script, source, str(folder)],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "same"
    missing = subprocess.run(
        [sys.executable, "-c", script, "hf://policylens/absent", expected],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert missing.returncode != 0 and "cannot fetch hf://policylens/absent" in missing.stderr


def test_hub_and_zoo_names_become_folder_names():
    assert source_name("zoo:maze-corner") == "maze-corner"
    assert source_name("hf://org/name") == "org--name"
    assert source_name("hf:/org/name@v1.0") == "org--name@v1.0"  # as a Path writes it
    with pytest.raises(ValueError, match="neither zoo:NAME nor hf://"):
        source_name("maze-corner")


# --------------------------------------------------------------------------- export and the zoo
@pytest.fixture(scope="module")
def tiny_maze_run(tmp_path_factory):
    from policylens import worlds
    from policylens.train.ppo import train_ppo

    config = (
        worlds.get("maze")
        .recipe(
            world_size=7, total_steps=16 * 32 * 2, num_envs=16, num_steps=32, precision="float32"
        )
        .config()
    )
    return train_ppo(config, tmp_path_factory.mktemp("runs") / "tiny", progress=False)


@pytest.fixture
def zoo(tmp_path, monkeypatch, tiny_maze_run):
    """A zoo of one entry exported from a tiny maze run, in place of the shipped one, and a
    fresh cache for the run folders zoo names open as."""
    from policylens.agents import pretrained
    from policylens.studies.zoo import ExportOptions, export

    monkeypatch.setattr(pretrained, "ZOO", tmp_path / "zoo")
    monkeypatch.setenv("POLICYLENS_HOME", str(tmp_path / "home"))
    options = ExportOptions(
        name="tiny-maze",
        command="policylens train maze --out runs/tiny --world-size 7",
        description="A barely trained maze agent for tests.",
        headline={"episodes": 40},
    )
    return export(tiny_maze_run, tmp_path / "zoo" / "tiny-maze", options)


def test_export_writes_a_pinned_card_with_results_measured_now(zoo, tiny_maze_run):
    from policylens.studies.maze.misgeneralization import headline_results

    folder = zoo.folder
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "results.json",
    ]  # fmt: skip  (no lock file left behind)
    config = json.loads((folder / "config.json").read_text())
    assert set(config["sha256"]) == {"model.safetensors", "results.json"}
    assert config["run"] == tiny_maze_run.config
    p = config["provenance"]
    assert p["steps"] == tiny_maze_run.checkpoint()[0] and p["seed"] == 0
    assert p["command"].startswith("policylens train maze") and p["world"] == "maze"
    results = json.loads((folder / "results.json").read_text())
    # the same evaluation run again by hand gives the same figures (seeded)
    assert results["metrics"] == json.loads(
        json.dumps(headline_results(tiny_maze_run, episodes=40))
    )
    card = (folder / "README.md").read_text()
    assert "zoo:tiny-maze" in card and p["command"] in card and "train_success" in card
    assert same_weights(load_agent("zoo:tiny-maze"), tiny_maze_run.load_agent())


def test_export_refuses_a_folder_that_holds_something(zoo, tiny_maze_run):
    from policylens.studies.zoo import ExportOptions, export

    with pytest.raises(ValueError, match="is not empty"):
        export(tiny_maze_run, zoo.folder, ExportOptions(name="again", command="x"))
    with pytest.raises(ValueError, match="name must be letters"):
        export(tiny_maze_run, zoo.folder.parent / "new", ExportOptions(name="a b", command="x"))


def test_a_zoo_name_opens_as_a_finished_run_for_every_command(zoo, tiny_maze_run, tmp_path):
    from typer.testing import CliRunner

    from policylens.cli import app
    from policylens.runs import Run

    run = Run("zoo:tiny-maze")
    assert run.done and run.path == tmp_path / "home" / "zoo" / "tiny-maze"
    assert run.config["trainer"] == tiny_maze_run.config["trainer"]
    assert same_weights(run.load_agent(), tiny_maze_run.load_agent())
    again = Run("zoo:tiny-maze")  # laid out once: the same folder, untouched
    assert again.path == run.path and again.checkpoints() == run.checkpoints()
    runner = CliRunner()
    out = runner.invoke(app, ["eval", "zoo:tiny-maze", "--episodes", "10", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["episodes"] == 10
    listed = runner.invoke(app, ["zoo", "list", "--json"])
    assert [e["name"] for e in json.loads(listed.output)] == ["tiny-maze"]
    info = runner.invoke(app, ["zoo", "info", "tiny-maze"])
    assert info.exit_code == 0 and "policylens train maze" in info.output
    unknown = runner.invoke(app, ["eval", "zoo:tiny-mazee"])
    assert unknown.exit_code == 2 and "Did you mean 'tiny-maze'" in unknown.output


def test_an_altered_zoo_entry_is_refused_everywhere(zoo):
    from typer.testing import CliRunner

    from policylens.cli import app

    results = zoo.folder / "results.json"
    results.write_text(results.read_text().replace("train_success", "train_succes"))
    with pytest.raises(ValueError, match="does not match the sha256"):
        load_agent("zoo:tiny-maze")
    out = CliRunner().invoke(app, ["zoo", "info", "tiny-maze"])
    assert out.exit_code == 2 and "does not match the sha256" in out.output


def test_a_run_still_training_is_exported_only_when_asked_and_says_so(tmp_path):
    from policylens import worlds
    from policylens.studies.zoo import ExportOptions, export
    from policylens.train.ppo import train_ppo

    config = (
        worlds.get("maze")
        .recipe(
            world_size=7, total_steps=16 * 32 * 4, num_envs=16, num_steps=32, precision="float32"
        )
        .config()
    )
    run = train_ppo(config, tmp_path / "run", progress=False, stop_after_updates=2)
    assert not run.done
    options = ExportOptions(name="partial", command="x", headline={"episodes": 10})
    with pytest.raises(ValueError, match="has not finished training"):
        export(run, tmp_path / "partial", options)
    entry = export(run, tmp_path / "partial", replace(options, unfinished=True))
    assert entry.provenance["finished"] is False and entry.provenance["planned_steps"] == 2048
    card = (entry.folder / "README.md").read_text()
    assert f"**Still training**: {entry.provenance['steps']:,} of 2,048 planned steps" in card


def test_the_explorer_serves_a_zoo_agent(zoo):
    from fastapi.testclient import TestClient

    from policylens.explorer import Explorer, create_app
    from policylens.explorer.security import loopback_hosts

    explorer = Explorer("zoo:tiny-maze")
    try:
        app = create_app(explorer, "zoo-test-token-0123456789", loopback_hosts(8765))
        client = TestClient(app, base_url="http://127.0.0.1:8765")
        found = client.get("/zoo-test-token-0123456789/api/run")
        assert found.status_code == 200, found.text
        assert found.json()["world"] == "maze"
    finally:
        explorer.jobs.close()


def test_every_zoo_file_ships_in_the_package():
    """``pip install`` users get the zoo: each file under it matches a package-data pattern."""
    import re
    import tomllib

    from policylens.agents.pretrained import ZOO

    pyproject = tomllib.loads((ZOO.parent.parent.parent / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["policylens"]
    package = ZOO.parent
    files = [f.relative_to(package).as_posix() for f in ZOO.rglob("*") if f.is_file()]
    assert files
    # as setuptools globs them: "*" stays within one part of the path
    globs = [re.compile(re.escape(p).replace(r"\*", "[^/]*")) for p in patterns]
    left_out = [f for f in files if not any(g.fullmatch(f) for g in globs)]
    assert left_out == []
