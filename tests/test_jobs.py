"""Jobs: sync-or-202, progress, cancel, bounded queue, failures, persistence across restart."""
import os
import signal
import subprocess
import time
import sys
import textwrap
from pathlib import Path

import pytest
import requests
import socketio

from tests import fake_jobs
from tests.conftest import API_KEY, job_events

H = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(autouse=True)
def _gates():
    fake_jobs.reset_gates()
    yield
    fake_jobs.GATES["gated"].set()  # never leave a worker blocked


@pytest.fixture
def server(live_server):
    return live_server(setup=fake_jobs.install)


def post(server, body, **kw):
    return requests.post(f"{server.url}/test/run", json=body, headers={**H, **kw.pop("headers", {})}, timeout=20, **kw)


def get(server, path):
    return requests.get(f"{server.url}{path}", headers=H, timeout=20)


def test_sync_request_returns_the_result_inline(server):
    r = post(server, {"kind": "echo", "value": 7})
    assert r.status_code == 200 and r.json()["result"] == {"value": 7}
    job = get(server, f"/jobs/{r.json()['job_id']}").json()
    assert job["status"] == "succeeded" and job["progress"] == 1.0 and job["result"] == {"value": 7}


@pytest.mark.parametrize("how", [{"headers": {"Prefer": "respond-async"}}, {"params": {"async": "true"}}])
def test_async_request_returns_202_with_location(server, wait_for, how):
    r = post(server, {"kind": "echo", "value": 3}, **how)
    assert r.status_code == 202
    body = r.json()
    assert r.headers["Location"] == f"/jobs/{body['job_id']}" == body["location"]
    done = wait_for(lambda: (j := get(server, body["location"]).json())["status"] == "succeeded" and j)
    assert done["result"] == {"value": 3}


def test_wait_timeout_turns_into_202(live_server, make_settings):
    server = live_server(make_settings(job_wait_seconds=0.05), setup=fake_jobs.install)
    r = post(server, {"kind": "sleep", "seconds": 0.5})
    assert r.status_code == 202 and r.json()["status"] in ("queued", "running")


def test_failing_job_fails_alone_and_the_worker_lives(server):
    r = post(server, {"kind": "fail"})
    assert r.status_code == 500
    err = r.json()["error"]
    assert err["message"] == "the model exploded on purpose" and err["job_id"]
    assert get(server, f"/jobs/{err['job_id']}").json()["status"] == "failed"
    assert post(server, {"kind": "echo", "value": 1}).status_code == 200


def test_service_errors_keep_their_status(server):
    r = post(server, {"kind": "unprocessable"})
    assert r.status_code == 422
    assert r.json()["error"]["message"] == "no face found in source image"
    assert r.json()["error"]["param"] == "source"


def test_queue_full_is_429_with_retry_after(live_server, make_settings, wait_for):
    server = live_server(make_settings(queue_max=1), setup=fake_jobs.install)
    assert post(server, {"kind": "gated"}, headers={"Prefer": "respond-async"}).status_code == 202
    fake_jobs.GATES["entered"].wait(5)
    assert post(server, {"kind": "echo"}, headers={"Prefer": "respond-async"}).status_code == 202  # queued
    r = post(server, {"kind": "echo"}, headers={"Prefer": "respond-async"})
    assert r.status_code == 429
    assert int(r.headers["Retry-After"]) >= 1 and r.json()["error"]["code"] == "queue_full"
    fake_jobs.GATES["gated"].set()


