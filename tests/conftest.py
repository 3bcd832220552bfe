"""Test-wide settings: one torch and one BLAS thread per test process (CI runs two pytest
workers on 2 cores; more threads oversubscribe them)."""

import torch
from threadpoolctl import threadpool_limits

torch.set_num_threads(1)
threadpool_limits(1)
