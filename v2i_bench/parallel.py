"""The bench's runs, several at a time: each in a worker process with an equal share of the CPU threads, started
once the runs it needs (a student's teacher) are done.

Why: at the bench's small sizes two cores do not keep busy on one training (small convolutions, single-threaded
data loading), so two trainings of one thread each get through about 1.4 times as many steps as one training of
two threads (measured at 64x80, docs/bench-experiments.md). One worker runs everything in this process, as before.

A worker's console output (per-epoch progress and log lines) goes to its run's log file, so that two trainings do
not write over each other's progress bars; the caller's own bar counts finished runs. A failed run stops the rest:
the other workers get SIGTERM, which they raise like the CLI does, so their temporary outputs are removed and their
checkpoints stay for a resume.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import signal
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path

import torch

from v2i_bench.cli import Terminated
from v2i_core.errors import V2IError

log = logging.getLogger(__name__)
POLL_SECONDS = 0.2


@dataclass(frozen=True)
class Job:
    key: Hashable
    work: Callable  # a module-level function, so that a worker process can unpickle it
    args: tuple
    after: tuple = ()  # keys of the jobs that must be done before this one starts
    log: Path | None = None  # where a worker writes this job's output


Callback = Callable[[Job], None]


def _nothing(job: Job) -> None:
    pass


def run_jobs(jobs: list[Job], workers: int, on_start: Callback = _nothing, on_done: Callback = _nothing) -> dict:
    """{key: work(*args)} of every job; `jobs` in the order to start them in when several are ready (with one
    worker: in this process, in that order, which must then put every job after the ones it needs)."""
    keys = {job.key for job in jobs}
    for job in jobs:
        if missing := [key for key in job.after if key not in keys]:
            raise ValueError(f"job {job.key} waits for {missing}, which are not among the jobs")
    if workers == 1:
        done = {}
        for job in jobs:
            on_start(job)
            done[job.key] = job.work(*job.args)
            on_done(job)
        return done
    return _in_workers(jobs, workers, on_start, on_done)


def threads_per_worker(workers: int) -> int:
    """Each worker's share of this process's torch threads (at least one)."""
    return max(1, torch.get_num_threads() // workers)


def _in_workers(jobs: list[Job], workers: int, on_start: Callback, on_done: Callback) -> dict:
    threads = threads_per_worker(workers)
    pending, done = list(jobs), {}
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no torch thread pool inherited by fork
    pool = [_Worker(context, threads) for _ in range(min(workers, len(jobs)))]
    try:  # leaving it stops the workers: on success, on a failed run, or on Ctrl-C / SIGTERM here
        while pending or any(worker.job for worker in pool):
            for worker in [worker for worker in pool if worker.job is None]:
                ready = next((job for job in pending if all(key in done for key in job.after)), None)
                if ready is None:
                    break
                pending.remove(ready)
                worker.give(ready)
                log.info("started %s (%d thread(s)), its log: %s", ready.key, threads, ready.log)
                on_start(ready)
            if not any(worker.job for worker in pool):
                raise ValueError(f"jobs {[job.key for job in pending]} wait on each other")
            finished = [worker for worker in pool if worker.job is not None and worker.has_result()]
            if not finished:
                time.sleep(POLL_SECONDS)
            for worker in finished:
                job, value = worker.take()
                done[job.key] = value
                on_done(job)
    finally:
        for worker in pool:
            worker.stop()
    return done


class _Worker:
    """A process that runs one job at a time, sent over a pipe, and sends back its result or its error."""

    def __init__(self, context, threads: int):
        self.connection, theirs = context.Pipe()
        self.process = context.Process(target=_serve, args=(theirs, threads), daemon=True)
        self.process.start()
        theirs.close()
        self.job: Job | None = None

    def give(self, job: Job) -> None:
        self.job = job
        self.connection.send((job.work, job.args, job.log))

    def has_result(self) -> bool:
        """True once the job's result is in; an error when the process died without sending one."""
        if self.connection.poll():
            return True
        if not self.process.is_alive():
            self._died()
        return False

    def take(self) -> tuple[Job, object]:
        """The job and its result (the worker is then free), or its error raised here, naming the job and its log."""
        job, self.job = self.job, None
        try:
            ok, value = self.connection.recv()
        except EOFError:  # it died while sending
            self.job = job
            self._died()
        if ok:
            return job, value
        if isinstance(value, V2IError):
            raise V2IError(f"{job.key}: {value} (its log: {job.log})") from value
        raise RuntimeError(f"{job.key} failed: {value}; the traceback is in its log: {job.log}")

    def _died(self):
        raise V2IError(
            f"{self.job.key}: its worker process ended (exit code {self.process.exitcode}) before the run did; "
            f"its log: {self.job.log}"
        )

    def stop(self) -> None:
        """End the process: at once (SIGTERM) when it is in a job, else after telling it to return."""
        if self.process.is_alive():
            if self.job is None:
                with contextlib.suppress(OSError):
                    self.connection.send(None)
            else:
                self.process.terminate()
        self.process.join()
        self.connection.close()


def _serve(connection, threads: int) -> None:
    """A worker's loop: run each job sent until told to stop (None)."""
    _start_worker(threads)
    while (message := connection.recv()) is not None:
        work, args, path = message
        try:
            reply = (True, _logged(work, args, path))
        except Exception as error:  # handed to the parent, which raises it naming the job
            reply = (False, error if isinstance(error, V2IError) else repr(error))
        connection.send(reply)


def _start_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops every worker
    signal.signal(signal.SIGTERM, _raise_terminated)


def _raise_terminated(signum, frame) -> None:
    raise Terminated


def _logged(work: Callable, args: tuple, path: Path | None):
    """work(*args) with stderr (progress bars) and log records going to `path`, appended to across resumes."""
    if path is None:
        return work(*args)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    with open(path, "a", buffering=1) as stream, contextlib.redirect_stderr(stream):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            return work(*args)
        except Exception:
            log.exception("the run failed")  # the traceback, in the run's own log
            raise
        finally:
            root.removeHandler(handler)
