"""`python -m backend.worker --redis URL --front PUBLIC_URL --key WORKER_KEY --families image,tts`

A GPU worker of distributed mode (README "Several GPUs"). It takes job ids of its families from
Redis (Dramatiq), asks the front for each job, downloads its input files, runs the same handler the
single-process server runs (models loaded once, through this process's own VRAM offloader, and kept
between jobs: one process, one job at a time, no fork), reports progress (the answers carry
cancel), uploads the outputs and the result. It opens no port: every connection is outgoing.
Each flag is also an ENFOADS_* variable (ENFOADS_REDIS_URL, ENFOADS_FRONT_URL, ENFOADS_WORKER_KEY,
ENFOADS_WORKER_FAMILIES); the other settings (profile, device, data dir, models) as for the server.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import dramatiq
import requests
from dramatiq.middleware import TimeLimit
from dramatiq.middleware.time_limit import TimeLimitExceeded

from services.errors import Cancelled, ModelUnavailable, ServiceError

from .cluster.front import INPUT_MARK
from .cluster.queue import ACTOR, LOCAL_KINDS, family_of, make_broker, queue_name, redacted
from .settings import Settings, load_settings

log = logging.getLogger("enfoads.worker")

# The families a worker can run and the module that builds each one's service and handlers.
# `restore` (/upscale, /restore-faces) is built with the face family, whose swaps restore faces too.
FAMILY_MODULES = {"image": "backend.routes.image", "face": "backend.routes.face",
                  "whisper": "backend.routes.whisper", "tts": "backend.routes.tts",
                  "animate": "backend.routes.animate", "restore": "backend.routes.face"}
REPORT_DEADLINE_S = 600.0  # how long a finished job's upload waits for an unreachable front
PROGRESS_EVERY_S = 0.25  # progress reports at most this often (each answer also says "cancelled?")
HTTP_TIMEOUT_S = 30.0


class FrontRefused(Exception):
    """The front answered 401/403: wrong worker key. Nothing will work: the worker stops."""


class LeaseLost(Exception):
    """The front gave the job to someone else or ended it (409): drop the job, report nothing."""


class FrontClient:
    """The worker's only link to the front: HTTPS calls with the worker key."""

    def __init__(self, url: str, key: str):
        self.url = url.rstrip("/")
        self.session = requests.Session()
        # ngrok's free tier answers requests without this header with an HTML page.
        self.session.headers.update({"Authorization": f"Bearer {key}", "ngrok-skip-browser-warning": "1"})

    def call(self, method: str, path: str, *, lease: str | None = None, retry_until: float | None = None,
             **kwargs) -> requests.Response:
        """One call; with `retry_until`, connection failures and 5xx are retried (the front restarts)."""
        headers = {"X-Lease": lease} if lease else {}
        delay = 0.5
        while True:
            try:
                if "data" in kwargs and hasattr(kwargs["data"], "seek"):
                    kwargs["data"].seek(0)
                resp = self.session.request(method, self.url + path, headers=headers, timeout=HTTP_TIMEOUT_S,
                                            **kwargs)
                if resp.status_code < 500:
                    break
                problem = f"HTTP {resp.status_code}"
            except requests.RequestException as exc:
                problem = type(exc).__name__
            if retry_until is None or time.monotonic() + delay > retry_until:
                raise ConnectionError(f"the front at {self.url} did not answer {method} {path}: {problem}")
            log.warning("front unreachable (%s); retrying in %.0f s", problem, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
        if resp.status_code in (401, 403):
            raise FrontRefused(_message(resp))
        if resp.status_code == 409:
            raise LeaseLost(_message(resp))
        if resp.status_code >= 400:
            raise ConnectionError(f"the front refused {method} {path}: {_message(resp)}")
        return resp


def _message(resp: requests.Response) -> str:
    try:
        return resp.json()["error"]["message"]
    except Exception:
        return f"HTTP {resp.status_code}"


class WorkerContext:
    """The job context a handler gets on a worker: same surface as backend.jobs.JobContext."""

    def __init__(self, runner: "JobRunner", spec: dict, output_dir: Path):
        self._runner = runner
        self.job_id = spec["job_id"]
        self.lane = spec["lane"]
        self.lease = spec["lease"]
        self.params = spec["params"]
        self.output_dir = output_dir
        self.cancel_seen = False
        self.lease_lost = False
        self._last_report = 0.0

    def progress(self, fraction: float, message: str = "") -> None:
        now = time.monotonic()
        if fraction >= 1.0 or now - self._last_report >= PROGRESS_EVERY_S:
            self._last_report = now
            self._runner.report(self, max(0.0, min(1.0, float(fraction))), message)
        self.check_cancelled()

    @property
    def cancelled(self) -> bool:
        return self.cancel_seen or self.lease_lost

    def check_cancelled(self) -> None:
        if self.cancelled:
            raise Cancelled(f"job {self.job_id} was cancelled")


class JobRunner:
    """Runs one delivered job id: start (lease), inputs, handler, outputs, finish."""

    def __init__(self, front: FrontClient, handlers: dict[str, Callable], name: str, scratch: Path):
        self.front = front
        self.handlers = handlers
        self.name = name
        self.scratch = scratch

    def report(self, ctx: WorkerContext, progress: float | None, message: str = "") -> None:
        try:
            answer = self.front.call("POST", f"/cluster/jobs/{ctx.job_id}/report", lease=ctx.lease,
                                     json={"progress": progress, "message": message}).json()
            ctx.cancel_seen = ctx.cancel_seen or bool(answer.get("cancel"))
        except LeaseLost:
            ctx.lease_lost = True
        except ConnectionError as exc:  # a missed report is not fatal: the next one may pass
            log.warning("job %s: progress not reported: %s", ctx.job_id[:8], exc)

    def run(self, job_id: str) -> None:
        try:
            spec = self.front.call("POST", f"/cluster/jobs/{job_id}/start", json={"worker": self.name},
                                   retry_until=time.monotonic() + REPORT_DEADLINE_S).json()
        except LeaseLost as exc:  # finished, cancelled before it started, or spent: drop the message
            log.info("job %s skipped: %s", job_id[:8], exc)
            return
        handler = self.handlers.get(spec["kind"])
        folder = Path(tempfile.mkdtemp(prefix=f"job-{job_id[:8]}-", dir=self.scratch))
        ctx = WorkerContext(self, {**spec, "params": None}, folder / "out")
        beats = threading.Event()
        beat_thread = threading.Thread(target=self._beat, args=(ctx, beats, float(spec["report_every_s"])),
                                       name=f"beat-{job_id[:8]}", daemon=True)
        beat_thread.start()
        log.info("job %s (%s) started, attempt %d", job_id[:8], spec["kind"], spec["attempt"])
        try:
            status, fields = self._execute(handler, spec, ctx, folder)
            if ctx.lease_lost:
                log.warning("job %s: the front gave it to another worker; dropped", job_id[:8])
                return
            if status == "succeeded":
                self._upload(ctx)
            self.front.call("POST", f"/cluster/jobs/{job_id}/finish", lease=ctx.lease,
                            retry_until=time.monotonic() + REPORT_DEADLINE_S, json={"status": status, **fields})
            log.info("job %s %s", job_id[:8], status)
        except LeaseLost as exc:
            log.warning("job %s dropped: %s", job_id[:8], exc)
        finally:
            beats.set()
            beat_thread.join(5)
            shutil.rmtree(folder, ignore_errors=True)

    def _execute(self, handler, spec: dict, ctx: WorkerContext, folder: Path) -> tuple[str, dict]:
        try:
            if handler is None:
                raise ModelUnavailable(f"worker {self.name} cannot run {spec['kind']} jobs")
            ctx.params = self._fetch_inputs(spec, folder)
            result = handler(ctx.params, ctx)
            if ctx.cancelled:
                raise Cancelled(ctx.job_id)
            return "succeeded", {"result": result or {}}
        except Cancelled:
            return "cancelled", {"message": "cancelled"}
        except TimeLimitExceeded:
            message = "the job ran past the worker's time limit (ENFOADS_CLUSTER_JOB_TIME_LIMIT_S)"
            return "failed", {"message": message, "error": {"kind": "unavailable", "message": message,
                                                            "code": "time_limit"}}
        except ServiceError as exc:
            return "failed", {"message": exc.message, "error": {"kind": exc.kind, "message": exc.message,
                                                                "param": exc.param, "code": exc.code}}
        except Exception as exc:
            log.exception("job %s (%s) failed", ctx.job_id[:8], spec["kind"])
            message = str(exc).strip() or type(exc).__name__
            return "failed", {"message": message, "error": {"kind": getattr(exc, "kind", "internal"),
                                                            "message": message}}

    def _fetch_inputs(self, spec: dict, folder: Path):
        inputs = folder / "in"
        inputs.mkdir()

        def local(value):
            if isinstance(value, dict) and INPUT_MARK in value:
                index = int(value[INPUT_MARK])
                path = inputs / f"{index}-{Path(value.get('name') or 'input').name}"
                resp = self.front.call("GET", f"/cluster/jobs/{spec['job_id']}/inputs/{index}", lease=spec["lease"],
                                       stream=True, retry_until=time.monotonic() + 60)
                with open(path, "wb") as out:
                    for chunk in resp.iter_content(1024 * 1024):
                        out.write(chunk)
                return str(path)
            if isinstance(value, dict):
                return {k: local(v) for k, v in value.items()}
            if isinstance(value, list):
                return [local(v) for v in value]
            return value

        return local(spec["params"])

    def _upload(self, ctx: WorkerContext) -> None:
        if not ctx.output_dir.is_dir():
            return
        for path in sorted(p for p in ctx.output_dir.rglob("*") if p.is_file()):
            name = path.relative_to(ctx.output_dir).as_posix()
            with open(path, "rb") as data:
                self.front.call("PUT", f"/cluster/jobs/{ctx.job_id}/files/{name}", lease=ctx.lease, data=data,
                                retry_until=time.monotonic() + REPORT_DEADLINE_S)

    def _beat(self, ctx: WorkerContext, stop: threading.Event, every: float) -> None:
        """Tell the front the job is alive between progress steps (a model load may take minutes)."""
        while not stop.wait(every):
            self.report(ctx, None)


def build_handlers(settings: Settings, families: list[str], modules: list[str], model_env) -> dict:
    handlers: dict[str, Callable] = {}
    for family in families:
        if family in FAMILY_MODULES:
            _service, found = importlib.import_module(FAMILY_MODULES[family]).job_handlers(settings, model_env)
            handlers.update(found)
    for module in modules:
        _service, found = importlib.import_module(module).job_handlers(settings, model_env)
        handlers.update(found)
    # Only this worker's families, and never the kinds that must run on the front.
    return {k: h for k, h in handlers.items() if family_of(k) in families and k not in LOCAL_KINDS}


class Worker:
    """The worker process: its handlers, the front client, and Dramatiq consuming its queues."""

    def __init__(self, settings: Settings):
        from .app import make_offloader
        from services.model_env import ModelEnv

        missing = [name for name, value in (("--redis / ENFOADS_REDIS_URL", settings.redis_url),
                                            ("--front / ENFOADS_FRONT_URL", settings.front_url),
                                            ("--key / ENFOADS_WORKER_KEY", settings.worker_key),
                                            ("--families / ENFOADS_WORKER_FAMILIES", settings.worker_families))
                   if not value]
        if missing:
            raise SystemExit(f"error: the worker needs {', '.join(missing)} (in a notebook: the secrets "
                             "ENFOADS_REDIS_URL and ENFOADS_WORKER_KEY, FRONT_URL and WORKER_FAMILIES)")
        self.settings = settings
        self.name = settings.worker_name or f"{socket.gethostname()}-{os.getpid()}"
        self.front = FrontClient(settings.front_url, settings.worker_key.get_secret_value())
        self.vram = make_offloader(settings)
        env = ModelEnv(models_dir=settings.models_dir, profile=settings.profile, device=settings.resolved_device,
                       dtype=settings.dtype_name, vram=self.vram, data_dir=settings.data_dir)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.handlers = build_handlers(settings, settings.worker_families, settings.worker_job_modules, env)
        unknown = [f for f in settings.worker_families if not any(family_of(k) == f for k in self.handlers)]
        if unknown:
            raise SystemExit(f"error: no job kinds for families {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(FAMILY_MODULES))} (and those of --jobs-module)")
        scratch = settings.data_dir / "worker-jobs"
        shutil.rmtree(scratch, ignore_errors=True)  # what a killed worker left behind
        scratch.mkdir(parents=True)
        self.runner = JobRunner(self.front, self.handlers, self.name, scratch)
        self.broker = make_broker(settings, worker=True)
        self.broker.add_middleware(TimeLimit(time_limit=int(settings.cluster_job_time_limit_s * 1000)))
        self._dramatiq: dramatiq.Worker | None = None

    def check_front(self) -> None:
        """Fail at once on a wrong key or URL, not at the first job."""
        self.front.call("GET", "/cluster/hello", retry_until=time.monotonic() + 60)

    def start(self) -> None:
        dramatiq.Actor(self.runner.run, broker=self.broker, actor_name=ACTOR,
                       queue_name=queue_name(self.settings.worker_families[0]), priority=0,
                       options={"max_retries": 0})
        queues = {queue_name(f) for f in self.settings.worker_families}
        # One job at a time (one GPU) and no message held while it runs, so an idle worker takes the next.
        self._dramatiq = dramatiq.Worker(self.broker, queues=queues, worker_threads=1,
                                        worker_timeout=self.settings.cluster_poll_max_ms)
        self._dramatiq.queue_prefetch = 1
        # What Dramatiq's own CLI would emit: TimeLimit starts its watchdog thread on it.
        self.broker.emit_after("process_boot")
        self._dramatiq.start()
        for q in sorted(queues):
            self.broker.declare_queue(q)
        log.info("worker %s ready: families %s, kinds %s; Redis %s, front %s", self.name,
                 ",".join(self.settings.worker_families), ",".join(sorted(self.handlers)),
                 redacted(self.settings.redis_url.get_secret_value()), self.front.url)

    def stop(self) -> None:
        if self._dramatiq is not None:
            self._dramatiq.stop(timeout=10_000)
        self.vram.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend.worker", description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis", help="redis:// or rediss:// URL (ENFOADS_REDIS_URL)")
    parser.add_argument("--front", help="the front's public URL (ENFOADS_FRONT_URL)")
    parser.add_argument("--key", help="the front's worker key (ENFOADS_WORKER_KEY)")
    parser.add_argument("--families", help="comma-separated: image,face,whisper,tts,animate (ENFOADS_WORKER_FAMILIES)")
    parser.add_argument("--name", help="this worker's name in job messages (ENFOADS_WORKER_NAME)")
    parser.add_argument("--jobs-module", action="append", default=None,
                        help="a module whose job_handlers(settings, model_env) adds job kinds (repeatable)")
    parser.add_argument("--config", help="YAML settings file (else ENFOADS_CONFIG)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in {"redis_url": args.redis, "front_url": args.front, "worker_key": args.key,
                                   "worker_families": args.families, "worker_name": args.name,
                                   "worker_job_modules": args.jobs_module}.items() if v is not None}
    settings = load_settings(args.config, **overrides)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stdout)
    logging.getLogger("dramatiq").setLevel(logging.WARNING)
    try:
        worker = Worker(settings)
        worker.check_front()
    except FrontRefused as exc:
        print(f"error: the front refused this worker: {exc}", file=sys.stderr, flush=True)
        return 2
    except ConnectionError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    worker.start()
    print(f"worker {worker.name} ready", flush=True)
    stop.wait()
    log.info("worker %s stopping (a running job finishes first)", worker.name)
    worker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

