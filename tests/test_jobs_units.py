"""The job store and manager used directly (no Flask, no server): what a user of /jobs sees — a job goes
queued -> running -> succeeded | failed | cancelled with its result or error, reports progress, can be
cancelled queued or running, waits in one of two lanes of bounded queues, survives a restart (queued
jobs run again, running ones read "interrupted"), and expires after the retention. Handlers block on
Events the test releases; the clocks inside backend.jobs are a fake the test moves (no sleeps)."""
import logging
import sqlite3
import threading
import time
import types

import pytest

from backend.jobs import (BATCH, CANCELLED, FAILED, INTERACTIVE, INTERRUPTED, PAUSED, QUEUED, RUNNING, SUCCEEDED,
                          Job, JobManager, JobStore, QueueFull)
from services.errors import Cancelled, InvalidInput, Unprocessable
from services.vram import Runtime, VramOffloader

GB = 1024**3
T0 = 1_000_000.0
WAIT = 5  # seconds: a job here takes milliseconds; a broken one should fail the test soon


class Clock(types.SimpleNamespace):
    """Stands in for the `time` module inside backend.jobs: wall and monotonic time move when the test
    says. The monotonic clock starts near zero, as right after boot."""

    def __init__(self):
        super().__init__(now=T0, mono=0.5, sleep=time.sleep)

    def time(self):
        return self.now

    def monotonic(self):
        return self.mono


@pytest.fixture
def clock(monkeypatch):
    import backend.jobs as jobs

    fake = Clock()
    monkeypatch.setattr(jobs, "time", fake)
    return fake


@pytest.fixture
def store(tmp_path):
    s = JobStore(tmp_path / "jobs.db")
    yield s
    s.close()


def ids(jobs):
    return [j.id for j in jobs]


# --------------------------------------------------------------------------- lanes

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
            assert self.gates[i].wait(WAIT)
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
    assert batch.at_step[0].wait(WAIT)
    t = m.submit("tts", {}, "o")  # lane interactive
    batch.gates[0].set()  # the batch job reaches its first checkpoint
    assert m.wait(t.id, WAIT).status == SUCCEEDED
    assert m.get(b.id).status != SUCCEEDED  # the short job did not wait for the long one
    batch.release_all()
    assert m.wait(b.id, WAIT).status == SUCCEEDED
    assert log == ["batch0", "tts", "batch1", "batch2", "batch3"]
    states = [(s, msg) for jid, s, _, msg in m.events if jid == b.id]
    paused = states.index((PAUSED, "paused: 1 interactive job(s) first"))
    assert states[paused + 1] == ("running", "resumed")
    progress = [p for jid, _, p, _ in m.events if jid == b.id]
    assert progress == sorted(progress)  # monotonic through the pause
    assert states[paused + 2:] == [("running", "step 2"), ("running", "step 3"), ("running", "step 4"),
                                   ("succeeded", "done")]  # progress events go on after the pause


def test_interactive_jobs_run_first_when_both_lanes_wait(manager):
    log = []
    m = manager()
    m.register("video", quick(log, "video"))
    m.register("tts", quick(log, "tts"))
    b = m.submit("video", {}, "o", lane=BATCH)
    t = m.submit("tts", {}, "o")
    m.start()
    assert m.wait(b.id, WAIT).status == SUCCEEDED and m.wait(t.id, WAIT).status == SUCCEEDED
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
    assert batch.at_step[0].wait(WAIT)
    m.submit("first", {}, "o")
    m.submit("tts", {"n": "q2"}, "o")
    m.submit("tts", {"n": "q3"}, "o")
    batch.release_all()
    assert m.wait(b.id, WAIT).status == SUCCEEDED
    assert log == ["batch0", "q1", "q2", "batch1", "q3", "late", "batch2"]


def test_cancel_while_paused_cancels_at_resume_and_leaves_no_files(manager):
    log = []
    m = manager()
    batch = Batch(log)
    ids = {}

    def canceller(params, ctx):
        job = m.get(ids["batch"])
        log.append((job.status, job.message))  # what GET /jobs/<id> shows meanwhile
        m.cancel(ids["batch"])

    def writing_batch(params, ctx):
        ctx.output_dir.mkdir(parents=True, exist_ok=True)
        (ctx.output_dir / "partial.mp4").write_bytes(b"x")
        return batch(params, ctx)

    m.register("video", writing_batch)
    m.register("cancel", canceller)
    m.start()
    ids["batch"] = m.submit("video", {}, "o", lane=BATCH).id
    assert batch.at_step[0].wait(WAIT)
    m.submit("cancel", {}, "o")
    batch.gates[0].set()
    job = m.wait(ids["batch"], WAIT)
    assert job.status == CANCELLED
    assert log == ["batch0", (PAUSED, "paused: 1 interactive job(s) first")]
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
    assert m.wait(b.id, WAIT).status == SUCCEEDED
    # a second round with the batch job running when the interactive job arrives
    gate = threading.Event()
    started = threading.Event()

    def slow_batch(params, ctx):
        with vram.acquire("swapper"):
            pass
        started.set()
        gate.wait(WAIT)
        ctx.progress(0.5)
        ctx.progress(1.0)
        return {}

    m.register("slow", slow_batch)
    s = m.submit("slow", {}, "o", lane=BATCH)
    assert started.wait(WAIT)
    m.submit("look", {}, "o")
    gate.set()
    assert m.wait(s.id, WAIT).status == SUCCEEDED
    assert seen[0] == {"swapper": 0, "other": 0}
    assert seen[-1] == {"swapper": 1, "other": 0}
    assert {e["name"]: e["pinned"] for e in vram.snapshot()["models"]} == {"swapper": 0, "other": 0}


