"""Two lanes: short requests do not wait behind long jobs. A batch job yields at its progress
checkpoints while interactive work waits, is `paused` meanwhile, and resumes where it stopped."""
import sqlite3
import threading

import numpy as np
import pytest
import requests

from backend.jobs import (BATCH, CANCELLED, FAILED, INTERACTIVE, INTERRUPTED, PAUSED, SUCCEEDED, Job,
                          JobManager, JobStore, QueueFull)
from services.vram import Runtime, VramOffloader
from tests import face_media as fm
from tests import fake_jobs
from tests.conftest import API_KEY

H = {"Authorization": f"Bearer {API_KEY}"}
GB = 1024**3


class Batch:
    """A batch handler whose steps the test releases one by one; it records what ran in what order."""

    def __init__(self, log: list, steps: int = 4):
        self.log, self.steps = log, steps
        self.gates = [threading.Event() for _ in range(steps)]
        self.at_step = [threading.Event() for _ in range(steps)]

    def __call__(self, params, ctx):
        for i in range(self.steps):
            self.log.append(f"batch{i}")
            self.at_step[i].set()
            assert self.gates[i].wait(10)
            ctx.progress((i + 1) / self.steps, f"step {i + 1}")
        return {"steps": self.steps}

    def release_all(self):
        for g in self.gates:
            g.set()


@pytest.fixture
def manager(tmp_path):
    made = []

    def make(**kw):
        m = JobManager(JobStore(tmp_path / "jobs.db"), tmp_path / "out", **kw)
        events = []
        m.add_listener(lambda job: events.append((job.id, job.status, job.progress, job.message)))
        m.events = events
        made.append(m)
        return m

    yield make
    for m in made:
        m.stop()
        m.store.close()


def quick(log, name, check=None):
    def handler(params, ctx):
        log.append(name)
        if check:
            check()
        return {"name": name}

    return handler


def test_interactive_job_runs_at_the_batch_jobs_next_checkpoint(manager):
    log = []
    m = manager()
    batch = Batch(log)
    m.register("video", batch)
    m.register("tts", quick(log, "tts"))
    m.start()
    b = m.submit("video", {}, "o", lane=BATCH)
    assert batch.at_step[0].wait(10)
    t = m.submit("tts", {}, "o")  # lane interactive
    batch.gates[0].set()  # the batch job reaches its first checkpoint
    assert m.wait(t.id, 10).status == SUCCEEDED
    assert m.get(b.id).status != SUCCEEDED  # the short job did not wait for the long one
    batch.release_all()
    assert m.wait(b.id, 10).status == SUCCEEDED
    assert log == ["batch0", "tts", "batch1", "batch2", "batch3"]
    states = [(s, msg) for jid, s, _, msg in m.events if jid == b.id]
    paused = states.index((PAUSED, "paused: 1 interactive job(s) first"))
    assert states[paused + 1] == ("running", "resumed")
    progress = [p for jid, _, p, _ in m.events if jid == b.id]
    assert progress == sorted(progress)  # monotonic through the pause


def test_interactive_jobs_run_first_when_both_lanes_wait(manager):
    log = []
    m = manager()
    m.register("video", quick(log, "video"))
    m.register("tts", quick(log, "tts"))
    b = m.submit("video", {}, "o", lane=BATCH)
    t = m.submit("tts", {}, "o")
    m.start()
    assert m.wait(b.id, 10).status == SUCCEEDED and m.wait(t.id, 10).status == SUCCEEDED
    assert log == ["tts", "video"]


def test_a_batch_job_advances_between_bursts(manager):
    """Fairness: one pause runs at most `interactive_burst` jobs, and only those waiting when it began;
    the batch job then advances a step before it can yield again."""
    log = []
    m = manager(interactive_burst=2)
    batch = Batch(log, steps=3)
    m.register("video", batch)
    late = []

    def first(params, ctx):
        log.append("q1")
        late.append(m.submit("tts", {"n": "late"}, "o"))  # arrives during the burst

    m.register("first", first)
    m.register("tts", lambda params, ctx: log.append(params.get("n", "q")) or {})
    m.start()
    b = m.submit("video", {}, "o", lane=BATCH)
    assert batch.at_step[0].wait(10)
    m.submit("first", {}, "o")
    m.submit("tts", {"n": "q2"}, "o")
    m.submit("tts", {"n": "q3"}, "o")
    batch.release_all()
    assert m.wait(b.id, 10).status == SUCCEEDED
    assert log == ["batch0", "q1", "q2", "batch1", "q3", "late", "batch2"]


