"""Understanding RL Vision (Hilton et al. 2020) in the hazard world: what kills a CoinRun agent."""

from policylens.lazy import lazy_submodules

__all__, __getattr__, __dir__ = lazy_submodules(__name__, __path__)
