"""Torch threads that follow the cores other processes leave free, so a training keeps its speed
alone and does not collapse beside other busy processes.

Why: PyTorch's CPU threads wait for each other at the end of every parallel operation. Beside a
CPU-bound process one of two threads is often descheduled, the other spins waiting for it, and a
2-thread training ran at 29% of its solo speed, while a 1-thread one kept 99% of its own. So the
trainers ask :class:`ThreadGovernor` every few seconds, and it sets as many threads as the cores
the other processes leave free (Linux: from ``/proc/stat``, the CPU time of this process's cores
minus its own), up to a maximum. A fixed count (``--threads N``) is never changed; pin it to
reproduce a run bit for bit, since the thread count changes the rounding of parallel sums.
"""

from __future__ import annotations

import os
import time

import torch

AUTO_MAX_THREADS = 2
"""The most threads an adaptive training uses (more do not speed up these small networks)."""


def usable_cores() -> list[int]:
    """The CPU ids this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return list(range(os.cpu_count() or 1))


def busy_seconds(cores: list[int]) -> float | None:
    """CPU seconds spent busy on ``cores`` since boot (``/proc/stat``), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    wanted = {f"cpu{c}" for c in cores}
    ticks = 0
    for line in lines:
        fields = line.split()
        if fields and fields[0] in wanted:
            # user nice system idle iowait irq softirq steal ...: all but idle and iowait
            values = [int(v) for v in fields[1:9]]
            ticks += sum(values) - values[3] - values[4]
    return ticks / os.sysconf("SC_CLK_TCK")


class ThreadGovernor:
    """Sets torch's thread count: fixed at ``threads`` (> 0), or adapted to the free cores (0)."""

    def __init__(self, threads: int, every_s: float = 2.0) -> None:
        if threads < 0:
            raise ValueError(f"threads must be >= 0 (0 = adapt to the free cores), got {threads}.")
        self.cores = usable_cores()
        self.adaptive = threads == 0
        self.most = min(AUTO_MAX_THREADS, len(self.cores)) if self.adaptive else threads
        self.every_s = every_s
        self.current = self.most
        torch.set_num_threads(self.current)
        self._last = self._sample()

    def _sample(self) -> tuple[float, float | None, float]:
        return time.perf_counter(), busy_seconds(self.cores), time.process_time()

    def others_cores(self) -> float | None:
        """Cores the other processes used since the last look (None when unknown)."""
        now = self._sample()
        (t0, busy0, own0), (t1, busy1, own1) = self._last, now
        self._last = now
        if busy0 is None or busy1 is None or t1 <= t0:
            return None
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / (t1 - t0)

    def update(self) -> int:
        """Re-check the free cores (at most every ``every_s`` seconds); returns the thread count."""
        if not self.adaptive or time.perf_counter() - self._last[0] < self.every_s:
            return self.current
        others = self.others_cores()
        if others is None:
            return self.current
        free = len(self.cores) - others
        wanted = max(1, min(self.most, round(free)))
        if wanted != self.current:
            torch.set_num_threads(wanted)
            self.current = wanted
        return self.current
