"""Processes of a real cluster for tests and benchmarks: Debian's redis-server on a free loopback
port (no persistence), and `python -m backend.worker` processes. Every wait has a deadline."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class RedisProcess:
    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisProcess":
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed: apt-get install redis-server "
                               "(scripts/install.sh --dev does it)")
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--maxmemory-policy", "noeviction"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)

        def up():
            try:
                return client.ping()
            except redis.ConnectionError:
                return False

        wait_until(up, 10, "redis-server to answer")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


class WorkerProcess:
    """`python -m backend.worker` with its output in a log file (read for 'ready' and by failing tests)."""

    def __init__(self, name: str, *, redis_url: str, front_url: str, key: str, families: str, data_dir: Path,
                 env: dict | None = None, jobs_module: str | None = "tests.cluster_jobs"):
        self.name = name
        self.log = data_dir.parent / f"{name}.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "backend.worker", "--redis", redis_url, "--front", front_url, "--key", key,
                "--families", families, "--name", name]
        if jobs_module:
            args += ["--jobs-module", jobs_module]
        full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "ENFOADS_PROFILE": "smoke", "ENFOADS_DEVICE": "cpu",
                    "ENFOADS_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO), **(env or {})}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(args, cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_ready(self, timeout: float = 90) -> "WorkerProcess":
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.name} exited ({self.proc.returncode}):\n{self.output()[-3000:]}")
            return f"worker {self.name} ready" in self.output()

        wait_until(ready, timeout, f"worker {self.name} to start", interval=0.1)
        return self

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
