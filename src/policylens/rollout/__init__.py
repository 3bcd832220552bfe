"""Rollout datasets: trajectories, ground-truth labels and activations in a lazy on-disk store."""

from policylens.rollout.collect import collect, collect_run, numeric_labels
from policylens.rollout.store import (
    Store,
    StoreArray,
    StoreWriter,
    is_store,
    open_store,
    write_store,
)

__all__ = [
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
