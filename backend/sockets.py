"""Socket.IO namespace /jobs: progress and completion events for the key's owner.

Clients connect with `auth: {token: <key>}`; a wrong token refuses the connection.
Events from the server: `job` {id, kind, status, progress, message, result, error, ...}.
Client may emit `subscribe` {job_id} to get that job's current state at once.
"""
from __future__ import annotations

import logging

from flask import request
from flask_socketio import ConnectionRefusedError, Namespace, join_room

from . import auth
from .jobs import Job

log = logging.getLogger("enfoads.socketio")


def owner_room(owner: str) -> str:
    return f"owner:{owner}"


class AuthedNamespace(Namespace):
    """Every namespace of ours checks the token in its connect handler."""

    def __init__(self, namespace: str, backend):
        super().__init__(namespace)
        self.backend = backend

    def on_connect(self, auth_data=None):
        if not auth.key_matches(auth.socket_token(auth_data), self.backend.api_key):
            log.warning("refused Socket.IO connection to %s: bad token", self.namespace)
            raise ConnectionRefusedError("missing or wrong API key: pass auth={'token': <key>}")
        join_room(owner_room(auth.owner_of(self.backend.api_key)))
        if self.backend.socket_guard is not None:  # this transport may stay open past the auth deadline
            self.backend.socket_guard.authenticated(self.socketio.server.manager.eio_sid_from_sid(request.sid,
                                                                                                 self.namespace))
        self.on_authed_connect()

    def on_authed_connect(self):
        pass


class JobsNamespace(AuthedNamespace):
    def on_subscribe(self, data):
        job_id = (data or {}).get("job_id") if isinstance(data, dict) else None
        job = self.backend.jobs.get(job_id) if job_id else None
        if job is None or job.owner != auth.owner_of(self.backend.api_key):
            self.emit("error", {"message": f"no job with id {job_id}"}, room=request.sid)
            return
        self.emit("job", job.public(), room=request.sid)


def install_sockets(socketio, backend) -> None:
    socketio.on_namespace(JobsNamespace("/jobs", backend))

    def forward(job: Job) -> None:
        socketio.emit("job", job.public(), namespace="/jobs", to=owner_room(job.owner))

    backend.jobs.add_listener(forward)
