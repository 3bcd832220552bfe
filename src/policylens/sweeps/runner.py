"""Running a sweep: every trial is an ordinary run folder ``OUT/trials/<name>/``, trained (or
resumed), evaluated, and finished by writing its row to ``trial.json``; a rerun skips trials that
have one, so a killed sweep continues where it stopped. Trials run on a local process pool or as
Ray tasks, and give the same results on either.
"""

from __future__ import annotations

import math
import os
import time
import traceback
from concurrent import futures
from pathlib import Path
from types import UnionType
from typing import Any

from policylens.artifacts import LOCK_FILE, FolderLock, read_json, write_json, write_text
from policylens.errors import check_known
from policylens.runs import Run, config_json
from policylens.sweeps.results import TIMING, metric_names, write_results
from policylens.sweeps.spec import SETTINGS, SweepSpec, Trial, resolve_evaluate

BACKENDS = ("local", "ray")
TRIAL_FILE = "trial.json"
"""A trial's result row; its presence says the trial is finished."""
ERROR_FILE = "error.txt"
"""The traceback of a trial's last failure (removed when it is retried)."""


class TrialsFailed(RuntimeError):
    """Some trials raised; the others' results are saved and a rerun retries only the failed."""


def cpu_count() -> int:
    """CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def trial_path(out: str | Path, trial: Trial) -> Path:
    return Path(out) / "trials" / trial.name


def run_trial(spec: SweepSpec, trial: Trial, path: str, threads: int) -> dict[str, Any]:
    """Train ``trial`` into the run folder ``path`` (resuming a partial one; a finished run is not
    retrained), evaluate it, and save and return its row: parameters, seed, metrics, timing.

    ``threads`` torch threads train and evaluate it.
    """
    import torch

    from policylens.train.ppo import train_ppo

    start = time.perf_counter()
    folder = Path(path)
    (folder / ERROR_FILE).unlink(missing_ok=True)
    try:
        config = spec.config(trial, threads)
        if not ((folder / "config.json").is_file() and Run(folder).done):
            train_ppo(config, folder, resume=True, progress=False)
        torch.set_num_threads(config.threads)
        metrics = resolve_evaluate(spec)(str(folder), **spec.evaluate_kwargs)
        row = {**trial.params, "seed": trial.seed, **_numbers(spec, trial, metrics)}
        row["seconds"] = time.perf_counter() - start
        row["train_seconds"] = Run(folder).metrics()[-1]["time"]
        write_json(folder / TRIAL_FILE, row, sort_keys=False)
        return row
    except Exception:
        write_text(folder / ERROR_FILE, traceback.format_exc())
        raise


def _numbers(spec: SweepSpec, trial: Trial, metrics: Any) -> dict[str, float]:
    """The evaluation's metrics as floats, refusing what would not make a flat results table."""
    if not isinstance(metrics, dict):
        raise ValueError(
            f"{spec.evaluate} returned {type(metrics).__name__}, not a dict of numbers."
        )
    taken = {*trial.params, "seed", *TIMING}
    out = {}
    for key, value in metrics.items():
        if key in taken:
            raise ValueError(f"{spec.evaluate} returned {key!r}, which names a results column.")
        try:
            out[str(key)] = float(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"{spec.evaluate} returned {key!r} = {value!r}; a sweep's metrics are numbers."
            ) from None
    return out


def training_metrics(run_path: str) -> dict[str, float]:
    """A world-agnostic evaluation: success, return and episode length over the episodes that
    ended in the run's last PPO update (as logged in metrics.csv); no extra episodes are played."""
    last = Run(run_path).metrics()[-1]
    return {k: last[k] for k in ("success", "return", "length") if k in last}


