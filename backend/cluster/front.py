"""The front's job manager in distributed mode: the routes' `JobManager` interface over Redis workers.

A job is recorded in SQLite as in single-process mode, and its id goes to its family's Dramatiq
queue. A worker that takes the message asks `start()` for a lease: each delivery is an attempt,
numbered in the `leases` table, and only the holder of the current lease may report progress,
upload files or finish. So a job completes at most once: a redelivered message of a finished job,
or a worker whose lease was taken over, is told to drop it (409).

Worker death: Dramatiq gives a silent worker's message to another worker (new attempt). If no
worker takes it, the front's watchdog sees the job's reports stop: after `cluster_worker_lost_s`
it reads queued again ("worker lost") while attempts remain, and `failed: worker lost` when they
are spent or nobody takes it up within another such period. Never stuck "running".
"""
from __future__ import annotations

import logging
import secrets
import shutil
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import redis
from dramatiq import Message

from services.errors import ServiceError

from ..jobs import FINISHED, INTERACTIVE, LANES, QUEUED, RUNNING, Job, JobManager, QueueFull
from .queue import ACTOR, LOCAL_KINDS, QueueUnavailable, family_of, queue_name

log = logging.getLogger("enfoads.cluster")

WORKER_LOST = "worker lost"
INPUT_MARK = "__enfoads_input__"


class LeaseLost(ServiceError):
    """The caller's lease is not the job's current one (taken over, or the job has ended): 409."""

    kind = "conflict"

    def __init__(self, message: str):
        super().__init__(message, code="lease_lost")


