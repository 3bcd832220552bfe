"""The top-level API: the names `import policylens` offers, its lazy loading, and the README's
"From Python" example run as written (on a tiny run instead of the demo's)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import policylens
from policylens import worlds

README = Path(__file__).resolve().parents[1] / "README.md"
NAMES = [
    "HookedAgent",
    "Run",
    "agents",
    "build_agent",
    "envs",
    "lenses",
    "load_agent",
    "make",
    "make_vec",
    "report",
    "rollout",
    "studies",
    "train",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from policylens.train.ppo import PPOConfig, train_ppo

    out = tmp_path_factory.mktemp("api") / "run"
    config = PPOConfig(
        env_id=worlds.get("maze").env_id,
        total_steps=16 * 32 * 2,
        num_envs=16,
        num_steps=32,
        env_kwargs={"cheese_region": 1, "max_steps": 40},
    )
    train_ppo(config, out, progress=False)
    return out


def readme_python_example() -> str:
    """The python code block of the README's "## From Python" section."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## From Python\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the From Python section should hold one python block"
    return blocks[0]


def substitute(code: str, old: str, new: str) -> str:
    assert code.count(old) == 1, f"the README example no longer contains {old!r}"
    return code.replace(old, new)


def test_readme_from_python_example_runs(tiny_run: Path, capsys: pytest.CaptureFixture) -> None:
    code = readme_python_example()
    code = substitute(code, '"runs/demo"', repr(str(tiny_run)))
    code = substitute(code, "evaluate(agent, 200,", "evaluate(agent, 8,")  # fewer episodes
    code = substitute(code, "run_episodes(agent, 20,", "run_episodes(agent, 4,")
    exec(compile(code, f"{README}:From Python", "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out
    assert "'res1.hook_out'" in printed and "'success'" in printed
    assert re.search(r"^\d of 4 reached the cheese$", printed, re.M)
    assert "['0.hook_out', '1.hook_out', '2.hook_out', 'hook_logits', 'hook_value']" in printed


def test_readme_example_uses_only_public_names() -> None:
    """The example imports nothing but ``policylens`` (and torch): every name hangs off it."""
    imports = re.findall(r"^(?:from|import) (\S+)", readme_python_example(), re.M)
    assert set(imports) == {"policylens", "torch"}


def test_top_level_names_are_listed_and_resolve() -> None:
    assert set(NAMES) <= set(dir(policylens)) and set(NAMES) <= set(policylens.__all__)
    from policylens import agents, envs, runs

    assert policylens.load_agent is agents.load_agent
    assert policylens.HookedAgent is agents.HookedAgent
    assert policylens.build_agent is agents.build_agent
    assert policylens.Run is runs.Run
    assert policylens.make is envs.make and policylens.make_vec is envs.make_vec
    for name in ("rollout", "lenses", "studies", "report", "train", "agents"):
        assert getattr(policylens, name).__name__ == f"policylens.{name}"
    with pytest.raises(AttributeError, match="has no attribute 'lod_agent'"):
        policylens.lod_agent  # noqa: B018


def test_import_policylens_loads_no_torch() -> None:
    """`import policylens` (and listing its names) stays fast: torch loads on first use."""
    code = (
        "import sys, policylens; names = dir(policylens); "
        "assert 'load_agent' in names and 'torch' not in sys.modules, sorted(sys.modules); "
        "policylens.load_agent; assert 'torch' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_load_agent_reads_a_run_folder_as_run_does(tiny_run: Path) -> None:
    """A run folder loads its latest checkpoint (it was refused with a misleading message)."""
    agent = policylens.load_agent(tiny_run)
    same = policylens.Run(tiny_run).load_agent()
    obs = policylens.make("policylens/Maze-v0").reset(seed=1)[0]
    torch.testing.assert_close(agent(obs)[0], same(obs)[0], rtol=0, atol=0)
    first = policylens.Run(tiny_run).load_agent(0)
    assert not torch.equal(agent(obs)[0], first(obs)[0])
