"""The zoo and the pretrained layout: save_pretrained loads back bit-exact, offline, from a folder,
``zoo:NAME`` or ``hf://org/name``; an altered weight file is refused by its sha256; nothing is
written over a run; a zoo name opens as a run for every command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from policylens import load_agent
from policylens.agents import build_agent
from policylens.agents.pretrained import source_name
from policylens.artifacts import sha256_of


def small_agent(seed: int = 0):
    torch.manual_seed(seed)
    return build_agent("maze_cnn", (3, 9, 9), 4)


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
    if not names:
        pytest.skip("the zoo ships no agent yet")
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
    pytest.importorskip("huggingface_hub")
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