# --------------------------------------------------------------------------- the store

def test_a_job_round_trips_every_field_and_survives_reopening(tmp_path):
    path = tmp_path / "not" / "yet" / "jobs.db"
    job = Job(id="a", kind="tts", owner="ana", status=SUCCEEDED, progress=0.5, message="done",
              params={"text": "hola", "n": [1, 2]}, result={"file": "x.wav"}, error={"kind": "invalid"},
              created_at=1.5, started_at=2.5, finished_at=3.5, uploads=["/u/1"], lane=BATCH)
    store = JobStore(path)
    store.insert(job)
    store.insert(Job(id="b", kind="echo", owner="bob"))
    assert store.get("a") == job
    store.close()
    store = JobStore(path)
    assert store.get("a") == job and store.get("b").owner == "bob"
    assert store.get("missing") is None
    assert store.integrity_ok()
    store.close()
    with pytest.raises(sqlite3.ProgrammingError):
        store.get("a")


def test_absent_values_stay_absent_and_old_rows_without_params_read_empty(store):
    store.insert(Job(id="a", kind="k", owner="o"))
    got = store.get("a")
    assert got.result is None and got.error is None and got.started_at is None
    assert got.params == {} and got.uploads == [] and got.lane == INTERACTIVE and got.status == QUEUED
    with sqlite3.connect(store.path) as db:  # a row as an older version wrote it: no params, no uploads
        db.execute("INSERT INTO jobs (id, kind, owner, status, progress, message, created_at)"
                   " VALUES ('b', 'k', 'o', 'queued', 0, '', 1)")
    old = store.get("b")
    assert old.params == {} and old.uploads == [] and old.lane == INTERACTIVE


def test_update_changes_only_the_named_fields_of_that_job(store):
    store.insert(Job(id="a", kind="k", owner="o", params={"x": 1}))
    store.insert(Job(id="b", kind="k", owner="o"))
    store.update("a", status=FAILED, error={"kind": "boom"}, result=None, progress=0.25, message="m")
    a = store.get("a")
    assert (a.status, a.error, a.result, a.progress, a.message, a.params) == (FAILED, {"kind": "boom"}, None, 0.25,
                                                                              "m", {"x": 1})
    assert store.get("b").status == QUEUED and store.get("b").error is None
    store.update("a", result={"file": "f"})
    assert store.get("a").result == {"file": "f"}
    store.delete("a")
    assert store.get("a") is None and store.get("b") is not None


def test_list_filters_by_owner_and_status_newest_first_up_to_the_limit(store):
    for i, (owner, status) in enumerate([("ana", QUEUED), ("ana", SUCCEEDED), ("bob", SUCCEEDED), ("ana", FAILED)]):
        store.insert(Job(id=f"j{i}", kind="k", owner=owner, status=status, created_at=100.0 + i))
    assert ids(store.list()) == ["j3", "j2", "j1", "j0"]
    assert ids(store.list(owner="ana")) == ["j3", "j1", "j0"]
    assert ids(store.list(status=SUCCEEDED)) == ["j2", "j1"]
    assert ids(store.list(owner="ana", status=SUCCEEDED)) == ["j1"]
    assert ids(store.list(limit=2)) == ["j3", "j2"]
    for i in range(60):
        store.insert(Job(id=f"x{i}", kind="k", owner="carl", created_at=200.0 + i))
    assert len(store.list()) == 50


def test_counts_by_status_lane_and_excluded_kinds(store):
    for id_, kind, status, lane in [("q1", "tts", QUEUED, INTERACTIVE), ("q2", "video", QUEUED, BATCH),
                                    ("q3", "tts", QUEUED, BATCH), ("q4", "img", QUEUED, BATCH),
                                    ("r", "tts", RUNNING, INTERACTIVE)]:
        store.insert(Job(id=id_, kind=kind, owner="o", status=status, lane=lane))
    assert store.count(QUEUED) == 4 and store.count(RUNNING) == 1 and store.count(FAILED) == 0
    assert store.count(QUEUED, lane=BATCH) == 3 and store.count(QUEUED, lane=INTERACTIVE) == 1
    assert store.count(QUEUED, exclude_kinds={"video"}) == 3
    assert store.count(QUEUED, lane=BATCH, exclude_kinds={"video", "img"}) == 1


