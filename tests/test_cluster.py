"""Distributed mode end to end: a real redis-server, the front (this process, a real HTTP server) and
two `python -m backend.worker` processes on the smoke models. Jobs of several families spread over
both workers; cancel; kill -9 mid-job; a front restart; the cluster-wide queue bound; the worker
key; Redis down. The tests share one cluster and run in file order (the last one stops Redis)."""
import io
import time

import pytest
import requests
from PIL import Image

from backend.server import Server
from tests import cluster_jobs
from tests import face_media as fm
from tests.cluster_procs import RedisProcess, WorkerProcess, free_port, wait_until
from tests.conftest import API_KEY, job_events

H = {"Authorization": f"Bearer {API_KEY}"}
ASYNC = {**H, "Prefer": "respond-async"}
WORKER_KEY = "enfw-test-worker-key"
LOST_S = 5.0  # the front calls a silent worker lost after this long (beats every 0.8 s)
CLUSTER_ENV = {"ENFOADS_CLUSTER_HEARTBEAT_TIMEOUT_S": "4", "ENFOADS_CLUSTER_MAINTENANCE_SHARE": "1",
               "ENFOADS_FACE_DET_SIZE": "256"}


class Cluster:
    def __init__(self, tmp, models, redis_server):
        self.tmp, self.models, self.redis = tmp, models, redis_server
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.front: Server | None = None
        self.workers: dict[str, WorkerProcess] = {}

    def settings(self):
        from backend.settings import load_settings

        return load_settings(profile="smoke", device="cpu", data_dir=self.tmp / "front", models_dir=self.models,
                             api_key=API_KEY, worker_key=WORKER_KEY, redis_url=self.redis.url, port=self.port,
                             job_wait_seconds=60, queue_max=3, face_det_size=256, cluster_worker_lost_s=LOST_S,
                             cluster_max_attempts=2, cluster_heartbeat_timeout_s=4, cluster_maintenance_share=1.0)

    def start_front(self):
        self.front = Server(self.settings())
        cluster_jobs.install(self.front.app)
        self.front.start()

    def stop_front(self):
        self.front.stop()
        self.front = None

    @property
    def jobs(self):
        return self.front.app.extensions["enfoads"].jobs

    def start_worker(self, name, families="face,image,test", key=WORKER_KEY):
        worker = WorkerProcess(name, redis_url=self.redis.url, front_url=self.url, key=key, families=families,
                               data_dir=self.tmp / name, env={**CLUSTER_ENV, "ENFOADS_MODELS_DIR": str(self.models)})
        self.workers[name] = worker
        return worker

    def worker_of(self, job_id):
        lease = self.jobs.leases.get(job_id)
        return lease and lease["worker"], lease and lease["attempts"]

    def job(self, job_id):
        r = requests.get(f"{self.url}/jobs/{job_id}", headers=H, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    def wait_status(self, job_id, *statuses, timeout=60):
        try:
            return wait_until(lambda: (j := self.job(job_id))["status"] in statuses and j, timeout,
                              f"job {job_id[:8]} to be {'/'.join(statuses)}", interval=0.1)
        except AssertionError as exc:
            logs = "\n".join(f"--- {n}:\n{w.output()[-2000:]}" for n, w in self.workers.items())
            raise AssertionError(f"{exc}; the job reads {self.job(job_id)}\n{logs}") from None

    def run(self, kind, params, headers=ASYNC):
        return requests.post(f"{self.url}/test/cluster-run", json={"kind": kind, "params": params}, headers=headers,
                             timeout=60)

    def hold(self, gate):
        r = self.run("test.hold", {"gate": str(gate), "text": gate.name})
        assert r.status_code == 202, r.text
        return r.json()["job_id"]


@pytest.fixture(scope="module")
def redis_server():
    server = RedisProcess().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, smoke_models, redis_server):
    models = smoke_models("face", "image")
    c = Cluster(tmp_path_factory.mktemp("cluster"), models, redis_server)
    c.start_front()
    try:
        for name in ("w1", "w2"):
            c.start_worker(name)
        for worker in c.workers.values():
            worker.wait_ready()
        yield c
    finally:
        for worker in c.workers.values():
            worker.stop()
        if c.front is not None:
            c.stop_front()