def check_evaluate_arguments(spec: SweepSpec, fn: Any) -> None:
    """Refuse evaluation arguments of the wrong type (``episodes=banana`` for an ``int``) before
    any trial trains, in one sentence naming the argument and the type the function declares."""
    import typing

    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations: nothing to check against
        return
    simple = (bool, int, float, str)
    for name, value in spec.evaluate_kwargs.items():
        hint = hints.get(name)
        if hint is None:
            continue
        allowed = (
            typing.get_args(hint)
            if typing.get_origin(hint) in (typing.Union, UnionType)
            else (hint,)
        )
        kinds = [a for a in allowed if a in simple]
        if not kinds or len(kinds) < len([a for a in allowed if a is not type(None)]):
            continue  # a type this check does not know: the function checks it
        if value is None and type(None) in allowed:
            continue
        ok = any(
            isinstance(value, k) and not (k is int and isinstance(value, bool)) for k in kinds
        ) or (float in kinds and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            want = " or ".join(k.__name__ for k in kinds)
            raise ValueError(
                f"evaluation argument {name}={value!r} is not a {want}, which {spec.evaluate} "
                f"takes for {name}; fix --eval-arg {name}=... (checked before any training)."
            )


def _die_with_parent(parent: int) -> None:
    """A pool worker's initializer: end this worker when the sweep process that started it dies
    (kill -9 included), so no trial keeps training for nobody.

    On Linux the kernel sends SIGKILL at the parent's death (``PR_SET_DEATHSIG``); everywhere a
    daemon thread also watches for the parent to change and exits the worker.
    """
    import ctypes
    import signal
    import sys
    import threading

    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_DEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # it died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="die-with-parent").start()


class LocalPool:
    """``workers`` trials at a time in processes started with "spawn" (a forked child of a process
    that has run torch can hang in its thread pools), each using ``threads`` torch threads.

    The workers die with the sweep process (:func:`_die_with_parent`), even when it is killed.
    """

    def __init__(self, workers: int, threads: int | None = None):
        self.workers = workers
        self.threads = threads or max(1, cpu_count() // workers)

    def __enter__(self) -> LocalPool:
        import multiprocessing

        self.pool = futures.ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_die_with_parent,
            initargs=(os.getpid(),),
        )
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        self.pool.shutdown(wait=kind is None, cancel_futures=True)

    def submit(self, *args: Any) -> futures.Future:
        return self.pool.submit(run_trial, *args)

    def wait(self, handles: list, timeout: float) -> list:
        done, _ = futures.wait(handles, timeout, futures.FIRST_COMPLETED)
        return list(done)

    def result(self, handle: futures.Future) -> dict[str, Any]:
        return handle.result()


class RayPool:
    """Each trial one plain Ray task asking ``threads`` CPUs, so ``workers`` run at once.

    Plain tasks rather than Ray Tune: a sweep here is a fixed grid of independent trials, each
    writing its own run folder, so Tune's trial schedulers, checkpoint syncing and result reporting
    would add a second folder layout and a heavier dependency for nothing. Without ``address`` Ray
    starts on this machine with ``workers x threads`` CPUs; with one it joins that cluster, whose
    nodes must see ``OUT`` on a shared filesystem.
    """

    def __init__(self, workers: int, address: str | None, threads: int | None = None):
        self.workers, self.address, self.chosen = workers, address, threads
        self.threads = threads or max(1, cpu_count() // workers)

    def __enter__(self) -> RayPool:
        try:
            import ray
        except ImportError as e:
            raise ValueError(
                "the ray backend needs Ray; install it with `pip install 'policylens[ray]'`."
            ) from e
        self.ray, self.started = ray, not ray.is_initialized()
        quiet: dict[str, Any] = {"log_to_driver": False, "logging_level": "ERROR"}
        if self.started and self.address:
            ray.init(address=self.address, **quiet)
        elif self.started:
            ray.init(num_cpus=self.workers * self.threads, include_dashboard=False, **quiet)
        if self.address and not self.chosen:
            cpus = int(ray.cluster_resources().get("CPU", 1))
            self.threads = max(1, cpus // self.workers)
        self.task = ray.remote(num_cpus=self.threads)(run_trial)
        self.handles: list = []
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        if kind is not None:
            for handle in self.handles:
                self.ray.cancel(handle, force=True)
        if self.started:
            self.ray.shutdown()

    def submit(self, *args: Any) -> Any:
        handle = self.task.remote(*args)
        self.handles.append(handle)
        return handle

    def wait(self, handles: list, timeout: float) -> list:
        ready, _ = self.ray.wait(handles, num_returns=len(handles), timeout=timeout)
        return ready

    def result(self, handle: Any) -> dict[str, Any]:
        return self.ray.get(handle)


def claim(out: Path, spec: SweepSpec) -> None:
    """Write ``out/sweep.json``, or check that the sweep already there is this one."""
    data = config_json(spec.to_dict())
    file = out / "sweep.json"
    if file.is_file():
        saved = read_json(file)
        if saved != data:
            differ = [k for k in SETTINGS if saved.get(k) != data.get(k)]
            raise ValueError(
                f"{out} holds a sweep of another spec (it differs in {', '.join(differ)}); "
                "rerun it with its own spec or choose another output folder."
            )
        return
    if out.exists() and any(p.name != LOCK_FILE for p in out.iterdir()):
        raise ValueError(f"{out} is not empty and holds no sweep; choose a new or empty folder.")
    write_json(file, data)


def run_sweep(
    spec: SweepSpec,
    out: str | Path,
    workers: int = 1,
    backend: str = "local",
    address: str | None = None,
    quiet: bool = False,
    threads: int | None = None,
) -> list[dict[str, Any]]:
    """Run every unfinished trial of ``spec`` into ``out``; return all trials' rows in trial order.

    ``workers`` trials run at once, each on ``threads`` torch threads (default
    ``max(1, CPUs // workers)``), on a local
    process pool (``backend="local"``) or as Ray tasks (``"ray"``, on a cluster at ``address`` if
    given). ``results.csv``/``results.json`` are rewritten after each trial; a live table of the
    trials goes to stderr unless ``quiet``. Raises :class:`TrialsFailed` after the other trials
    finish if any failed.
    """
    check_known([backend], BACKENDS, "backend")
    if address and backend != "ray":
        raise ValueError("an address applies to the ray backend only; add --backend ray.")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}.")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}.")
    # a bad evaluate, or arguments of the wrong type, fail now, not after the first training
    check_evaluate_arguments(spec, resolve_evaluate(spec))
    out = Path(out).resolve()  # Ray workers may start elsewhere
    with FolderLock(out, "sweep folder"):  # one sweep process per folder
        return _run_trials(spec, out, workers, backend, address, quiet, threads)


def _run_trials(
    spec: SweepSpec,
    out: Path,
    workers: int,
    backend: str,
    address: str | None,
    quiet: bool,
    threads: int | None,
) -> list[dict[str, Any]]:
    """The body of :func:`run_sweep`, run while its folder is locked."""
    claim(out, spec)
    trials = spec.trials()
    rows: dict[str, dict[str, Any]] = {}
    for t in trials:
        if (trial_path(out, t) / TRIAL_FILE).is_file():
            rows[t.name] = read_json(trial_path(out, t) / TRIAL_FILE)
    earlier = set(rows)
    ordered = lambda: [rows[t.name] for t in trials if t.name in rows]  # noqa: E731
    write_results(out, spec, ordered())
    failures: dict[str, BaseException] = {}
    pending = [t for t in trials if t.name not in rows]
    if pending:
        pool = (
            LocalPool(workers, threads)
            if backend == "local"
            else RayPool(workers, address, threads)
        )
        with pool, SweepProgress(not quiet, spec, trials, out, earlier) as progress:
            handles = {
                pool.submit(spec, t, str(trial_path(out, t)), pool.threads): t for t in pending
            }
            while handles:
                for handle in pool.wait(list(handles), timeout=0.5):
                    trial = handles.pop(handle)
                    try:
                        rows[trial.name] = pool.result(handle)
                    except Exception as e:
                        failures[trial.name] = e
                    else:
                        write_results(out, spec, ordered())
                progress.update(rows, failures)
    if failures:
        name, error = next(iter(failures.items()))
        raise TrialsFailed(
            f"{len(failures)} of {len(trials)} trials failed (first {name}: "
            f"{type(error).__name__}: {str(error).rstrip('.')}); tracebacks are in each trial folder's "
            f"{ERROR_FILE}, and rerunning the sweep retries only those trials."
        ) from error
    return ordered()


class SweepProgress:
    """A live table of the trials on stderr: state, seconds and the first metrics."""

    MAX_ROWS = 20
    """Rows shown at most: running and failed trials first, then the latest finished."""

    def __init__(
        self, enabled: bool, spec: SweepSpec, trials: list[Trial], out: Path, earlier: set[str]
    ):
        self.enabled, self.spec, self.trials, self.out = enabled, spec, trials, out
        self.earlier, self.start = earlier, time.time()
        self.started: dict[str, float] = {}
        self.finished: list[str] = []

    def __enter__(self) -> SweepProgress:
        if self.enabled:
            from rich.console import Console
            from rich.live import Live

            self.live = Live(console=Console(stderr=True), auto_refresh=False)
            self.live.start()
        return self

    def __exit__(self, *_: Any) -> None:
        if self.enabled:
            self.live.stop()

    def _running(self, trial: Trial) -> float | None:
        """The share of its steps a trial has trained in this sweep, None if it has not begun."""
        metrics = trial_path(self.out, trial) / "metrics.csv"
        try:
            if metrics.stat().st_mtime < self.start:
                return None
        except FileNotFoundError:
            return None
        self.started.setdefault(trial.name, time.time())
        rows = Run(metrics.parent).metrics()
        total = self.spec.config(trial, 1).total_steps
        return rows[-1]["step"] / total if rows else 0.0

    def update(self, rows: dict[str, dict[str, Any]], failures: dict[str, BaseException]) -> None:
        if not self.enabled:
            return
        from rich.table import Table

        self.finished += [n for n in [*rows, *failures] if n not in self.finished]
        metrics = metric_names(self.spec, list(rows.values()))[:4]
        states: dict[str, tuple[str, str, list[str]]] = {}
        for t in self.trials:
            if t.name in failures:
                states[t.name] = ("[red]failed", "", [])
            elif t.name in rows:
                row = rows[t.name]
                label = "done before" if t.name in self.earlier else "[green]done"
                values = [_fmt(row.get(m)) for m in metrics]
                states[t.name] = (label, f"{row['seconds']:.1f}", values)
            elif (share := self._running(t)) is not None:
                elapsed = time.time() - self.started[t.name]
                states[t.name] = (f"[yellow]running {share:.0%}", f"{elapsed:.1f}", [])
            else:
                states[t.name] = ("queued", "", [])
        shown = self._choose(states)
        done = sum(1 for n in states if n in rows)
        hidden = len(states) - len(shown)
        table = Table(
            "trial", "state", "seconds", *metrics,
            title=f"sweep: {done}/{len(self.trials)} done, {len(failures)} failed",
            caption=f"{hidden} more not shown" if hidden else None,
        )  # fmt: skip
        for t in self.trials:
            if t.name in shown:
                state, seconds, values = states[t.name]
                table.add_row(t.name, state, seconds, *values)
        self.live.update(table, refresh=True)

    def _choose(self, states: dict[str, tuple[str, str, list[str]]]) -> set[str]:
        if len(states) <= self.MAX_ROWS:
            return set(states)
        first = [n for n, s in states.items() if s[0].startswith(("[yellow]", "[red]"))]
        latest = [n for n in reversed(self.finished) if n not in first]
        queued = [n for n, s in states.items() if s[0] == "queued"]
        return set([*first, *latest, *queued][: self.MAX_ROWS])


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3g}"