def test_recover_fails_interrupted_jobs_drops_their_uploads_and_returns_queued_oldest_first(store, clock, tmp_path):
    files = {name: tmp_path / name for name in ("running.wav", "paused.mp4", "queued.png")}
    for f in files.values():
        f.write_bytes(b"x")
    store.insert(Job(id="r", kind="tts", owner="o", status=RUNNING,
                     uploads=[str(tmp_path / "already-gone.wav"), str(files["running.wav"])]))
    store.insert(Job(id="p", kind="video", owner="o", status=PAUSED, lane=BATCH, uploads=[str(files["paused.mp4"])]))
    store.insert(Job(id="q-new", kind="tts", owner="o", created_at=20.0, uploads=[str(files["queued.png"])]))
    store.insert(Job(id="q-old", kind="video", owner="o", created_at=10.0, lane=BATCH))
    store.insert(Job(id="s", kind="tts", owner="o", status=SUCCEEDED, message="done", finished_at=7.0))
    queued = store.recover()
    assert ids(queued) == ["q-old", "q-new"] and queued[0].lane == BATCH
    for id_ in ("r", "p"):
        job = store.get(id_)
        assert (job.status, job.message, job.finished_at) == (FAILED, INTERRUPTED, T0)
        assert job.error == {"kind": "interrupted", "message": INTERRUPTED}
    assert not files["running.wav"].exists() and not files["paused.mp4"].exists()
    assert files["queued.png"].exists()
    s = store.get("s")
    assert (s.status, s.message, s.finished_at, s.error) == (SUCCEEDED, "done", 7.0, None)


def test_recover_of_some_kinds_leaves_the_others_alone(store):
    for id_, kind, status in [("r-tts", "tts", RUNNING), ("r-img", "img", PAUSED), ("r-video", "video", RUNNING),
                              ("q-tts", "tts", QUEUED), ("q-img", "img", QUEUED), ("q-video", "video", QUEUED)]:
        store.insert(Job(id=id_, kind=kind, owner="o", status=status))
    assert ids(store.recover(kinds={"tts", "img"})) == ["q-tts", "q-img"]
    assert [store.get(i).status for i in ("r-tts", "r-img", "r-video")] == [FAILED, FAILED, RUNNING]
    assert ids(store.recover(kinds={"video"})) == ["q-video"]
    assert store.get("r-video").status == FAILED


def test_delete_finished_before_takes_only_finished_jobs_that_ended_before_the_cutoff(store):
    for id_, status, finished in [("s", SUCCEEDED, 10.0), ("f", FAILED, 10.0), ("c", CANCELLED, 10.0),
                                  ("at-cutoff", SUCCEEDED, 20.0), ("q", QUEUED, None), ("r", RUNNING, None)]:
        store.insert(Job(id=id_, kind="k", owner="o", status=status, finished_at=finished))
    assert sorted(store.delete_finished_before(20.0)) == ["c", "f", "s"]
    assert sorted(ids(store.list())) == ["at-cutoff", "q", "r"]
    assert store.delete_finished_before(20.0) == []


# --------------------------------------------------------------------------- the manager: one job's life

def gated(log=None):
    """A handler held at a known point: `entered` is set when it starts, it returns when `gate` is set."""
    entered, gate = threading.Event(), threading.Event()

    def handler(params, ctx):
        entered.set()
        assert gate.wait(WAIT)
        if log is not None:
            log.append(ctx.job_id)
        return {"echo": params.get("x")}

    return handler, entered, gate


def statuses(m, job_id):
    return [s for jid, s, _, _ in m.events if jid == job_id]


def test_a_job_goes_queued_running_succeeded_with_its_result(manager, clock):
    m = manager()
    handler, entered, gate = gated()

    def timed(params, ctx):
        assert ctx.params == params == {"x": 7} and ctx.lane == INTERACTIVE
        assert ctx.output_dir == m.outputs_dir / ctx.job_id
        out = handler(params, ctx)
        clock.now += 3.0
        return out

    m.register("echo", timed)
    m.start()
    job = m.submit("echo", {"x": 7}, "ana")
    assert (job.status, job.message, job.owner, job.lane, job.params) == (QUEUED, "queued", "ana", INTERACTIVE,
                                                                         {"x": 7})
    assert len(job.id) == 32 and int(job.id, 16) >= 0 and job.id != m.submit("echo", {}, "ana").id
    assert entered.wait(WAIT)
    running = m.get(job.id)
    assert (running.status, running.message, running.started_at, running.finished_at) == (RUNNING, "running", T0, None)
    gate.set()
    done = m.wait(job.id, WAIT)
    assert (done.status, done.message, done.progress, done.result, done.error) == (SUCCEEDED, "done", 1.0, {"echo": 7},
                                                                                  None)
    assert (done.started_at, done.finished_at) == (T0, T0 + 3.0)
    assert statuses(m, job.id) == [QUEUED, RUNNING, SUCCEEDED]
    public = done.public()
    assert set(public) == {"id", "kind", "status", "progress", "message", "result", "error", "created_at",
                           "started_at", "finished_at", "lane"}
    assert public["result"] == {"echo": 7} and public["lane"] == INTERACTIVE


