"""Distributed mode: one public front, several pull-only GPU workers, a Redis queue between them.

Set `ENFOADS_REDIS_URL` on the front and it keeps everything it does today (auth, routes, uploads,
the SQLite job records, Socket.IO) but sends each job's id to Redis through Dramatiq instead of
running it; `python -m backend.worker` processes take the ids of their families, ask the front for
the job (worker key), fetch its input files, report progress (the answer carries cancel), upload
the outputs and the result. Workers only make outgoing connections.

- `queue.py`: the Dramatiq broker, queue names, which kinds stay on the front.
- `front.py`: `ClusterJobManager`, the front's `JobManager` (same interface for the routes) and the
  attempt/lease bookkeeping that makes a job run at most once to completion.
- `backend/routes/cluster.py`: the endpoints workers call; `backend/worker.py`: the worker.
"""
