"""Ground-truth masks at a layer's resolution: the one resizing every world's masks go through."""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import torch
import torch.nn.functional as F


def resize_masks(
    masks: dict[str, np.ndarray], hw: tuple[int, int], any_cover: Collection[str] = ()
) -> dict[str, np.ndarray]:
    """Masks ``name -> bool (N, H, W)`` at ``hw``: a layer cell is on where its mask covers at
    least half of it, or any part of it for the names in ``any_cover`` (objects smaller than a
    cell, which a half rule would drop). Masks already at ``hw`` pass unchanged."""
    out = {}
    for name, m in masks.items():
        if m.shape[1:] == tuple(hw):
            out[name] = m
            continue
        cover = F.adaptive_avg_pool2d(torch.as_tensor(m, dtype=torch.float32)[:, None], hw)[:, 0]
        out[name] = (cover > 0).numpy() if name in any_cover else (cover >= 0.5).numpy()
    return out