def test_a_handler_returning_nothing_succeeds_with_an_empty_result(manager):
    m = manager()
    m.register("quiet", lambda params, ctx: None)
    m.start()
    job = m.wait(m.submit("quiet", {}, "o").id, WAIT)
    assert job.status == SUCCEEDED and job.result == {}


def test_service_errors_fail_the_job_with_their_kind_param_and_code(manager):
    m = manager()

    def no_face(params, ctx):
        raise Unprocessable("no face found in source image", param="source", code="no_face")

    def empty(params, ctx):
        raise InvalidInput("")

    m.register("swap", no_face)
    m.register("empty", empty)
    m.start()
    job = m.wait(m.submit("swap", {}, "o").id, WAIT)
    assert (job.status, job.message, job.result) == (FAILED, "no face found in source image", None)
    assert job.error == {"kind": "unprocessable", "message": "no face found in source image", "param": "source",
                         "code": "no_face"}
    assert job.finished_at is not None and statuses(m, job.id)[-1] == FAILED
    job = m.wait(m.submit("empty", {}, "o").id, WAIT)
    assert (job.status, job.message, job.error["kind"]) == (FAILED, "failed", "invalid")


class Unavailable(Exception):
    kind = "unavailable"


@pytest.mark.parametrize("exc, message, kind", [
    (RuntimeError("  CUDA out of memory  "), "CUDA out of memory", "internal"),
    (ValueError(), "ValueError", "internal"),
    (Unavailable("the model is not downloaded"), "the model is not downloaded", "unavailable"),
])
def test_a_crashing_handler_fails_its_job_alone_saying_what_broke(manager, exc, message, kind):
    m = manager()

    def crash(params, ctx):
        raise exc

    m.register("crash", crash)
    m.register("echo", lambda params, ctx: {"ok": True})
    m.start()
    job = m.wait(m.submit("crash", {}, "o").id, WAIT)
    assert (job.status, job.message, job.error) == (FAILED, message, {"kind": kind, "message": message})
    assert m.wait(m.submit("echo", {}, "o").id, WAIT).result == {"ok": True}  # the worker lives on


def test_a_failing_listener_neither_stops_the_others_nor_the_job(manager):
    m = manager()

    def broken(job):
        raise RuntimeError("listener bug")

    m.add_listener(broken)
    seen = []
    m.add_listener(lambda job: seen.append(job.status))
    m.register("echo", lambda params, ctx: {})
    m.start()
    assert m.wait(m.submit("echo", {}, "o").id, WAIT).status == SUCCEEDED
    assert seen == [QUEUED, RUNNING, SUCCEEDED]


def test_progress_is_clamped_events_all_go_out_and_the_database_gets_one_write_a_quarter_second(manager, clock):
    m = manager()
    stored = []

    def steps(params, ctx):
        def db():
            job = m.get(ctx.job_id)
            stored.append((job.progress, job.message))

        ctx.progress(-0.5, "start")  # first report: written
        db()
        clock.mono += 0.125
        ctx.progress(0.4, "step")  # too soon: event only
        db()
        clock.mono += 0.125
        ctx.progress(0.6)  # a quarter second after the last write: written
        db()
        ctx.progress(1.0, "final")  # complete: written at once
        db()
        ctx.progress(1.7, "over")
        db()
        return {}

    m.register("steps", steps)
    m.start()
    job = m.submit("steps", {}, "o")
    assert m.wait(job.id, WAIT).status == SUCCEEDED
    assert stored == [(0.0, "start"), (0.0, "start"), (0.6, "running"), (1.0, "final"), (1.0, "over")]
    live = [(p, msg) for jid, s, p, msg in m.events if jid == job.id and s == RUNNING]
    assert live == [(0.0, "running"), (0.0, "start"), (0.4, "step"), (0.6, "step"), (1.0, "final"), (1.0, "over")]


