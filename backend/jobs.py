"""Persistent jobs: every GPU-bound request runs as one.

queued -> running (progress 0..1 + message) <-> paused -> succeeded | failed | cancelled. Jobs live in
SQLite (WAL) so nothing is lost on a crash; one worker thread runs them (one GPU); a failing job
fails alone. At start-up a job found "running" or "paused" was interrupted by a restart and becomes
failed; queued jobs run again. Distributed mode (backend/cluster) subclasses `JobManager`: the routes
see the same interface.

Two lanes, one queue each: `interactive` (short by nature) runs before `batch` (videos, long audio).
A batch job yields at its progress checkpoints while interactive work waits: the worker runs that
work on the same thread (one GPU, no second worker), then the batch job resumes where it stopped.
Fairness bound: a pause runs at most the interactive jobs waiting when it began (no more than
`interactive_burst`), and a resumed batch job always advances one more checkpoint before it can
yield again.
"""
from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import threading
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from services.errors import Cancelled, ServiceError

log = logging.getLogger("enfoads.jobs")

QUEUED, RUNNING, PAUSED = "queued", "running", "paused"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
FINISHED = {SUCCEEDED, FAILED, CANCELLED}
INTERACTIVE, BATCH = "interactive", "batch"
LANES = (INTERACTIVE, BATCH)
INTERRUPTED = "interrupted by restart"


@dataclass
class Job:
    id: str
    kind: str
    owner: str
    status: str = QUEUED
    progress: float = 0.0
    message: str = ""
    params: dict = field(default_factory=dict)
    result: dict | None = None
    error: dict | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    uploads: list = field(default_factory=list)  # input files this job owns: deleted when it ends
    lane: str = INTERACTIVE

    def public(self) -> dict:
        data = asdict(self)
        data.pop("params")
        data.pop("owner")
        data.pop("uploads")
        return data


class QueueFull(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"the job queue is full; retry in about {retry_after} s")
        self.retry_after = retry_after


class JobStore:
    """SQLite job table. One connection shared under a lock: writes are small and rare."""

    COLUMNS = ("id", "kind", "owner", "status", "progress", "message", "params", "result", "error",
               "created_at", "started_at", "finished_at", "uploads", "lane")
    JSON_COLUMNS = {"params", "result", "error", "uploads"}

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, owner TEXT NOT NULL,"
            " status TEXT NOT NULL, progress REAL NOT NULL, message TEXT NOT NULL, params TEXT, result TEXT,"
            " error TEXT, created_at REAL NOT NULL, started_at REAL, finished_at REAL, uploads TEXT,"
            " lane TEXT NOT NULL DEFAULT 'interactive')")
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        if "lane" not in columns:  # a database written before lanes existed
            self._db.execute("ALTER TABLE jobs ADD COLUMN lane TEXT NOT NULL DEFAULT 'interactive'")
        self._db.execute("CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, created_at)")

    def _row_to_job(self, row) -> Job:
        data = dict(zip(self.COLUMNS, row))
        for col in self.JSON_COLUMNS:
            data[col] = json.loads(data[col]) if data[col] is not None else None
        data["params"] = data["params"] or {}
        data["uploads"] = data["uploads"] or []
        return Job(**data)

    def insert(self, job: Job) -> None:
        values = [json.dumps(getattr(job, c)) if c in self.JSON_COLUMNS and getattr(job, c) is not None
                  else getattr(job, c) for c in self.COLUMNS]
        with self._lock:
            self._db.execute(f"INSERT INTO jobs ({','.join(self.COLUMNS)}) VALUES ({','.join('?' * len(values))})",
                             values)

    def update(self, job_id: str, **fields: Any) -> None:
        cols = ", ".join(f"{k}=?" for k in fields)
        values = [json.dumps(v) if k in self.JSON_COLUMNS and v is not None else v for k, v in fields.items()]
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {cols} WHERE id=?", [*values, job_id])

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute(f"SELECT {','.join(self.COLUMNS)} FROM jobs WHERE id=?", (job_id,)).fetchone()
        return self._row_to_job(row) if row else None

    def list(self, *, owner: str | None = None, status: str | None = None, limit: int = 50) -> list[Job]:
        where, args = [], []
        if owner:
            where.append("owner=?")
            args.append(owner)
        if status:
            where.append("status=?")
            args.append(status)
        sql = f"SELECT {','.join(self.COLUMNS)} FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, [*args, limit]).fetchall()
        return [self._row_to_job(r) for r in rows]

    def recover(self, kinds: set[str] | None = None) -> list[Job]:
        """Mark jobs left running (or paused) by a dead process as failed; return queued jobs, oldest first.
        `kinds`: only jobs of these kinds (the others run elsewhere: distributed mode's workers)."""
        now = time.time()
        error = json.dumps({"kind": "interrupted", "message": INTERRUPTED})
        only, args = "", []
        if kinds is not None:
            args = sorted(kinds)
            only = f" AND kind IN ({','.join('?' * len(args))})"
        with self._lock:
            interrupted = self._db.execute(f"SELECT {','.join(self.COLUMNS)} FROM jobs WHERE status IN (?, ?){only}",
                                           (RUNNING, PAUSED, *args)).fetchall()
            self._db.execute(f"UPDATE jobs SET status=?, message=?, error=?, finished_at=? WHERE status IN (?, ?){only}",
                             (FAILED, INTERRUPTED, error, now, RUNNING, PAUSED, *args))
            rows = self._db.execute(f"SELECT {','.join(self.COLUMNS)} FROM jobs WHERE status=?{only} ORDER BY created_at",
                                    (QUEUED, *args)).fetchall()
        for row in interrupted:
            for path in self._row_to_job(row).uploads:
                Path(path).unlink(missing_ok=True)
        return [self._row_to_job(r) for r in rows]

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE id=?", (job_id,))

    def count(self, status: str, *, lane: str | None = None, exclude_kinds: set[str] = frozenset()) -> int:
        sql, args = "SELECT COUNT(*) FROM jobs WHERE status=?", [status]
        if lane is not None:
            sql += " AND lane=?"
            args.append(lane)
        if exclude_kinds:
            sql += f" AND kind NOT IN ({','.join('?' * len(exclude_kinds))})"
            args += sorted(exclude_kinds)
        with self._lock:
            return self._db.execute(sql, args).fetchone()[0]

    def delete_finished_before(self, cutoff: float) -> list[str]:
        """Remove finished jobs that ended before `cutoff` (unix time); returns their ids."""
        with self._lock:
            ids = [r[0] for r in self._db.execute(
                "SELECT id FROM jobs WHERE status IN (?, ?, ?) AND finished_at < ?",
                (SUCCEEDED, FAILED, CANCELLED, cutoff)).fetchall()]
            self._db.executemany("DELETE FROM jobs WHERE id=?", [(i,) for i in ids])
        return ids

    def integrity_ok(self) -> bool:
        with self._lock:
            return self._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    def close(self) -> None:
        with self._lock:
            self._db.close()


