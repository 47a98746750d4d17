"""The Redis side of distributed mode: one Dramatiq queue per job family, messages carry a job id.

The job itself (parameters, files, state) stays in the front's SQLite: Redis only holds which job
ids wait for which family, and Dramatiq's broker gives a dead worker's unacknowledged message to a
living one (its workers heartbeat in Redis; see `cluster_heartbeat_timeout_s`).
"""
from __future__ import annotations

import threading
import time
from urllib.parse import urlsplit

import redis
from dramatiq.brokers.redis import MAINTENANCE_SCALE, RedisBroker, _RedisConsumer
from dramatiq.common import compute_backoff
from dramatiq.errors import ConnectionClosed

from services.errors import ServiceError

ACTOR = "enfoads_job"
# Kinds that run on the front's own GPU in both modes: a TTS stream feeds a queue held by the
# request that waits for it (realtime sessions stay on the front).
LOCAL_KINDS = frozenset({"tts.stream"})
CONNECT_TIMEOUT_S = 3.0  # a request that enqueues must not hang on an unreachable Redis
SOCKET_TIMEOUT_S = 10.0
BUSY_POLL_S = 0.05


class QueueUnavailable(ServiceError):
    """Redis cannot be reached: new jobs answer 503 with the reason."""

    kind = "unavailable"

    def __init__(self, url: str, reason: str):
        super().__init__(f"the job queue (Redis at {redacted(url)}) is unreachable: {reason}; "
                         "retry when it is back", code="queue_unavailable")


def family_of(kind: str) -> str:
    return kind.split(".", 1)[0]


def queue_name(family: str) -> str:
    return f"jobs-{family}"


def redacted(url: str) -> str:
    """scheme://host:port of a Redis URL: never its password in a message or a log."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"


class _OneJobConsumer(_RedisConsumer):
    """A worker takes a message only when it is idle, whatever queue it comes from.

    Dramatiq prefetches per queue: a worker of two families running a long job would hold the
    other family's next message while another worker sits idle. Here every queue's consumer of one
    process shares one slot: a message is fetched only when the slot is free, and freed when the
    message is acknowledged. Delay queues (".DQ") keep polling: their polls carry this process's
    heartbeat while it runs a job, so Redis does not take the job for dead.
    """

    def _gated(self) -> bool:
        return not self.queue_name.endswith(".DQ")

    def __next__(self):
        if not self._gated() or self.message_cache:
            return super().__next__()
        slot = self.broker.job_slot
        if self.outstanding_message_count >= self.prefetch or not slot.acquire(blocking=False):
            time.sleep(BUSY_POLL_S)
            return None
        try:
            self.message_cache = self.broker.do_fetch(self.queue_name, 1)
        except redis.ConnectionError as exc:
            slot.release()
            raise ConnectionClosed(exc) from None
        if not self.message_cache:
            slot.release()  # before the back-off sleep: the other queues' consumers poll meanwhile
            self.misses, backoff_ms = compute_backoff(self.misses, max_backoff=self.timeout)
            time.sleep(backoff_ms / 1000)
            return None
        return super().__next__()  # decodes the cached message; the slot is freed by its ack/nack

    def ack(self, message):
        try:
            super().ack(message)
        finally:
            if self._gated():
                self.broker.job_slot.release()

    def nack(self, message):
        try:
            super().nack(message)
        finally:
            if self._gated():
                self.broker.job_slot.release()


class WorkerBroker(RedisBroker):
    """The worker's broker: one job at a time per process (see `_OneJobConsumer`)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.job_slot = threading.BoundedSemaphore(1)

    @property
    def consumer_class(self):
        return _OneJobConsumer


def make_broker(settings, *, worker: bool = False) -> RedisBroker:
    url = settings.redis_url.get_secret_value()
    client = redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=SOCKET_TIMEOUT_S,
                                  health_check_interval=30)
    # No middleware: retries, time limits and results are decided by our own bookkeeping (the
    # worker adds TimeLimit itself); the front only enqueues.
    return (WorkerBroker if worker else RedisBroker)(client=client, namespace=settings.cluster_namespace, middleware=[],
                       heartbeat_timeout=int(settings.cluster_heartbeat_timeout_s * 1000),
                       maintenance_chance=max(1, int(settings.cluster_maintenance_share * MAINTENANCE_SCALE)))