def test_wait_returns_the_job_as_it_is_when_the_timeout_passes(manager):
    m = manager()
    handler, entered, gate = gated()
    m.register("slow", handler)
    m.start()
    job = m.submit("slow", {}, "o")
    assert entered.wait(WAIT)
    assert m.wait(job.id, 0.01).status == RUNNING
    gate.set()
    assert m.wait(job.id, WAIT).status == SUCCEEDED
    assert m.wait("no-such-job", 0.01) is None


def test_nothing_is_kept_in_memory_for_finished_jobs(manager):
    """Bounded memory: a server that ran many jobs holds no bookkeeping for the finished ones."""
    m = manager()
    handler, entered, gate = gated()

    def step(params, ctx):
        ctx.progress(0.5)
        return {}

    m.register("slow", handler)
    m.register("step", step)
    m.register("fail", lambda params, ctx: 1 / 0)
    m.start()
    running = m.submit("slow", {}, "o")
    assert entered.wait(WAIT)
    queued = m.submit("step", {}, "o")
    m.cancel(queued.id)
    m.cancel(running.id)
    gate.set()
    jobs = [running, queued, m.submit("step", {}, "o"), m.submit("fail", {}, "o")]
    assert [m.wait(j.id, WAIT).status for j in jobs] == [CANCELLED, CANCELLED, SUCCEEDED, FAILED]
    assert (m._done, m._cancel_requested, m._last_write, m._live) == ({}, set(), {}, {})


# --------------------------------------------------------------------------- cancel

def test_cancel_a_queued_job_it_never_runs_and_its_uploads_go(manager, tmp_path):
    m = manager()
    log = []
    m.register("echo", lambda params, ctx: log.append(ctx.job_id) or {})
    upload = tmp_path / "in.wav"
    upload.write_bytes(b"x")
    job = m.submit("echo", {}, "o", uploads=[str(upload)])
    other = m.submit("echo", {}, "o")
    cancelled = m.cancel(job.id)
    assert (cancelled.status, cancelled.message) == (CANCELLED, "cancelled before it started")
    assert cancelled.finished_at is not None and not upload.exists()
    assert statuses(m, job.id) == [QUEUED, CANCELLED] and m.queue_length() == 1
    assert m.wait(job.id, WAIT).status == CANCELLED
    m.start()
    assert m.wait(other.id, WAIT).status == SUCCEEDED
    assert log == [other.id]
    assert m.cancel(job.id) == cancelled  # finished: unchanged
    assert m.cancel(other.id).status == SUCCEEDED
    assert m.cancel("no-such-job") is None


def test_cancel_a_running_job_stops_it_at_its_next_checkpoint_and_drops_its_files(manager, tmp_path):
    m = manager()
    entered, gate, after = threading.Event(), threading.Event(), []
    upload = tmp_path / "in.mp4"
    upload.write_bytes(b"x")

    def render(params, ctx):
        ctx.output_dir.mkdir(parents=True)
        (ctx.output_dir / "partial.mp4").write_bytes(b"x")
        entered.set()
        assert gate.wait(WAIT)
        after.append(ctx.cancelled)
        try:
            ctx.progress(0.5)
        except Cancelled as exc:  # a handler may clean up and log it
            after.append(str(exc))
            raise
        after.append("went on")
        return {}

    m.register("render", render)
    m.start()
    job = m.submit("render", {}, "o", uploads=[str(upload)])
    assert entered.wait(WAIT)
    assert (m.outputs_dir / job.id / "partial.mp4").exists()
    assert m.cancel(job.id).status == RUNNING  # asked: it stops at its next checkpoint
    gate.set()
    done = m.wait(job.id, WAIT)
    assert (done.status, done.message, done.result) == (CANCELLED, "cancelled", None)
    assert after == [True, f"job {job.id} was cancelled"]
    assert not (m.outputs_dir / job.id).exists() and not upload.exists()


def test_a_handler_that_never_checks_still_ends_cancelled(manager):
    m = manager()
    handler, entered, gate = gated()
    m.register("deaf", handler)
    m.start()
    job = m.submit("deaf", {"x": 1}, "o")
    assert entered.wait(WAIT)
    m.cancel(job.id)
    gate.set()
    done = m.wait(job.id, WAIT)
    assert (done.status, done.result) == (CANCELLED, None)


# --------------------------------------------------------------------------- queues and lanes

def test_unknown_kinds_and_lanes_are_refused_and_nothing_is_stored(manager):
    m = manager()
    m.register("echo", lambda params, ctx: {})
    with pytest.raises(KeyError, match="no handler for job kind 'nope'"):
        m.submit("nope", {}, "o")
    with pytest.raises(ValueError, match="unknown lane 'urgent'"):
        m.submit("echo", {}, "o", lane="urgent")
    assert m.store.list() == [] and m.queue_length() == 0