def test_cancel_running_and_queued_jobs(server, wait_for):
    running = post(server, {"kind": "gated"}, headers={"Prefer": "respond-async"}).json()["job_id"]
    fake_jobs.GATES["entered"].wait(5)
    queued = post(server, {"kind": "echo"}, headers={"Prefer": "respond-async"}).json()["job_id"]
    r = requests.delete(f"{server.url}/jobs/{queued}", headers=H, timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    r = requests.delete(f"{server.url}/jobs/{running}", headers=H, timeout=10)
    assert r.status_code == 202
    wait_for(lambda: get(server, f"/jobs/{running}").json()["status"] == "cancelled")
    r = requests.delete(f"{server.url}/jobs/{running}", headers=H, timeout=10)
    assert r.status_code == 409


def test_cancel_mid_run_leaves_no_output_files(live_server, make_settings, wait_for):
    settings = make_settings()
    server = live_server(settings, setup=fake_jobs.install)
    job_id = post(server, {"kind": "steps", "seconds": 0.3}, headers={"Prefer": "respond-async"}).json()["job_id"]
    wait_for(lambda: get(server, f"/jobs/{job_id}").json()["progress"] > 0)
    requests.delete(f"{server.url}/jobs/{job_id}", headers=H, timeout=10)
    wait_for(lambda: get(server, f"/jobs/{job_id}").json()["status"] == "cancelled")
    assert not (settings.outputs_dir / job_id).exists()


def test_output_files_are_served_and_traversal_is_404(server):
    job_id = post(server, {"kind": "steps"}).json()["job_id"]
    r = get(server, f"/jobs/{job_id}/files/out.txt")
    assert r.status_code == 200 and r.text == "done"
    for bad in ("../../enfoads.db", "..%2F..%2Fenfoads.db", "%2E%2E/%2E%2E/api_key", "/etc/passwd"):
        r = get(server, f"/jobs/{job_id}/files/{bad}")
        assert r.status_code == 404, bad
    assert get(server, "/jobs/..%2F..%2F/files/api_key").status_code == 404


def test_list_jobs(server):
    post(server, {"kind": "echo", "value": 1})
    post(server, {"kind": "fail"})
    data = get(server, "/jobs").json()["data"]
    assert [j["status"] for j in data][:2] == ["failed", "succeeded"]
    assert [j["kind"] for j in get(server, "/jobs?status=failed").json()["data"]] == ["fail"]
    assert get(server, "/jobs?limit=0").status_code == 400


@pytest.mark.parametrize("transports", [["websocket"], ["polling"]])
def test_socketio_progress_reaches_the_owner_in_order(server, transports, wait_for):
    with job_events(server.url, transports=transports) as events:
        job_id = post(server, {"kind": "steps", "seconds": 0.01}).json()["job_id"]
        wait_for(lambda: any(e["id"] == job_id and e["status"] == "succeeded" for e in events))
    mine = [e for e in events if e["id"] == job_id]
    statuses = [e["status"] for e in mine]
    assert statuses[0] == "queued" and statuses[-1] == "succeeded" and "running" in statuses
    progress = [e["progress"] for e in mine if e["status"] == "running"]
    assert progress == sorted(progress) and 0.25 in progress and 1.0 in progress


def test_socketio_refuses_a_wrong_token(server):
    sio = socketio.Client()
    with pytest.raises(socketio.exceptions.ConnectionError):
        sio.connect(server.url, namespaces=["/jobs"], auth={"token": "wrong"}, wait_timeout=5)
    sio.disconnect()


def test_queued_jobs_resume_after_restart(make_settings, wait_for):
    from backend.jobs import JobStore, Job

    settings = make_settings()
    store = JobStore(settings.db_path)
    store.insert(Job(id="resume-me", kind="echo", owner="x", params={"value": 5}))
    store.close()
    from backend.app import create_app, shutdown_app

    app = fake_jobs.install(create_app(settings))
    try:
        jobs = app.extensions["enfoads"].jobs
        job = wait_for(lambda: (j := jobs.get("resume-me")).status == "succeeded" and j)
        assert job.result == {"value": 5}
    finally:
        shutdown_app(app)


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from backend.settings import load_settings
    from backend.app import create_app
    from tests import fake_jobs
    app = fake_jobs.install(create_app(load_settings(data_dir={data!r}, api_key="k", device="cpu")))
    jobs = app.extensions["enfoads"].jobs
    first = jobs.submit("gated", {{}}, owner="o")
    second = jobs.submit("echo", {{"value": 9}}, owner="o")
    fake_jobs.GATES.setdefault("entered", __import__("threading").Event()).wait(10)
    print(first.id, second.id, flush=True)
    time.sleep(60)
""")


def test_killed_mid_job_reads_interrupted_after_restart(tmp_path, make_settings, wait_for):
    data = tmp_path / "data"
    root = str(Path(__file__).resolve().parents[1])
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT.format(root=root, data=str(data))],
                            stdout=subprocess.PIPE, text=True)
    try:
        first, second = proc.stdout.readline().split()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    from backend.app import create_app, shutdown_app

    app = fake_jobs.install(create_app(make_settings(data_dir=data)))
    try:
        jobs = app.extensions["enfoads"].jobs
        assert jobs.store.integrity_ok()
        dead = jobs.get(first)
        assert dead.status == "failed" and dead.message == "interrupted by restart"
        resumed = wait_for(lambda: (j := jobs.get(second)).status == "succeeded" and j)
        assert resumed.result == {"value": 9}
    finally:
        shutdown_app(app)


def uploads_left(settings):
    folder = settings.data_dir / "uploads"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def upload(server, kind, **kw):
    return requests.post(f"{server.url}/test/upload", params={"kind": kind}, files={"file": ("a.wav", b"RIFF....")},
                         headers={**H, **kw.pop("headers", {})}, timeout=20)


def test_uploads_never_outlive_their_request_or_job(live_server, make_settings, wait_for):
    settings = make_settings(queue_max=1)
    server = live_server(settings, setup=fake_jobs.install)
    # refused after saving: the request's uploads go with it
    assert upload(server, "invalid").status_code == 400
    assert uploads_left(settings) == []
    # handed to a job: deleted when the job ends, whether it succeeds or fails
    assert upload(server, "echo").status_code == 200
    assert upload(server, "fail").status_code == 500
    assert uploads_left(settings) == []
    # queued then cancelled before it ran, and refused by a full queue
    running = post(server, {"kind": "gated"}, headers={"Prefer": "respond-async"}).json()["job_id"]
    fake_jobs.GATES["entered"].wait(5)
    queued = upload(server, "echo", headers={"Prefer": "respond-async"}).json()["job_id"]
    assert len(uploads_left(settings)) == 1
    assert upload(server, "echo").status_code == 429
    assert len(uploads_left(settings)) == 1
    requests.delete(f"{server.url}/jobs/{queued}", headers=H, timeout=10)
    assert uploads_left(settings) == []
    fake_jobs.GATES["gated"].set()
    wait_for(lambda: get(server, f"/jobs/{running}").json()["status"] == "succeeded")


def test_finished_jobs_and_their_files_expire_after_the_retention(make_settings):
    from backend.app import create_app, shutdown_app
    from backend.jobs import Job

    settings = make_settings(job_retention_hours=24)
    app = create_app(settings)
    jobs = app.extensions["enfoads"].jobs
    try:
        now = time.time()
        for job_id, finished in (("old", now - 25 * 3600), ("recent", now - 3600)):
            jobs.store.insert(Job(id=job_id, kind="echo", owner="o", status="succeeded", finished_at=finished))
            (settings.outputs_dir / job_id).mkdir(parents=True)
            (settings.outputs_dir / job_id / "out.png").write_bytes(b"x")
        jobs.store.insert(Job(id="waiting", kind="echo", owner="o", created_at=now - 30 * 3600))
        assert jobs.purge_expired() == ["old"]
        assert jobs.get("old") is None and not (settings.outputs_dir / "old").exists()
        assert jobs.get("recent") is not None and (settings.outputs_dir / "recent" / "out.png").exists()
        assert jobs.get("waiting") is not None  # unfinished jobs never expire
    finally:
        shutdown_app(app)
