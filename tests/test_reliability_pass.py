"""CI runs the reliability pass (tests/reliability_pass.py) on its quick subset: every command's
numeric options, bad run paths, output flags and the API's wrong types, with no case allowed to
print a traceback, start work it should refuse, or change an existing file. The whole pass (over
a thousand cases, kill -9 and resume included) runs with ``python tests/reliability_pass.py``."""

from __future__ import annotations

import pytest
from reliability_pass import main as run_reliability_pass


@pytest.mark.slow
def test_quick_reliability_pass(capsys):
    code = run_reliability_pass(["--quick"])
    out = capsys.readouterr().out
    assert code == 0, out