def test_each_lane_holds_queue_max_jobs_and_then_refuses(manager):
    m = manager(queue_max=2)
    m.register("echo", lambda params, ctx: {})
    for _ in range(2):
        m.submit("echo", {}, "o")
    with pytest.raises(QueueFull, match="the job queue is full; retry in about 15 s"):
        m.submit("echo", {}, "o")
    m.submit("echo", {}, "o", lane=BATCH)
    assert (m.queue_length(), m.queue_length(INTERACTIVE), m.queue_length(BATCH)) == (3, 2, 1)
    assert len(m.store.list()) == 3


def test_by_default_a_lane_holds_thirty_two_jobs(manager):
    m = manager()
    m.register("echo", lambda params, ctx: {})
    for _ in range(32):
        m.submit("echo", {}, "o")
    with pytest.raises(QueueFull):
        m.submit("echo", {}, "o")


def test_by_default_a_pause_runs_at_most_eight_interactive_jobs(manager):
    log = []
    m = manager()
    batch = Batch(log, steps=3)
    m.register("video", batch)
    m.register("tts", lambda params, ctx: log.append(params["n"]) or {})
    m.start()
    b = m.submit("video", {}, "o", lane=BATCH)
    assert batch.at_step[0].wait(WAIT)
    for n in range(9):
        m.submit("tts", {"n": n}, "o")
    batch.release_all()
    assert m.wait(b.id, WAIT).status == SUCCEEDED
    assert log == ["batch0", *range(8), "batch1", 8, "batch2"]


def test_a_job_cancelled_while_waiting_in_a_burst_is_skipped_and_the_burst_goes_on(manager):
    log = []
    m = manager()
    batch = Batch(log, steps=2)
    queued = {}
    m.register("video", batch)
    m.register("tts", lambda params, ctx: log.append(params["n"]) or {})
    m.register("canceller", lambda params, ctx: log.append("cancel") or m.cancel(queued["victim"]) and {})
    m.start()
    b = m.submit("video", {}, "o", lane=BATCH)
    assert batch.at_step[0].wait(WAIT)
    m.submit("canceller", {}, "o")
    queued["victim"] = m.submit("tts", {"n": "victim"}, "o").id
    m.submit("tts", {"n": "after"}, "o")
    batch.release_all()
    assert m.wait(b.id, WAIT).status == SUCCEEDED
    assert log == ["batch0", "cancel", "after", "batch1"]
    assert m.get(queued["victim"]).status == CANCELLED


def test_jobs_run_on_the_worker_thread_and_progress_from_a_helper_thread_does_not_yield(manager):
    log, threads = [], []
    m = manager()
    entered, gate = threading.Event(), threading.Event()

    def video(params, ctx):
        threads.append(threading.current_thread())
        entered.set()
        assert gate.wait(WAIT)
        helper = threading.Thread(target=ctx.progress, args=(0.5,))
        helper.start()
        helper.join()
        log.append("after helper")
        ctx.progress(1.0)  # on the worker thread: the waiting job runs now
        log.append("end")
        return {}

    def tts(params, ctx):
        threads.append(threading.current_thread())
        log.append("tts")
        return {}

    m.register("video", video)
    m.register("tts", tts)
    m.start()
    b = m.submit("video", {}, "o", lane=BATCH)
    assert entered.wait(WAIT)
    m.submit("tts", {}, "o")
    gate.set()
    assert m.wait(b.id, WAIT).status == SUCCEEDED
    assert log == ["after helper", "tts", "end"]
    assert threads[0] is threads[1] and threads[0].name == "enfoads-gpu-worker" and threads[0].daemon


def test_starting_twice_keeps_one_worker(manager):
    m = manager()
    both = threading.Barrier(2, timeout=0.5)  # one worker: always broken after 0.5 s; two would meet

    def job(params, ctx):
        try:
            both.wait()
            return {"together": True}
        except threading.BrokenBarrierError:
            return {"together": False}

    m.register("job", job)
    m.start()
    m.start()
    a, b = m.submit("job", {}, "o"), m.submit("job", {}, "o")
    assert m.wait(a.id, WAIT).result == {"together": False}
    assert m.wait(b.id, WAIT).result == {"together": False}


def test_stop_lets_the_running_job_finish_starts_nothing_new_and_a_restart_runs_the_rest(manager, wait_for, tmp_path):
    log = []
    m = manager()
    batch = Batch(log, steps=2)
    m.register("video", batch)
    m.register("tts", lambda params, ctx: log.append("tts") or {})
    m.start()
    b = m.submit("video", {}, "o", lane=BATCH)
    assert batch.at_step[0].wait(WAIT)
    t = m.submit("tts", {}, "o")
    stopper = threading.Thread(target=m.stop)
    stopper.start()
    wait_for(lambda: m._stopping)
    batch.release_all()
    stopper.join(WAIT)
    assert not stopper.is_alive()
    assert m.get(b.id).status == SUCCEEDED and m.get(t.id).status == QUEUED
    assert log == ["batch0", "batch1"]
    m.start()  # stopped and started again: the queued job runs
    assert m.wait(t.id, WAIT).status == SUCCEEDED and log[-1] == "tts"