class JobContext:
    """What a job handler gets: its parameters, an output folder, progress and cancel."""

    def __init__(self, manager: "JobManager", job: Job):
        self._manager = manager
        self.job_id = job.id
        self.lane = job.lane
        self.params = job.params
        self.output_dir = manager.outputs_dir / job.id

    def progress(self, fraction: float, message: str = "") -> None:
        """Report progress; also the checkpoint where a batch job yields and where cancel is seen."""
        self._manager._progress(self.job_id, max(0.0, min(1.0, float(fraction))), message)
        self.check_cancelled()
        if self.lane == BATCH:
            self._manager._yield_to_interactive(self)
        self.check_cancelled()

    @property
    def cancelled(self) -> bool:
        return self.job_id in self._manager._cancel_requested

    def check_cancelled(self) -> None:
        if self.cancelled:
            raise Cancelled(f"job {self.job_id} was cancelled")


Handler = Callable[[dict, JobContext], dict]


class JobManager:
    PROGRESS_WRITE_INTERVAL = 0.25  # seconds between progress writes to SQLite; events are not throttled

    PURGE_INTERVAL = 3600.0  # seconds between sweeps of expired jobs

    def __init__(self, store: JobStore, outputs_dir: Path, *, queue_max: int = 32, retention_s: float = 0.0,
                 interactive_burst: int = 8, vram=None):
        self.store = store
        self.outputs_dir = outputs_dir
        self.queue_max = queue_max  # per lane
        self.interactive_burst = interactive_burst
        self.vram = vram  # services.vram.VramOffloader: a paused job's models are pinned
        self.retention_s = retention_s  # 0: keep finished jobs and their files forever
        self._next_purge = 0.0
        self._handlers: dict[str, Handler] = {}
        self._listeners: list[Callable[[Job], None]] = []
        self._queues: dict[str, deque[str]] = {lane: deque() for lane in LANES}
        self._cond = threading.Condition()
        self._done: dict[str, threading.Event] = {}
        self._cancel_requested: set[str] = set()
        self._last_write: dict[str, float] = {}
        self._durations: dict[str, deque[float]] = {lane: deque(maxlen=20) for lane in LANES}
        self._orphans: dict[str, Job] = {}  # recovered queued jobs whose kind is not registered yet
        self._live: dict[str, Job] = {}  # the running job, for progress events without a DB read
        self._thread: threading.Thread | None = None
        self._stopping = False

    # --- set-up -------------------------------------------------------------------------
    def register(self, kind: str, handler: Handler) -> None:
        self._handlers[kind] = handler
        with self._cond:
            # Queued jobs recovered before their family registered (start-up order) resume now.
            waiting = [job for job in self._orphans.values() if job.kind == kind]
            for job in waiting:
                del self._orphans[job.id]
                self._done[job.id] = threading.Event()
                self._queues[job.lane].append(job.id)
            if waiting:
                self._cond.notify_all()

    def add_listener(self, fn: Callable[[Job], None]) -> None:
        self._listeners.append(fn)

    def start(self) -> None:
        if self._thread is not None:
            return
        with self._cond:
            for job in self._recover():
                if job.id in self._done:
                    continue  # submitted before start(): queued already
                if job.kind in self._handlers:
                    self._queues[job.lane].append(job.id)
                    self._done[job.id] = threading.Event()
                else:
                    self._orphans[job.id] = job
        if self.queue_length() or self._orphans:
            log.info("resuming %d queued job(s) after restart", self.queue_length() + len(self._orphans))
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="enfoads-gpu-worker", daemon=True)
        self._thread.start()

    def _recover(self) -> list[Job]:
        return self.store.recover()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # --- client side ------------------------------------------------------------------------
    def submit(self, kind: str, params: dict, owner: str, *, uploads: list[str] | None = None,
               lane: str = INTERACTIVE) -> Job:
        if kind not in self._handlers:
            raise KeyError(f"no handler for job kind {kind!r}")
        if lane not in LANES:
            raise ValueError(f"unknown lane {lane!r}")
        with self._cond:
            if len(self._queues[lane]) >= self.queue_max:
                raise QueueFull(self._retry_after(lane))
            job = Job(id=uuid.uuid4().hex, kind=kind, owner=owner, params=params, message="queued",
                      uploads=list(uploads or []), lane=lane)
            self.store.insert(job)
            self._done[job.id] = threading.Event()
            self._queues[lane].append(job.id)
            self._cond.notify_all()
        self._emit(job)
        return job

    def get(self, job_id: str) -> Job | None:
        return self.store.get(job_id)

    def wait(self, job_id: str, timeout: float) -> Job:
        event = self._done.get(job_id)
        if event is not None:
            event.wait(timeout)
        return self.store.get(job_id)  # type: ignore[return-value]

    def cancel(self, job_id: str) -> Job | None:
        job = self.store.get(job_id)
        if job is None or job.status in FINISHED:
            return job
        with self._cond:
            queue = self._queues[job.lane]
            if job_id in queue:
                queue.remove(job_id)
                queued = True
            else:
                queued = False
                self._cancel_requested.add(job_id)
        if queued:
            self._finish(job_id, CANCELLED, message="cancelled before it started")
        return self.store.get(job_id)

    def queue_length(self, lane: str | None = None) -> int:
        if lane is not None:
            return len(self._queues[lane])
        return sum(len(q) for q in self._queues.values())

    def _retry_after(self, lane: str) -> int:
        """Seconds until the lane has room: its recent mean job time x the jobs ahead (5 s a job until measured)."""
        durations = self._durations[lane]
        per_job = sum(durations) / len(durations) if durations else 5.0
        return max(1, int(per_job * (len(self._queues[lane]) + 1) + 0.999))

    # --- worker -------------------------------------------------------------------------------
    def purge_expired(self) -> list[str]:
        """Delete finished jobs older than the retention, their rows and output folders."""
        if not self.retention_s:
            return []
        ids = self.store.delete_finished_before(time.time() - self.retention_s)
        for job_id in ids:
            shutil.rmtree(self.outputs_dir / job_id, ignore_errors=True)
        if ids:
            log.info("deleted %d job(s) older than %.0f h and their files", len(ids), self.retention_s / 3600)
        return ids

    def _work(self) -> None:
        while True:
            if time.monotonic() >= self._next_purge:  # between jobs: never races a running one
                self._next_purge = time.monotonic() + self.PURGE_INTERVAL
                try:
                    self.purge_expired()
                except Exception:
                    log.exception("purging expired jobs failed")
            with self._cond:
                while not self.queue_length() and not self._stopping:
                    if not self._cond.wait(timeout=max(0.0, self._next_purge - time.monotonic())):
                        break  # time for the next sweep
                if self._stopping:
                    return
                lane = next((lane for lane in LANES if self._queues[lane]), None)
                if lane is None:
                    continue
                job_id = self._queues[lane].popleft()
            self._run_guarded(job_id)

    def _run_guarded(self, job_id: str) -> None:
        try:
            self._run(job_id)
        except Exception:  # the worker must outlive any job
            log.exception("job %s: bookkeeping failed", job_id)
        finally:
            self._live.pop(job_id, None)

    def _yield_to_interactive(self, ctx: JobContext) -> None:
        """At a batch job's checkpoint: run the interactive jobs waiting now, then return to it. Fairness: it
        returns to the batch job, which does one step of work before its next checkpoint."""
        if threading.current_thread() is not self._thread:
            return  # never run jobs on a handler's helper thread
        with self._cond:
            if self._stopping or not self._queues[INTERACTIVE]:
                return
            burst = list(self._queues[INTERACTIVE])[: self.interactive_burst]
        job = self._live.get(ctx.job_id)
        reason = f"paused: {len(burst)} interactive job(s) first"
        self._set_state(ctx.job_id, PAUSED, reason)
        pinned = self._pin_models_of(job)
        log.info("job %s %s", ctx.job_id[:8], reason)
        try:
            for job_id in burst:
                with self._cond:
                    if job_id not in self._queues[INTERACTIVE]:
                        continue  # cancelled meanwhile
                    self._queues[INTERACTIVE].remove(job_id)
                self._run_guarded(job_id)
        finally:
            for name in pinned:
                self.vram.unpin(name)
            self._set_state(ctx.job_id, RUNNING, "resumed")

    def _pin_models_of(self, job: Job | None) -> list[str]:
        """Pin what the paused job used, so its resume finds it resident unless VRAM was needed."""
        if self.vram is None or job is None or job.started_at is None:
            return []
        names = self.vram.resident_used_since(job.started_at)
        for name in names:
            self.vram.pin(name)
        return names

    def _set_state(self, job_id: str, status: str, message: str) -> None:
        self.store.update(job_id, status=status, message=message)
        job = self._live.get(job_id)
        if job is not None:
            job.status, job.message = status, message
            self._emit(job)

    def _run(self, job_id: str) -> None:
        job = self.store.get(job_id)
        if job is None:
            return
        started = time.time()
        self.store.update(job_id, status=RUNNING, started_at=started, message="running")
        job.status, job.started_at, job.message = RUNNING, started, "running"
        self._live[job_id] = job
        self._emit(job)
        log.info("job %s (%s) started", job_id[:8], job.kind)
        ctx = JobContext(self, job)
        try:
            result = self._handlers[job.kind](job.params, ctx)
            if ctx.cancelled:
                raise Cancelled(job_id)
            result = _storable(result or {})
        except Cancelled:
            shutil.rmtree(ctx.output_dir, ignore_errors=True)
            self._finish(job_id, CANCELLED, message="cancelled")
        except ServiceError as exc:
            self._finish(job_id, FAILED, message=exc.message,
                         error={"kind": exc.kind, "message": exc.message, "param": exc.param, "code": exc.code})
        except Exception as exc:
            log.exception("job %s (%s) failed", job_id[:8], job.kind)
            message = _describe(exc)
            self._finish(job_id, FAILED, message=message,
                         error={"kind": getattr(exc, "kind", "internal"), "message": message})
        else:
            self._durations[job.lane].append(time.time() - started)
            self._finish(job_id, SUCCEEDED, message="done", result=result, progress=1.0)

    def _finish(self, job_id: str, status: str, *, message: str = "", result: dict | None = None,
                error: dict | None = None, progress: float | None = None) -> None:
        fields: dict[str, Any] = {"status": status, "message": message or status, "finished_at": time.time()}
        if result is not None:
            fields["result"] = result
        if error is not None:
            fields["error"] = error
        if progress is not None:
            fields["progress"] = progress
        self.store.update(job_id, **fields)
        self._cancel_requested.discard(job_id)
        self._last_write.pop(job_id, None)
        job = self.store.get(job_id)
        log.info("job %s %s%s", job_id[:8], status, f": {message}" if status == FAILED else "")
        if job is not None:
            for path in job.uploads:
                Path(path).unlink(missing_ok=True)
            self._emit(job)
        event = self._done.pop(job_id, None)
        if event is not None:
            event.set()

    def _progress(self, job_id: str, fraction: float, message: str) -> None:
        now = time.monotonic()
        if fraction >= 1.0 or now - self._last_write.get(job_id, 0.0) >= self.PROGRESS_WRITE_INTERVAL:
            self.store.update(job_id, progress=fraction, message=message or "running")
            self._last_write[job_id] = now
        job = self._live.get(job_id)
        if job is not None:
            job.progress, job.message = fraction, message or job.message
            self._emit(job)

    def _emit(self, job: Job) -> None:
        for fn in self._listeners:
            try:
                fn(job)
            except Exception:
                log.exception("job listener failed")


def _storable(result: dict) -> dict:
    """The result as SQLite keeps it (JSON), or an error saying why it cannot be: a job whose end cannot be
    saved would read "running" forever, its caller waiting."""
    try:
        json.dumps(result)
    except (TypeError, ValueError) as exc:
        raise RuntimeError(f"the job's result could not be saved: {exc}") from exc
    return result


def _describe(exc: Exception) -> str:
    text = str(exc).strip()
    return text if text else type(exc).__name__