def test_cancel_while_paused_cancels_at_resume_and_leaves_no_files(manager):
    log = []
    m = manager()
    batch = Batch(log)
    ids = {}

    def canceller(params, ctx):
        job = m.get(ids["batch"])
        log.append(job.status)  # what GET /jobs/<id> shows meanwhile
        m.cancel(ids["batch"])

    def writing_batch(params, ctx):
        ctx.output_dir.mkdir(parents=True, exist_ok=True)
        (ctx.output_dir / "partial.mp4").write_bytes(b"x")
        return batch(params, ctx)

    m.register("video", writing_batch)
    m.register("cancel", canceller)
    m.start()
    ids["batch"] = m.submit("video", {}, "o", lane=BATCH).id
    assert batch.at_step[0].wait(10)
    m.submit("cancel", {}, "o")
    batch.gates[0].set()
    job = m.wait(ids["batch"], 10)
    assert job.status == CANCELLED
    assert log == ["batch0", PAUSED]
    assert not (m.outputs_dir / ids["batch"]).exists()


def test_a_job_paused_at_a_crash_reads_interrupted_after_restart(tmp_path):
    store = JobStore(tmp_path / "jobs.db")
    store.insert(Job(id="was-paused", kind="video", owner="o", status=PAUSED, lane=BATCH))
    store.insert(Job(id="waiting", kind="video", owner="o", lane=BATCH))
    store.close()
    store = JobStore(tmp_path / "jobs.db")
    queued = store.recover()
    job = store.get("was-paused")
    assert job.status == FAILED and job.message == INTERRUPTED and job.error["kind"] == "interrupted"
    assert [j.id for j in queued] == ["waiting"] and queued[0].lane == BATCH
    store.close()


def test_a_database_from_before_lanes_still_opens(tmp_path):
    db = sqlite3.connect(tmp_path / "jobs.db")
    db.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, owner TEXT NOT NULL, status TEXT NOT NULL,"
               " progress REAL NOT NULL, message TEXT NOT NULL, params TEXT, result TEXT, error TEXT,"
               " created_at REAL NOT NULL, started_at REAL, finished_at REAL, uploads TEXT)")
    db.execute("INSERT INTO jobs VALUES ('old', 'echo', 'o', 'queued', 0, 'queued', '{}', NULL, NULL, 1, NULL, NULL,"
               " '[]')")
    db.commit()
    db.close()
    store = JobStore(tmp_path / "jobs.db")
    assert store.get("old").lane == INTERACTIVE
    store.close()


def test_queue_limits_count_per_lane(manager):
    m = manager(queue_max=1)
    m.register("video", lambda p, c: {})
    m.register("tts", lambda p, c: {})
    m.submit("video", {}, "o", lane=BATCH)  # not started: the worker is off
    with pytest.raises(QueueFull) as full:
        m.submit("video", {}, "o", lane=BATCH)
    assert full.value.retry_after == 10  # 5 s a job until measured, x (1 queued + this one)
    m.submit("tts", {}, "o")  # the interactive lane still has room
    with pytest.raises(QueueFull):
        m.submit("tts", {}, "o")


def test_a_paused_jobs_models_are_pinned_until_it_resumes(manager):
    vram = VramOffloader(device="cpu", budget_bytes=8 * GB, gc_collect=False)
    vram.register("swapper", lambda d: object(), runtime=Runtime.ONNX, estimate_bytes=GB)
    vram.register("other", lambda d: object(), runtime=Runtime.ONNX, estimate_bytes=GB)
    with vram.acquire("other"):  # used before the batch job started: not its model
        pass
    m = manager(vram=vram)
    seen = []

    def batch(params, ctx):
        for i in range(2):
            with vram.acquire("swapper"):
                pass
            ctx.progress((i + 1) / 2)
        return {}

    def look(params, ctx):
        seen.append({e["name"]: e["pinned"] for e in vram.snapshot()["models"]})

    m.register("video", batch)
    m.register("look", look)
    b = m.submit("video", {}, "o", lane=BATCH)
    m.submit("look", {}, "o")  # queued first, so it runs first: nothing is pinned yet
    m.start()
    assert m.wait(b.id, 10).status == SUCCEEDED
    # a second round with the batch job running when the interactive job arrives
    gate = threading.Event()
    started = threading.Event()

    def slow_batch(params, ctx):
        with vram.acquire("swapper"):
            pass
        started.set()
        gate.wait(10)
        ctx.progress(0.5)
        ctx.progress(1.0)
        return {}

    m.register("slow", slow_batch)
    s = m.submit("slow", {}, "o", lane=BATCH)
    assert started.wait(10)
    m.submit("look", {}, "o")
    gate.set()
    assert m.wait(s.id, 10).status == SUCCEEDED
    assert seen[0] == {"swapper": 0, "other": 0}
    assert seen[-1] == {"swapper": 1, "other": 0}
    assert {e["name"]: e["pinned"] for e in vram.snapshot()["models"]} == {"swapper": 0, "other": 0}