# --------------------------------------------------------------------------- restart

def test_queued_jobs_run_again_after_a_restart_and_results_survive_it(manager, caplog):
    first = manager()
    first.register("echo", lambda params, ctx: {"x": params["x"]})
    a = first.submit("echo", {"x": 1}, "ana")
    b = first.submit("echo", {"x": 2}, "bob", lane=BATCH)
    first.stop()
    first.store.close()
    second = manager()
    second.register("echo", lambda params, ctx: {"x": params["x"] * 10})
    with caplog.at_level(logging.INFO, logger="enfoads.jobs"):
        second.start()
    assert "resuming 2 queued job(s) after restart" in caplog.text
    assert second.wait(a.id, WAIT).result == {"x": 10}
    assert second.wait(b.id, WAIT).result == {"x": 20} and second.get(b.id).lane == BATCH
    second.stop()
    second.store.close()
    third = manager()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="enfoads.jobs"):
        third.start()
    assert "resuming" not in caplog.text
    assert third.get(a.id).status == SUCCEEDED and third.get(b.id).result == {"x": 20}


def test_a_job_running_when_the_process_died_reads_interrupted_after_restart(manager, tmp_path):
    upload = tmp_path / "in.wav"
    upload.write_bytes(b"x")
    first = manager()
    first.store.insert(Job(id="was-running", kind="echo", owner="o", status=RUNNING, uploads=[str(upload)]))
    first.store.close()
    second = manager()
    second.register("echo", lambda params, ctx: {})
    second.start()
    job = second.get("was-running")
    assert (job.status, job.message, job.error["kind"]) == (FAILED, INTERRUPTED, "interrupted")
    assert not upload.exists()
    assert second.queue_length() == 0


def test_a_job_submitted_before_start_runs_once_beside_the_recovered_ones(manager):
    log = []
    first = manager()
    first.store.insert(Job(id="recovered", kind="echo", owner="o", created_at=time.time() + 100))
    first.store.close()
    m = manager()
    m.register("echo", lambda params, ctx: log.append(ctx.job_id) or {})
    early = m.submit("echo", {}, "o")  # older than the recovered one: found first by recover()
    m.start()
    assert m.wait(early.id, WAIT).status == SUCCEEDED and m.wait("recovered", WAIT).status == SUCCEEDED
    assert sorted(log) == sorted([early.id, "recovered"])


def test_queued_jobs_of_a_family_registered_late_wait_for_it(manager):
    first = manager()
    first.store.insert(Job(id="late-job", kind="late", owner="o"))
    first.store.close()
    m = manager()
    m.register("echo", lambda params, ctx: {})
    m.start()
    m.register("other", lambda params, ctx: {})  # another family: the late job still waits
    assert m.wait(m.submit("echo", {}, "o").id, WAIT).status == SUCCEEDED
    assert m.get("late-job").status == QUEUED
    m.register("late", lambda params, ctx: {"late": True})
    assert m.wait("late-job", WAIT).result == {"late": True}


def test_a_queued_job_whose_row_vanished_is_skipped(manager):
    m = manager()
    log = []
    m.register("echo", lambda params, ctx: log.append(ctx.job_id) or {})
    gone = m.submit("echo", {}, "o")
    m.store.delete(gone.id)
    kept = m.submit("echo", {}, "o")
    m.start()
    assert m.wait(kept.id, WAIT).status == SUCCEEDED and log == [kept.id]


# --------------------------------------------------------------------------- retention

def test_finished_jobs_and_their_files_expire_after_the_retention(manager, clock):
    m = manager(retention_s=3600.0)
    m.register("echo", lambda params, ctx: {})
    for id_, status, finished in [("old", SUCCEEDED, T0 - 3601), ("recent", FAILED, T0 - 3599),
                                  ("waiting", QUEUED, None)]:
        m.store.insert(Job(id=id_, kind="late", owner="o", status=status, finished_at=finished, created_at=1.0))
        (m.outputs_dir / id_).mkdir(parents=True)
        (m.outputs_dir / id_ / "out.wav").write_bytes(b"x")
    m.start()  # the first sweep runs when the worker starts

    def between_jobs():  # the worker sweeps between jobs: after the first, before the second
        for _ in range(2):
            assert m.wait(m.submit("echo", {}, "o").id, WAIT).status == SUCCEEDED

    between_jobs()
    assert m.get("old") is None and not (m.outputs_dir / "old").exists()
    assert m.get("recent") is not None and (m.outputs_dir / "recent" / "out.wav").exists()
    assert m.get("waiting").status == QUEUED and (m.outputs_dir / "waiting").exists()
    clock.now += 10.0  # "recent" has expired, but the next sweep is an hour after the last
    clock.mono += 3599.0
    between_jobs()
    assert m.get("recent") is not None
    clock.mono += 1.0
    between_jobs()
    assert m.get("recent") is None and not (m.outputs_dir / "recent").exists()
    assert m.get("waiting") is not None


