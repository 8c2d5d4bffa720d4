"""The bench's job runner: jobs in worker processes, each after the jobs it waits for, output to its own log,
and a failure that stops the rest."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import pytest

from v2i_bench.parallel import Job, run_jobs
from v2i_core.errors import V2IError


def timed(marks: Path, name: str, seconds: float) -> str:
    """Sleep, and record when this ran (in whichever process) as marks/<name>.json."""
    start = time.time()
    print(f"{name} is running", file=sys.stderr)
    logging.getLogger("tests").info("%s logged", name)
    time.sleep(seconds)
    (marks / f"{name}.json").write_text(json.dumps({"start": start, "end": time.time()}))
    return name.upper()


def failing(marks: Path, name: str, seconds: float) -> str:
    time.sleep(seconds)
    raise V2IError(f"{name}: bad input")


def _marks(marks: Path) -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in marks.glob("*.json")}


def test_jobs_run_side_by_side_each_after_what_it_waits_for_with_its_output_in_its_log(tmp_path):
    jobs = [
        Job("teacher", timed, (tmp_path, "teacher", 1.0), log=tmp_path / "teacher.log"),
        Job("baseline", timed, (tmp_path, "baseline", 0.5), log=tmp_path / "baseline.log"),
        Job("student", timed, (tmp_path, "student", 0.1), after=("teacher",), log=tmp_path / "student.log"),
    ]
    started, done = [], []
    results = run_jobs(jobs, 2, lambda job: started.append(job.key), lambda job: done.append(job.key))
    assert results == {"teacher": "TEACHER", "baseline": "BASELINE", "student": "STUDENT"}
    marks = _marks(tmp_path)
    assert marks["baseline"]["start"] < marks["teacher"]["end"]  # two at once
    assert marks["student"]["start"] >= marks["teacher"]["end"]  # after the job it waits for
    assert started[:2] == ["teacher", "baseline"] and done == ["baseline", "teacher", "student"]
    log = (tmp_path / "student.log").read_text()
    assert "student is running" in log and "INFO tests: student logged" in log and "teacher" not in log


def test_one_worker_runs_the_jobs_here_in_their_order(tmp_path):
    jobs = [Job(name, timed, (tmp_path, name, 0.0)) for name in ("a", "b", "c")]
    assert run_jobs(jobs, 1) == {"a": "A", "b": "B", "c": "C"}
    marks = _marks(tmp_path)
    assert marks["a"]["end"] <= marks["b"]["start"] and marks["b"]["end"] <= marks["c"]["start"]


def test_a_failed_job_names_itself_and_its_log_and_stops_the_others(tmp_path):
    jobs = [
        Job("slow", timed, (tmp_path, "slow", 30.0), log=tmp_path / "slow.log"),
        Job("broken", failing, (tmp_path, "broken", 0.2), log=tmp_path / "broken.log"),
        Job("later", timed, (tmp_path, "later", 0.0), after=("broken",), log=tmp_path / "later.log"),
    ]
    started = time.monotonic()
    with pytest.raises(V2IError, match=rf"broken: broken: bad input \(its log: {tmp_path / 'broken.log'}\)"):
        run_jobs(jobs, 2)
    assert time.monotonic() - started < 20  # the slow job was stopped, not waited for
    assert _marks(tmp_path) == {}  # neither the slow job nor the one waiting on the failed one finished


def test_a_job_waiting_for_one_not_among_the_jobs_is_refused_before_any_starts(tmp_path):
    jobs = [Job("a", timed, (tmp_path, "a", 0.0)), Job("b", timed, (tmp_path, "b", 0.0), after=("teacher",))]
    with pytest.raises(ValueError, match=r"job b waits for \['teacher'\]"):
        run_jobs(jobs, 2)
    assert _marks(tmp_path) == {}
