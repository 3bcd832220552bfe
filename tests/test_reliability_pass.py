"""CI runs the reliability pass (tests/reliability_pass.py) on its quick subset: every command's
numeric options, bad run paths, output flags and the API's wrong types, with no case allowed to
print a traceback, start work it should refuse, or change an existing file. The whole pass (over
a thousand cases, kill -9 and resume included) runs with ``python tests/reliability_pass.py``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


@pytest.mark.slow
def test_quick_reliability_pass(capsys):
    spec = importlib.util.spec_from_file_location(
        "reliability_pass", Path(__file__).with_name("reliability_pass.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    code = module.main(["--quick"])
    out = capsys.readouterr().out
    assert code == 0, out