def test_worker_endpoints_take_only_the_worker_key(cluster):
    hello = f"{cluster.url}/cluster/hello"
    assert requests.get(hello, headers={"Authorization": f"Bearer {WORKER_KEY}"}, timeout=10).status_code == 200
    for key in (API_KEY, "wrong"):  # a client's key is refused like a wrong one
        r = requests.post(f"{cluster.url}/cluster/jobs/abc/start", json={"worker": "x"},
                          headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_worker_key"
    # ... and the worker key opens no client route
    assert requests.get(f"{cluster.url}/jobs", headers={"Authorization": f"Bearer {WORKER_KEY}"},
                        timeout=10).status_code == 401
    # A lease is needed for anything about a job: the worker key alone reads no input.
    r = requests.get(f"{cluster.url}/cluster/jobs/abc/inputs/0", headers={"Authorization": f"Bearer {WORKER_KEY}",
                                                                          "X-Lease": "guess"}, timeout=10)
    assert r.status_code == 409


def test_a_worker_with_a_wrong_key_is_refused_and_stops(cluster):
    worker = WorkerProcess("intruder", redis_url=cluster.redis.url, front_url=cluster.url, key="enfw-wrong",
                           families="test", data_dir=cluster.tmp / "intruder", env=CLUSTER_ENV)
    assert worker.proc.wait(90) == 2
    assert "the front refused this worker" in worker.output() and "worker key" in worker.output()


def test_jobs_of_several_families_spread_over_both_workers(cluster, tmp_path):
    with job_events(cluster.url, transports=["polling"]) as events:
        gate = tmp_path / "gate-spread"
        held = cluster.hold(gate)
        cluster.wait_status(held, "running")
        busy, _ = cluster.worker_of(held)
        idle = ({"w1", "w2"} - {busy}).pop()

        # The busy worker takes nothing else: the face and image jobs go to the other one.
        r = requests.post(f"{cluster.url}/faces/detect", files={"image": ("a.png", fm.png(faces=[(16, 80)]))},
                          headers=H, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["count"] == 1  # the upload reached the worker through the front
        assert cluster.worker_of(r.json()["job_id"]) == (idle, 1)

        r = requests.post(f"{cluster.url}/v1/images/generations", headers=H, timeout=180,
                          json={"prompt": "zapatillas rojas", "size": "64x64", "seed": 3, "response_format": "url"})
        assert r.status_code == 200, r.text
        url = r.json()["data"][0]["url"]
        image = requests.get(url, headers=H, timeout=10)  # uploaded by the worker, served by the front
        assert image.status_code == 200 and Image.open(io.BytesIO(image.content)).size == (64, 64)
        image_job = url.split("/jobs/")[1].split("/")[0]
        assert cluster.worker_of(image_job) == (idle, 1)

        gate.touch()
        done = cluster.wait_status(held, "succeeded")
        assert done["progress"] == 1.0 and done["result"]["file"] == "held.txt"
        assert cluster.worker_of(held) == (busy, 1)
        r = requests.get(f"{cluster.url}/jobs/{held}/files/held.txt", headers=H, timeout=10)
        assert r.status_code == 200 and r.text == "gate-spread"
        # Socket.IO clients see the remote jobs' progress and end as in single-process mode.
        wait_until(lambda: any(e["id"] == held and e["status"] == "succeeded" for e in events), 10, "event")
        mine = [e for e in events if e["id"] == held]
        assert [e["status"] for e in mine][0] == "queued" and "running" in [e["status"] for e in mine]
        assert any(0 < e["progress"] < 1 for e in mine)
        assert set(mine[-1]) == set(cluster.job(held))  # the same fields as GET /jobs/<id>


def test_cancel_reaches_the_worker_at_its_next_progress_step(cluster, tmp_path):
    gate = tmp_path / "never"
    job_id = cluster.hold(gate)
    cluster.wait_status(job_id, "running")
    worker, _ = cluster.worker_of(job_id)
    r = requests.delete(f"{cluster.url}/jobs/{job_id}", headers=H, timeout=10)
    assert r.status_code == 202
    job = cluster.wait_status(job_id, "cancelled", "succeeded", "failed")
    assert job["status"] == "cancelled" and job["result"] is None
    assert requests.get(f"{cluster.url}/jobs/{job_id}/files/held.txt", headers=H, timeout=10).status_code == 404
    assert cluster.worker_of(job_id) == (worker, 1)


def test_the_queue_bound_counts_the_whole_cluster(cluster, tmp_path):
    gate = tmp_path / "gate-bound"
    running = [cluster.hold(gate) for _ in range(2)]
    for job_id in running:
        cluster.wait_status(job_id, "running")
    queued = [cluster.hold(gate) for _ in range(3)]  # queue_max=3: both workers busy, three wait
    assert all(cluster.job(j)["status"] == "queued" for j in queued)
    r = cluster.run("test.hold", {"gate": str(gate)})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    for job_id in queued:  # cancelled while queued: their messages are dropped when a worker takes them
        assert requests.delete(f"{cluster.url}/jobs/{job_id}", headers=H, timeout=10).json()["status"] == "cancelled"
    gate.touch()
    for job_id in running:
        cluster.wait_status(job_id, "succeeded")
    for job_id in queued:
        assert cluster.job(job_id)["status"] == "cancelled"
    r = cluster.run("test.sleep", {"seconds": 0.05}, headers=H)
    assert r.status_code == 200, r.text


def test_a_job_survives_a_front_restart(cluster, tmp_path):
    gate = tmp_path / "gate-restart"
    job_id = cluster.hold(gate)
    cluster.wait_status(job_id, "running")
    cluster.stop_front()
    gate.touch()  # the worker finishes while the front is down, and keeps its result until it is back
    time_down = time.monotonic()
    cluster.start_front()
    job = cluster.wait_status(job_id, "succeeded", "failed", timeout=60)
    assert job["status"] == "succeeded", job
    r = requests.get(f"{cluster.url}/jobs/{job_id}/files/held.txt", headers=H, timeout=10)
    assert r.status_code == 200 and r.text == "gate-restart"
    assert time.monotonic() - time_down < 60


def test_a_killed_worker_s_job_goes_to_the_other_one(cluster, tmp_path):
    gate = tmp_path / "gate-kill"
    job_id = cluster.hold(gate)
    cluster.wait_status(job_id, "running")
    victim, _ = cluster.worker_of(job_id)
    survivor = ({"w1", "w2"} - {victim}).pop()
    cluster.workers[victim].kill9()
    # Redis hands the dead worker's message to the survivor: attempt 2 of the same job.
    wait_until(lambda: cluster.worker_of(job_id) == (survivor, 2), 60, "the job to move to the survivor")
    gate.touch()
    job = cluster.wait_status(job_id, "succeeded", "failed")
    assert job["status"] == "succeeded" and cluster.worker_of(job_id) == (survivor, 2)


def test_a_job_whose_last_worker_dies_fails_as_worker_lost(cluster, tmp_path):
    alive = [name for name, w in cluster.workers.items() if w.proc.poll() is None]
    assert len(alive) == 1  # the previous test killed one
    job_id = cluster.hold(tmp_path / "never-2")
    cluster.wait_status(job_id, "running")
    cluster.workers[alive[0]].kill9()
    lost = cluster.wait_status(job_id, "queued", "failed", timeout=30)
    assert lost["message"].startswith("worker lost")  # queued again: an attempt remains
    job = cluster.wait_status(job_id, "failed", timeout=30)  # nobody took it up
    assert job["message"] == "worker lost" and job["error"]["code"] == "worker_lost"
    r = requests.get(f"{cluster.url}/jobs/{job_id}", headers=H, timeout=10)
    assert r.json()["status"] == "failed"


def test_a_job_past_its_time_limit_fails_and_the_worker_goes_on(cluster):
    cluster.start_worker("w3", families="test").wait_ready()  # the earlier tests killed the others
    cluster.jobs.time_limit_s = 1.0  # what ENFOADS_CLUSTER_JOB_TIME_LIMIT_S sets; each message carries it
    try:
        r = cluster.run("test.sleep", {"seconds": 4, "steps": 8}, headers=H)
    finally:
        cluster.jobs.time_limit_s = cluster.settings().cluster_job_time_limit_s
    assert r.status_code == 503 and r.json()["error"]["code"] == "time_limit", r.text
    assert cluster.job(r.json()["error"]["job_id"])["status"] == "failed"
    r = cluster.run("test.sleep", {"seconds": 0.05}, headers=H)
    assert r.status_code == 200, r.text


def test_redis_down_new_jobs_503_status_and_files_still_served(cluster, tmp_path):
    done = cluster.jobs.store.list(owner=None, status="succeeded", limit=50)
    with_file = next(j for j in done if j.kind == "test.hold")
    recorded = len(cluster.jobs.store.list(owner=None, limit=500))
    cluster.redis.stop()
    r = cluster.run("test.sleep", {"seconds": 0.01})
    assert r.status_code == 503, r.text
    err = r.json()["error"]
    assert err["code"] == "queue_unavailable" and "unreachable" in err["message"] and "redis://127.0.0.1" in err["message"]
    assert cluster.job(with_file.id)["status"] == "succeeded"
    r = requests.get(f"{cluster.url}/jobs/{with_file.id}/files/held.txt", headers=H, timeout=10)
    assert r.status_code == 200
    assert requests.get(f"{cluster.url}/health", timeout=10).status_code == 200
    assert len(cluster.jobs.store.list(owner=None, limit=500)) == recorded  # the refused job left no record
