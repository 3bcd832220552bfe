"""The policylens explorer: a local web app to look inside an agent while it acts.

``policylens explore RUN`` serves it (:func:`~policylens.explorer.app.serve`). Views: a
trajectory scrubber, the observation with attribution overlays and NMF features, per-layer
activations with dataset examples and clusters, a maze editor, interventions (steering vectors,
channel clamping, SAEs spliced in), SAE feature pages and the run's overview. It calls agents,
rollout, lenses and studies and computes nothing of its own; world-specific parts sit behind
each world as :mod:`policylens.worlds` describes it (the maze's study-backed views in :mod:`~policylens.explorer.worlds`).
"""

from policylens.explorer.app import create_app, serve
from policylens.explorer.session import Explorer

__all__ = ["Explorer", "create_app", "serve"]
