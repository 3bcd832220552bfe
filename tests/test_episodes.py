"""The episode tracker every trainer writes its episode metrics with."""

from __future__ import annotations

import math

import numpy as np
import pytest

from policylens.train.episodes import EpisodeTracker


def test_returns_lengths_success_path_ratio_and_outcomes():
    tracker = EpisodeTracker(2, outcomes=("blunder",))
    tracker.start({"dist_to_cheese": np.array([4, 2])}, np.arange(2))
    no = np.zeros(2, dtype=bool)
    tracker.step(np.array([0.0, 1.0]), no, no, {})
    # env 1 wins on its 2nd step; its next episode starts 5 from the cheese
    final = {"success": np.array([False, True]), "outcome": np.array(["", "mate"])}
    infos = {"final_info": final, "dist_to_cheese": np.array([3, 5])}
    tracker.step(np.array([0.0, 10.0]), np.array([False, True]), no, infos)
    row = tracker.drain()
    assert row == {"episodes": 1, "return": 11.0, "length": 2.0, "success": 1.0,
                   "path_ratio": 1.0, "blunder": 0.0}  # fmt: skip
    # env 0 is cut off after 3 steps (4 from the cheese): a failure of length 3
    final = {"success": np.array([False, False]), "outcome": np.array(["blunder", ""])}
    tracker.step(np.zeros(2), no, np.array([True, False]), {"final_info": final})
    row = tracker.drain()
    assert row["length"] == 3 and row["success"] == 0.0 and row["blunder"] == 1.0
    assert row["path_ratio"] == pytest.approx(3 / 4)
    assert math.isnan(tracker.drain()["success"])  # nothing finished since


def test_worlds_without_labels_count_termination_as_success_and_resume():
    tracker = EpisodeTracker(1)
    tracker.step(np.array([1.0]), np.array([False]), np.array([False]), {})
    restored = EpisodeTracker(1)
    restored.load_state_dict(tracker.state_dict())
    restored.step(np.array([1.0]), np.array([True]), np.array([False]), {})
    row = restored.drain()
    assert row == {"episodes": 1, "return": 2.0, "length": 2.0, "success": 1.0}
    assert "path_ratio" not in row  # the world labels no shortest path