def test_purge_expired_returns_what_it_deleted_and_keeps_everything_without_a_retention(manager, clock):
    m = manager()
    m.store.insert(Job(id="ancient", kind="k", owner="o", status=SUCCEEDED, finished_at=1.0))
    assert m.purge_expired() == [] and m.get("ancient") is not None
    m.retention_s = 60.0
    m.store.insert(Job(id="fresh", kind="k", owner="o", status=SUCCEEDED, finished_at=T0 - 60))
    (m.outputs_dir / "ancient").mkdir(parents=True)  # a job that wrote no files has no folder to delete
    m.store.insert(Job(id="no-files", kind="k", owner="o", status=FAILED, finished_at=2.0))
    assert sorted(m.purge_expired()) == ["ancient", "no-files"] and m.get("fresh") is not None
    assert not (m.outputs_dir / "ancient").exists()


def test_a_failing_sweep_does_not_stop_the_worker(manager, monkeypatch):
    m = manager(retention_s=60.0)

    def broken(cutoff):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(m.store, "delete_finished_before", broken)
    m.register("echo", lambda params, ctx: {})
    m.start()
    assert m.wait(m.submit("echo", {}, "o").id, WAIT).status == SUCCEEDED


def _circular():
    result = {}
    result["self"] = result
    return result


@pytest.mark.parametrize("result, why", [({"labels": {"a", "b"}}, "Object of type set is not JSON serializable"),
                                         (_circular(), "Circular reference detected")])
def test_a_result_that_cannot_be_saved_fails_the_job_instead_of_leaving_it_running(manager, result, why):
    """A handler's result is stored as JSON: one that is not (a numpy number, a set) must not leave its job
    "running" forever with its caller waiting."""
    m = manager()
    m.register("odd", lambda params, ctx: result)
    m.register("echo", lambda params, ctx: {"ok": True})
    m.start()
    job = m.wait(m.submit("odd", {}, "o").id, WAIT)
    assert job.status == FAILED and job.result is None
    assert job.message == f"the job's result could not be saved: {why}"
    assert job.error == {"kind": "internal", "message": job.message}
    assert statuses(m, job.id)[-1] == FAILED
    assert m.wait(m.submit("echo", {}, "o").id, WAIT).result == {"ok": True}


def test_an_idle_worker_sweeps_when_the_hour_comes(manager, clock, wait_for):
    m = manager(retention_s=3600.0)
    m.store.insert(Job(id="recent", kind="k", owner="o", status=SUCCEEDED, finished_at=T0 - 3599))

    def handler(params, ctx):
        clock.now += 10.0  # "recent" expires
        clock.mono = 3600.5 - 0.05  # the first sweep ran at start (0.5): the next is due in 50 ms
        return {}

    m.register("echo", handler)
    m.start()
    assert m.wait(m.submit("echo", {}, "o").id, WAIT).status == SUCCEEDED
    assert m.get("recent") is not None
    clock.mono = 3600.5  # no job comes: the worker wakes up for the sweep by itself
    wait_for(lambda: m.get("recent") is None, timeout=5)
    assert m.wait(m.submit("echo", {}, "o").id, WAIT).status == SUCCEEDED  # and then still runs jobs


def test_a_job_whose_upload_is_already_gone_still_finishes(manager, tmp_path):
    m = manager()
    upload = tmp_path / "in.wav"
    upload.write_bytes(b"x")

    def consume(params, ctx):
        upload.unlink()  # the handler moved or deleted its input itself
        return {"ok": True}

    m.register("consume", consume)
    m.start()
    job = m.wait(m.submit("consume", {}, "o", uploads=[str(upload)]).id, WAIT)
    assert job.status == SUCCEEDED and job.result == {"ok": True}
    assert statuses(m, job.id)[-1] == SUCCEEDED  # its end was announced


def test_stop_gives_up_waiting_for_a_job_after_its_timeout(manager):
    m = manager()
    handler, entered, gate = gated()
    m.register("slow", handler)
    m.start()
    job = m.submit("slow", {}, "o")
    assert entered.wait(WAIT)
    stopper = threading.Thread(target=m.stop, kwargs={"timeout": 0.05})
    stopper.start()
    stopper.join(5)
    stopped_in_time = not stopper.is_alive()
    gate.set()
    assert stopped_in_time
    assert m.wait(job.id, WAIT).status == SUCCEEDED  # the job itself was not cut short
