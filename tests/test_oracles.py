"""The oracle rule (tests/oracles.py): in CI every peer the suite checks against is present."""

import pytest
from oracles import INSTALL, require


@pytest.mark.parametrize("module", sorted(INSTALL))
def test_every_oracle_imports(module):
    """Fails in CI (skips on a laptop) with the install line when one oracle is missing."""
    require(module)


def test_a_missing_oracle_fails_in_ci_with_its_install_line(monkeypatch):
    monkeypatch.setenv("CI", "1")
    monkeypatch.setitem(INSTALL, "no_such_oracle", "pip install no-such-oracle")
    with pytest.raises(pytest.fail.Exception, match="pip install no-such-oracle"):
        require("no_such_oracle.sub")


def test_a_missing_oracle_skips_outside_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setitem(INSTALL, "no_such_oracle", "pip install no-such-oracle")
    with pytest.raises(pytest.skip.Exception, match="pip install no-such-oracle"):
        require("no_such_oracle")
