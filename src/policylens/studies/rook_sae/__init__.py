"""Sparse autoencoders on agents acting in a world (DuPlessie's rook-endgame SAEs, and any world).

:mod:`policylens.agents.sae` holds the SAE module, hook sites and splicing hooks;
:mod:`policylens.lenses.sae` trains SAEs on plain tensors. This study ties them to an agent:

- :mod:`.play`: how well a rook-endgame agent mates, per opponent and exploration rate.
- :mod:`.data`: play the agent in a :class:`~.data.PlaySetting` (the rollout engine) and keep
  observations, outputs and one hook's activations (:class:`~.data.ActivationData`), or read them
  from a ``policylens collect`` store.
- :mod:`.evaluation`: the agent with the SAE spliced in (success, return, action agreement, KL),
  offline and in the world, beside zero- and mean-ablation of the whole hook: SAEs are judged by
  behaviour first.
- :mod:`.latents`: what each latent does: where it fires, the effect of removing it, dashboard cards.
- :mod:`.concepts`: what each live latent means: its best-matching ground-truth concept.
- :mod:`.quality`: dead latents against the agent's quality over runs and checkpoints.
- :mod:`.runs`: the entry points on a run folder, each ``(run, options) -> result``: train
  (:class:`~.runs.SAETrainOptions`), evaluate (:class:`~.runs.SAEEvalOptions`) and dashboard
  data (:class:`~.runs.DashboardOptions`), rendered by :mod:`policylens.report.sae`.
"""
