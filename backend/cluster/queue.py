"""The Redis side of distributed mode: one Dramatiq queue per job family, messages carry a job id.

The job itself (parameters, files, state) stays in the front's SQLite: Redis only holds which job
ids wait for which family, and Dramatiq's broker gives a dead worker's unacknowledged message to a
living one (its workers heartbeat in Redis; see `cluster_heartbeat_timeout_s`).
"""
from __future__ import annotations

from urllib.parse import urlsplit

import redis
from dramatiq.brokers.redis import MAINTENANCE_SCALE, RedisBroker

from services.errors import ServiceError

ACTOR = "enfoads_job"
# Kinds that run on the front's own GPU in both modes: a TTS stream feeds a queue held by the
# request that waits for it (realtime sessions stay on the front).
LOCAL_KINDS = frozenset({"tts.stream"})
CONNECT_TIMEOUT_S = 3.0  # a request that enqueues must not hang on an unreachable Redis
SOCKET_TIMEOUT_S = 10.0


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


def make_broker(settings) -> RedisBroker:
    url = settings.redis_url.get_secret_value()
    client = redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=SOCKET_TIMEOUT_S,
                                  health_check_interval=30)
    # No middleware: retries, time limits and results are decided by our own bookkeeping (the
    # worker adds TimeLimit itself); the front only enqueues.
    return RedisBroker(client=client, namespace=settings.cluster_namespace, middleware=[],
                       heartbeat_timeout=int(settings.cluster_heartbeat_timeout_s * 1000),
                       maintenance_chance=max(1, int(settings.cluster_maintenance_share * MAINTENANCE_SCALE)))
