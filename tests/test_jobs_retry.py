"""Retry-After on a full queue is the documented estimate (README, "Jobs"): the mean run time of the
last 20 finished jobs (5 s before any has finished) times the jobs ahead of the retry (queued, plus
the retry itself), rounded up to whole seconds, at least 1."""
import types

import pytest
import requests

from tests import fake_jobs
from tests.conftest import API_KEY


class FakeClock(types.SimpleNamespace):
    """Stands in for the `time` module inside backend.jobs: jobs take exactly the time a test says."""

    def __init__(self):
        import time as real

        super().__init__(now=1_000_000.0, monotonic=real.monotonic, sleep=real.sleep)

    def time(self):
        return self.now


@pytest.fixture
def manager(tmp_path, monkeypatch):
    import backend.jobs as jobs

    clock = FakeClock()
    monkeypatch.setattr(jobs, "time", clock)
    mgr = jobs.JobManager(jobs.JobStore(tmp_path / "jobs.db"), tmp_path / "outputs", queue_max=2)

    def takes(params, ctx):
        clock.now += params["seconds"]
        return {}

    def breaks(params, ctx):
        clock.now += 100.0
        raise RuntimeError("failed jobs are not a measure of the queue's pace")

    mgr.register("takes", takes)
    mgr.register("breaks", breaks)
    yield mgr
    mgr.stop()
    mgr.store.close()


def run_jobs(mgr, *specs):
    mgr.start()
    for kind, seconds in specs:
        job = mgr.submit(kind, {"seconds": seconds}, "owner")
        assert mgr.wait(job.id, 10).status in ("succeeded", "failed")
    mgr.stop()


def retry_after_when_full(mgr) -> int:
    from backend.jobs import QueueFull

    for _ in range(mgr.queue_max - mgr.queue_length()):
        mgr.submit("takes", {"seconds": 0}, "owner")
    with pytest.raises(QueueFull) as err:
        mgr.submit("takes", {"seconds": 0}, "owner")
    assert f"retry in about {err.value.retry_after} s" in str(err.value)
    return err.value.retry_after


def test_before_any_job_finished_each_job_counts_five_seconds(manager):
    assert retry_after_when_full(manager) == 5 * (2 + 1)


def test_mean_of_finished_jobs_times_jobs_ahead(manager):
    run_jobs(manager, ("takes", 2.0), ("takes", 4.0), ("breaks", 0))
    assert retry_after_when_full(manager) == 3 * (2 + 1)  # mean 3 s, failed job not counted


def test_rounded_up_to_whole_seconds(manager):
    run_jobs(manager, ("takes", 1.2), ("takes", 1.3))
    assert retry_after_when_full(manager) == 4  # 1.25 s x 3 = 3.75 s


def test_at_least_one_second(manager):
    run_jobs(manager, ("takes", 0.01))
    assert retry_after_when_full(manager) == 1


def test_only_the_last_twenty_jobs_count(manager):
    run_jobs(manager, ("takes", 100.0), *[("takes", 1.0)] * 20)
    assert retry_after_when_full(manager) == 3


def test_http_429_carries_the_estimate(live_server, make_settings):
    """A fresh server, one job running and one queued (queue_max=1): 5 s x (1 queued + the retry)."""
    server = live_server(make_settings(queue_max=1), setup=fake_jobs.install)
    fake_jobs.reset_gates()
    headers = {"Authorization": f"Bearer {API_KEY}", "Prefer": "respond-async"}

    def post(kind):
        return requests.post(f"{server.url}/test/run", json={"kind": kind}, headers=headers, timeout=20)

    try:
        assert post("gated").status_code == 202
        assert fake_jobs.GATES["entered"].wait(5)
        assert post("echo").status_code == 202
        r = post("echo")
        assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full"
        assert r.headers["Retry-After"] == "10"
        assert "10 s" in r.json()["error"]["message"]
    finally:
        fake_jobs.GATES["gated"].set()
