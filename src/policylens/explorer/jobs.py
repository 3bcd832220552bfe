"""Background jobs: work longer than an interaction (a new rollout, NMF, an SAE's data) runs on a
worker thread and reports its progress, so the page shows a bar and the other views stay live.

A job is keyed by what it computes; asking again for a running or finished key returns the same
job, so two views (or a reload) never start the same work twice.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("policylens.explorer")

Progress = Callable[[float, str], None]
"""``progress(fraction, message)``: a job's report of how far it is."""

QUICK_S = 0.08
"""How long a request waits for a fresh job before answering "pending" (202 with the job)."""


@dataclass
class Job:
    """One piece of background work and what the page may know about it."""

    key: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    status: str = "running"
    """running, done or failed."""
    progress: float = 0.0
    message: str = ""
    error: str = ""
    """The one sentence a failed job ends with."""
    result: Any = None
    done: threading.Event = field(default_factory=threading.Event)

    def report(self, fraction: float, message: str = "") -> None:
        self.progress = min(max(float(fraction), 0.0), 1.0)
        if message:
            self.message = message

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "key": self.key, "status": self.status,
                "progress": self.progress, "message": self.message, "error": self.error}  # fmt: skip


class Pending(Exception):
    """A resource is still being computed by ``job``; the API answers 202 with the job."""

    def __init__(self, job: Job) -> None:
        super().__init__(job.key)
        self.job = job


class Jobs:
    """A small pool of worker threads and the jobs it ran (the newest ``keep`` are remembered)."""

    def __init__(self, workers: int = 1, keep: int = 64) -> None:
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="explorer-job")
        self.by_id: OrderedDict[str, Job] = OrderedDict()
        self.by_key: dict[str, Job] = {}
        self.keep = keep
        self.lock = threading.Lock()

    def start(self, key: str, work: Callable[[Progress], Any]) -> Job:
        """The job computing ``key``: the running or finished one, else a new one for ``work``.

        A failed job is started afresh when asked again (the cause may have been fixed).
        """
        with self.lock:
            job = self.by_key.get(key)
            if job is not None and job.status != "failed":
                return job
            job = Job(key)
            self.by_key[key] = job
            self.by_id[job.id] = job
            while len(self.by_id) > self.keep:
                _, old = self.by_id.popitem(last=False)
                if self.by_key.get(old.key) is old:
                    del self.by_key[old.key]
        self.pool.submit(self._run, job, work)
        return job

    def _run(self, job: Job, work: Callable[[Progress], Any]) -> None:
        try:
            job.result = work(job.report)
            job.progress, job.status = 1.0, "done"
        except (ValueError, FileNotFoundError, KeyError) as e:
            job.error = str(e.args[0] if isinstance(e, KeyError) and e.args else e)
            job.status = "failed"
        except Exception as e:  # a bug: keep the server up, say so, log the traceback
            log.error("job %s failed:\n%s", job.key, traceback.format_exc())
            job.error = f"internal error in {job.key}: {type(e).__name__}: {e}"
            job.status = "failed"
        finally:
            job.done.set()

    def result(self, key: str, work: Callable[[Progress], Any], wait_s: float = QUICK_S) -> Any:
        """The result of ``key``, computing it in the background if needed.

        Waits up to ``wait_s`` for the job, so quick work answers at once; raises :class:`Pending`
        while it runs and ValueError with the job's sentence when it failed.
        """
        job = self.start(key, work)
        job.done.wait(wait_s)
        if job.status == "running":
            raise Pending(job)
        if job.status == "failed":
            with self.lock:  # the next ask starts it again
                if self.by_key.get(key) is job:
                    del self.by_key[key]
            raise ValueError(job.error)
        return job.result

    def get(self, job_id: str) -> Job | None:
        with self.lock:
            return self.by_id.get(job_id)

    def wait_idle(self, timeout_s: float = 30.0) -> None:
        """Block until no job runs (tests, shutdown)."""
        end = time.monotonic() + timeout_s
        for job in list(self.by_id.values()):
            job.done.wait(max(0.0, end - time.monotonic()))

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