# --------------------------------------------------------------------------- HTTP

@pytest.fixture
def server(live_server):
    fake_jobs.reset_gates()
    yield live_server(setup=fake_jobs.install)
    fake_jobs.GATES["gated"].set()


def test_a_client_may_demote_a_request_to_batch_but_not_ask_for_a_bad_lane(server):
    r = requests.post(f"{server.url}/test/run?lane=batch", json={"kind": "echo", "value": 3}, headers=H, timeout=20)
    assert r.status_code == 200 and r.headers["X-Job-Lane"] == BATCH
    job = requests.get(f"{server.url}/jobs/{r.json()['job_id']}", headers=H, timeout=20).json()
    assert job["lane"] == BATCH
    r = requests.post(f"{server.url}/test/run", json={"kind": "echo"}, headers=H, timeout=20)
    assert r.headers["X-Job-Lane"] == INTERACTIVE
    r = requests.post(f"{server.url}/test/run?lane=urgent", json={"kind": "echo"}, headers=H, timeout=20)
    assert r.status_code == 400 and r.json()["error"]["param"] == "lane"


def test_a_full_batch_lane_still_serves_interactive_requests(live_server, make_settings, wait_for):
    fake_jobs.reset_gates()
    server = live_server(make_settings(queue_max=1), setup=fake_jobs.install)
    try:
        url, async_h = f"{server.url}/test/run", {**H, "Prefer": "respond-async"}
        assert requests.post(url + "?lane=batch", json={"kind": "gated"}, headers=async_h, timeout=20).status_code == 202
        assert fake_jobs.GATES["entered"].wait(10)
        assert requests.post(url + "?lane=batch", json={"kind": "echo"}, headers=async_h, timeout=20).status_code == 202
        full = requests.post(url + "?lane=batch", json={"kind": "echo"}, headers=async_h, timeout=20)
        assert full.status_code == 429 and full.headers["Retry-After"] == "10"
        assert requests.post(url, json={"kind": "echo"}, headers=async_h, timeout=20).status_code == 202
    finally:
        fake_jobs.GATES["gated"].set()


# --------------------------------------------------------------------------- real models

@pytest.fixture(scope="module")
def face_dir(smoke_models):
    return smoke_models("face")


def _frames(path):
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_face_detect_runs_while_a_face_video_pauses_and_the_video_is_unchanged(
        live_server, make_settings, face_dir, tmp_path, wait_for):
    server = live_server(make_settings(models_dir=face_dir, face_det_size=256, job_wait_seconds=120))
    jobs = server.app.extensions["enfoads"].jobs
    events = []
    jobs.add_listener(lambda job: events.append((job.id, job.status)))
    target = fm.video(tmp_path / "t.mp4", frames=40, fps=10).read_bytes()
    source = fm.png(faces=[(16, 80)])

    def swap_video(**headers):
        return requests.post(f"{server.url}/face-swap/video", headers={**H, **headers}, timeout=120,
                             files={"source": ("s.png", source), "target": ("t.mp4", target)})

    alone = swap_video()
    assert alone.status_code == 200 and alone.headers["X-Job-Lane"] == BATCH
    reference = _frames(server.app.extensions["enfoads"].settings.outputs_dir / alone.json()["job_id"]
                        / alone.json()["file"])

    video = swap_video(Prefer="respond-async").json()
    wait_for(lambda: jobs.get(video["job_id"]).progress > 0, timeout=60, interval=0.005)
    detect = requests.post(f"{server.url}/faces/detect", headers=H, timeout=60,
                           files={"image": ("a.png", fm.png(faces=[(16, 80)]))})
    assert detect.status_code == 200 and detect.json()["count"] == 1
    assert detect.headers["X-Job-Lane"] == INTERACTIVE
    done = jobs.wait(video["job_id"], 120)
    assert done.status == SUCCEEDED
    assert (video["job_id"], PAUSED) in events  # it yielded to the detect request
    order = [jid for jid, status in events if status == SUCCEEDED]
    assert order.index(detect.json()["job_id"]) < order.index(video["job_id"])
    resumed = _frames(server.app.extensions["enfoads"].settings.outputs_dir / video["job_id"] / done.result["file"])
    assert len(resumed) == len(reference) == 40
    assert all(np.array_equal(a, b) for a, b in zip(resumed, reference))