class Leases:
    """One row per distributed job: attempts so far, the current lease, its worker, last report."""

    def __init__(self, path: Path):
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS leases (job_id TEXT PRIMARY KEY, attempts INTEGER NOT NULL,"
                         " lease TEXT, worker TEXT, beat REAL, cancel INTEGER NOT NULL DEFAULT 0, lost_at REAL)")

    def create(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO leases (job_id, attempts) VALUES (?, 0)", (job_id,))

    def get(self, job_id: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT attempts, lease, worker, beat, cancel, lost_at FROM leases WHERE job_id=?",
                                   (job_id,)).fetchone()
        if row is None:
            return None
        return dict(zip(("attempts", "lease", "worker", "beat", "cancel", "lost_at"), row))

    def update(self, job_id: str, **fields) -> None:
        cols = ", ".join(f"{k}=?" for k in fields)
        with self._lock:
            self._db.execute(f"UPDATE leases SET {cols} WHERE job_id=?", [*fields.values(), job_id])

    def held(self) -> list[tuple[str, float | None, float | None]]:
        """(job_id, last report, lost_at) of every job that has a lease or was lost."""
        with self._lock:
            return self._db.execute("SELECT job_id, beat, lost_at FROM leases WHERE lease IS NOT NULL"
                                    " OR lost_at IS NOT NULL").fetchall()

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM leases WHERE job_id=?", (job_id,))

    def close(self) -> None:
        with self._lock:
            self._db.close()


def mark_inputs(params, roots: list[Path], found: list[str]):
    """`params` with every path of an existing file under `roots` (uploads, job outputs) replaced by a
    numbered mark; `found` gets the paths. The worker fetches each and puts its own path back."""
    if isinstance(params, dict):
        return {k: mark_inputs(v, roots, found) for k, v in params.items()}
    if isinstance(params, list):
        return [mark_inputs(v, roots, found) for v in params]
    if isinstance(params, str) and params.startswith("/"):
        path = Path(params)
        if any(path.is_relative_to(root) for root in roots) and path.is_file():
            found.append(params)
            return {INPUT_MARK: len(found) - 1, "name": path.name}
    return params


class ClusterJobManager(JobManager):
    WATCH_INTERVAL = 1.0

    def __init__(self, store, outputs_dir: Path, *, broker, redis_url: str, data_dir: Path,
                 worker_lost_s: float, max_attempts: int, time_limit_s: float, **kwargs):
        super().__init__(store, outputs_dir, **kwargs)
        self.broker = broker
        self.redis_url = redis_url
        self.input_roots = [data_dir / "uploads", outputs_dir]
        self.worker_lost_s = worker_lost_s
        self.max_attempts = max_attempts
        self.time_limit_s = time_limit_s
        self.leases = Leases(store.path)
        self._lease_lock = threading.Lock()  # start/finish/loss decisions, one at a time
        self._watchdog: threading.Thread | None = None
        self._watch_stop = threading.Event()

    @staticmethod
    def is_remote(kind: str) -> bool:
        return kind not in LOCAL_KINDS

    # --- the routes' interface ---------------------------------------------------------------
    def _recover(self) -> list[Job]:
        # Distributed jobs are not interrupted by a front restart: their workers keep running and
        # report to the new process; their queued messages wait in Redis. Give each held job a
        # fresh period before the watchdog may call its worker lost.
        now = time.time()
        for job_id, _beat, _lost in self.leases.held():
            self.leases.update(job_id, beat=now)
        return self.store.recover(kinds=set(LOCAL_KINDS))

    def start(self) -> None:
        super().start()
        if self._watchdog is None:
            self._watch_stop.clear()
            self._watchdog = threading.Thread(target=self._watch, name="enfoads-cluster-watchdog", daemon=True)
            self._watchdog.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._watch_stop.set()
        if self._watchdog is not None:
            self._watchdog.join(timeout)
            self._watchdog = None
        super().stop(timeout)
        self.leases.close()

    def submit(self, kind: str, params: dict, owner: str, *, uploads: list[str] | None = None,
               lane: str = INTERACTIVE) -> Job:
        if not self.is_remote(kind):
            return super().submit(kind, params, owner, uploads=uploads, lane=lane)
        if kind not in self._handlers:
            raise KeyError(f"no handler for job kind {kind!r}")
        if lane not in LANES:
            raise ValueError(f"unknown lane {lane!r}")
        with self._cond:  # the bound counts every queued job of the cluster: they are all recorded here
            if self.queue_length(lane) >= self.queue_max:
                raise QueueFull(self._retry_after(lane))
            job = Job(id=uuid.uuid4().hex, kind=kind, owner=owner, params=params, message="queued",
                      uploads=list(uploads or []), lane=lane)
            self.store.insert(job)
            self.leases.create(job.id)
            self._done[job.id] = threading.Event()
        message = Message(queue_name=queue_name(family_of(kind)), actor_name=ACTOR, args=(job.id,), kwargs={},
                          options={"time_limit": int(self.time_limit_s * 1000)})
        try:
            self.broker.enqueue(message)
        except redis.RedisError as exc:
            self.store.delete(job.id)
            self.leases.delete(job.id)
            self._done.pop(job.id, None)
            for path in job.uploads:
                Path(path).unlink(missing_ok=True)
            log.warning("job %s not queued: Redis unreachable (%s)", job.id[:8], exc)
            raise QueueUnavailable(self.redis_url, str(exc) or type(exc).__name__) from None
        self._emit(job)
        return job

    def cancel(self, job_id: str) -> Job | None:
        job = self.store.get(job_id)
        if job is None or job.status in FINISHED or not self.is_remote(job.kind):
            return super().cancel(job_id)
        with self._lease_lock:
            job = self.store.get(job_id)
            if job.status == QUEUED:  # its message, when a worker takes it, is dropped at start()
                self._finish(job_id, "cancelled", message="cancelled before it started")
            elif job.status not in FINISHED:  # the worker hears it in its next report's answer
                self.leases.update(job_id, cancel=1)
        return self.store.get(job_id)

    def queue_length(self, lane: str | None = None) -> int:
        lanes = [lane] if lane is not None else list(LANES)
        return sum(len(self._queues[ln]) + self.store.count(QUEUED, lane=ln, exclude_kinds=set(LOCAL_KINDS))
                   for ln in lanes)

    def _retry_after(self, lane: str) -> int:
        durations = self._durations[lane]
        per_job = sum(durations) / len(durations) if durations else 5.0
        return max(1, int(per_job * (self.queue_length(lane) + 1) + 0.999))

    def purge_expired(self) -> list[str]:
        ids = super().purge_expired()
        for job_id in ids:
            self.leases.delete(job_id)
        return ids

    # --- the workers' side (backend/routes/cluster.py) ---------------------------------------
    def worker_start(self, job_id: str, worker: str) -> dict:
        """A worker took the job's message: a new attempt with a new lease, or LeaseLost to drop it."""
        with self._lease_lock:
            job, lease = self.store.get(job_id), self.leases.get(job_id)
            if job is None or lease is None:
                raise LeaseLost(f"no job {job_id}")
            if job.status in FINISHED:
                raise LeaseLost(f"job {job_id} already {job.status}")
            attempt = lease["attempts"] + 1
            if attempt > self.max_attempts:
                self._lost(job_id, final=True)
                raise LeaseLost(f"job {job_id} failed: {WORKER_LOST}")
            token = secrets.token_urlsafe(16)
            self.leases.update(job_id, attempts=attempt, lease=token, worker=worker, beat=time.time(), lost_at=None)
            started = time.time()
            message = f"running on {worker}" + (f" (attempt {attempt})" if attempt > 1 else "")
            self.store.update(job_id, status=RUNNING, started_at=started, message=message, progress=0.0)
            job.status, job.started_at, job.message, job.progress = RUNNING, started, message, 0.0
            self._live[job_id] = job
        log.info("job %s (%s) started on %s, attempt %d", job_id[:8], job.kind, worker, attempt)
        self._emit(job)
        inputs: list[str] = []
        params = mark_inputs(job.params, self.input_roots, inputs)
        return {"job_id": job_id, "kind": job.kind, "lane": job.lane, "params": params, "inputs": len(inputs),
                "lease": token, "attempt": attempt, "report_every_s": max(0.5, self.worker_lost_s / 6)}

    def _check_lease(self, job_id: str, token: str) -> dict:
        lease = self.leases.get(job_id)
        job = self.store.get(job_id)
        if lease is None or job is None or job.status in FINISHED or lease["lease"] is None \
                or not secrets.compare_digest(lease["lease"], token):
            raise LeaseLost(f"job {job_id}: this worker's lease is no longer valid")
        return lease

    def worker_report(self, job_id: str, token: str, progress: float | None, message: str) -> dict:
        """Progress or a plain heartbeat; the answer tells the worker whether the job was cancelled."""
        with self._lease_lock:
            lease = self._check_lease(job_id, token)
            self.leases.update(job_id, beat=time.time())
            if job_id not in self._live:  # a restarted front: events resume from the stored row
                self._live[job_id] = self.store.get(job_id)
        if progress is not None:
            self._progress(job_id, max(0.0, min(1.0, float(progress))), message)
        return {"cancel": bool(lease["cancel"])}

    def worker_input(self, job_id: str, token: str, index: int) -> Path:
        with self._lease_lock:
            self._check_lease(job_id, token)
        found: list[str] = []
        mark_inputs(self.store.get(job_id).params, self.input_roots, found)
        if not 0 <= index < len(found):
            raise LeaseLost(f"job {job_id} has no input {index}")
        return Path(found[index])

    def worker_output_dir(self, job_id: str, token: str) -> Path:
        with self._lease_lock:
            self._check_lease(job_id, token)
        return self.outputs_dir / job_id

    def worker_finish(self, job_id: str, token: str, status: str, *, message: str = "", result: dict | None = None,
                      error: dict | None = None) -> Job:
        with self._lease_lock:
            self._check_lease(job_id, token)
            self.leases.update(job_id, lease=None, beat=None)
            job = self.store.get(job_id)
            if status == "succeeded":
                if job.started_at:
                    self._durations[job.lane].append(time.time() - job.started_at)
                self._finish(job_id, status, message="done", result=result or {}, progress=1.0)
            else:
                if status == "cancelled":
                    shutil.rmtree(self.outputs_dir / job_id, ignore_errors=True)
                self._finish(job_id, status, message=message or status, error=error)
            self._live.pop(job_id, None)
        return self.store.get(job_id)

    # --- watchdog ------------------------------------------------------------------------------
    def _watch(self) -> None:
        while not self._watch_stop.wait(self.WATCH_INTERVAL):
            try:
                self.check_lost()
            except Exception:
                log.exception("checking for lost workers failed")

    def check_lost(self) -> None:
        now = time.time()
        for job_id, beat, lost_at in self.leases.held():
            with self._lease_lock:
                if lost_at is not None and now - lost_at > self.worker_lost_s:
                    self._lost(job_id, final=True)  # queued again after a loss, and no worker took it
                elif lost_at is None and beat is not None and now - beat > self.worker_lost_s:
                    lease = self.leases.get(job_id)
                    self._lost(job_id, final=lease is not None and lease["attempts"] >= self.max_attempts)

    def _lost(self, job_id: str, *, final: bool) -> None:
        job = self.store.get(job_id)
        if job is None or job.status in FINISHED:
            self.leases.update(job_id, lease=None, lost_at=None)
            return
        if final:
            log.warning("job %s failed: %s", job_id[:8], WORKER_LOST)
            self.leases.update(job_id, lease=None, lost_at=None)
            self._live.pop(job_id, None)
            self._finish(job_id, "failed", message=WORKER_LOST,
                         error={"kind": "unavailable", "message": f"{WORKER_LOST}: the GPU worker running this job "
                                "stopped answering and no other worker finished it", "code": "worker_lost"})
            return
        log.warning("job %s: %s; waiting for another worker", job_id[:8], WORKER_LOST)
        self.leases.update(job_id, lease=None, lost_at=time.time())
        message = f"{WORKER_LOST}; waiting for another worker"
        self.store.update(job_id, status=QUEUED, message=message, progress=0.0)
        job.status, job.message, job.progress = QUEUED, message, 0.0
        self._live.pop(job_id, None)
        self._emit(job)
