"""Distributed mode without workers (no redis-server needed): single process stays the default, the
front's keys, a Redis that was never reachable, what the front hands a worker, the notebook's help."""
import stat

import pytest
import requests

from backend import notebook as nb
from backend.cluster.front import INPUT_MARK, ClusterJobManager, mark_inputs
from backend.jobs import JobManager
from tests import cluster_jobs
from tests.cluster_procs import free_port
from tests.conftest import API_KEY

H = {"Authorization": f"Bearer {API_KEY}"}


def closed_redis() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there


def test_single_process_is_the_default_and_has_no_worker_routes(live_server, make_settings):
    server = live_server(make_settings(), setup=cluster_jobs.install)
    b = server.app.extensions["enfoads"]
    assert type(b.jobs) is JobManager and b.worker_key is None
    assert requests.get(f"{server.url}/cluster/hello", headers=H, timeout=10).status_code == 404
    r = requests.post(f"{server.url}/test/cluster-run", json={"kind": "test.sleep", "params": {"seconds": 0}},
                      headers=H, timeout=30)
    assert r.status_code == 200 and r.json()["result"] == {"slept": 0}
    assert not (b.settings.data_dir / "worker_key").exists()


def test_unreachable_redis_answers_503_with_the_reason_and_keeps_nothing(live_server, make_settings):
    server = live_server(make_settings(redis_url=closed_redis()), setup=cluster_jobs.install)
    jobs = server.app.extensions["enfoads"].jobs
    assert isinstance(jobs, ClusterJobManager)
    r = requests.post(f"{server.url}/test/cluster-run", json={"kind": "test.sleep", "params": {"seconds": 0}},
                      headers=H, timeout=30)
    assert r.status_code == 503, r.text
    err = r.json()["error"]
    assert err["code"] == "queue_unavailable" and "unreachable" in err["message"]
    assert "redis://127.0.0.1:" in err["message"]
    assert jobs.store.list(limit=10) == []  # no half-made job left behind
    assert requests.get(f"{server.url}/health", timeout=10).status_code == 200


def test_the_front_generates_a_private_worker_key_distinct_from_the_api_key(live_server, make_settings):
    server = live_server(make_settings(redis_url=closed_redis()))
    b = server.app.extensions["enfoads"]
    path = b.settings.data_dir / "worker_key"
    assert b.worker_key and b.worker_key != b.api_key and path.read_text().strip() == b.worker_key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert requests.get(f"{server.url}/cluster/hello", headers=H, timeout=10).status_code == 401
    assert requests.get(f"{server.url}/cluster/hello", headers={"Authorization": f"Bearer {b.worker_key}"},
                        timeout=10).status_code == 200


def test_a_worker_key_equal_to_the_api_key_is_refused(make_settings):
    from backend.app import create_app

    with pytest.raises(ValueError, match="must differ from the API key"):
        create_app(make_settings(redis_url=closed_redis(), worker_key=API_KEY))


def test_only_files_under_the_data_folders_travel_to_workers(tmp_path):
    uploads, outputs = tmp_path / "uploads", tmp_path / "outputs"
    (outputs / "job1").mkdir(parents=True)
    uploads.mkdir()
    (uploads / "a.png").write_bytes(b"x")
    (outputs / "job1" / "b.wav").write_bytes(b"y")
    found = []
    params = {"image": str(uploads / "a.png"), "more": [str(outputs / "job1" / "b.wav")], "text": "/etc/passwd",
              "missing": str(uploads / "gone.png"), "n": 3}
    marked = mark_inputs(params, [uploads, outputs], found)
    assert marked["image"] == {INPUT_MARK: 0, "name": "a.png"} and marked["more"] == [{INPUT_MARK: 1, "name": "b.wav"}]
    assert marked["text"] == "/etc/passwd" and marked["missing"] == str(uploads / "gone.png") and marked["n"] == 3
    assert found == [str(uploads / "a.png"), str(outputs / "job1" / "b.wav")]


def test_the_notebook_tells_the_front_s_user_the_worker_key(live_server, make_settings):
    server = live_server(make_settings(redis_url=closed_redis(), worker_key="enfw-notebook"))
    text = nb.connection_help(server, "https://abc.ngrok-free.app", "ngrok")
    assert "MODE = worker" in text and "FRONT_URL = https://abc.ngrok-free.app" in text and "enfw-notebook" in text
    single = live_server(make_settings(data_dir=make_settings().data_dir.parent / "single"))
    assert "worker" not in nb.connection_help(single, None, None).lower()


def test_notebook_worker_mode_says_which_setting_is_missing(make_settings):
    with pytest.raises(RuntimeError, match="ENFOADS_REDIS_URL"):
        nb.start_worker(make_settings(worker_families=["face"]))


@pytest.mark.parametrize("families, kinds", [
    (["image"], {"image.generate", "image.pose"}),  # /pose and pose_reference run on image workers
    (["restore"], {"restore.upscale", "restore.faces"}),  # built with the face family, which restores swaps
])
def test_a_worker_family_brings_every_job_kind_of_its_routes(make_settings, families, kinds):
    from backend.app import make_offloader
    from backend.worker import build_handlers
    from services.model_env import ModelEnv

    s = make_settings()
    env = ModelEnv(models_dir=s.models_dir, profile=s.profile, device=s.resolved_device, dtype=s.dtype_name,
                   vram=make_offloader(s), data_dir=s.data_dir)
    assert set(build_handlers(s, families, [], env)) == kinds
