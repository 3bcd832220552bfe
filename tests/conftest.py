"""Test-wide settings: one torch thread per test process (CI runs two pytest workers on 2 cores)."""

import torch

torch.set_num_threads(1)
