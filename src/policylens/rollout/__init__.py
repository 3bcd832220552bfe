"""Playing agents in worlds: the one rollout engine (``run_episodes``, ``steps``, ``Policy``),
rollout datasets into a lazy on-disk store (``collect``), run statistics (``stats``)."""

from policylens.rollout.collect import CollectOptions, collect, collect_run, numeric_labels
from policylens.rollout.engine import (
    Episode,
    EpisodeOptions,
    Labels,
    Policy,
    Step,
    run_episodes,
    steps,
)
from policylens.rollout.store import (
    Store,
    StoreArray,
    StoreWriter,
    is_store,
    open_store,
    write_store,
)

__all__ = [
    "CollectOptions",
    "Episode",
    "EpisodeOptions",
    "Labels",
    "Policy",
    "Step",
    "run_episodes",
    "steps",
    "Store",
    "StoreArray",
    "StoreWriter",
    "collect",
    "collect_run",
    "is_store",
    "numeric_labels",
    "open_store",
    "write_store",
]
