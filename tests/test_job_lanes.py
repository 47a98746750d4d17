"""Two lanes over HTTP: short requests do not wait behind long jobs, a client may demote a request to the
batch lane, and a face video pauses for a face detection and resumes unchanged. The lanes' scheduling
itself (yield at checkpoints, bursts, pinning, limits) is tested without a server in test_jobs_units.py."""
import numpy as np
import pytest
import requests

from backend.jobs import BATCH, INTERACTIVE, PAUSED, SUCCEEDED
from tests import face_media as fm
from tests import fake_jobs
from tests.conftest import API_KEY

H = {"Authorization": f"Bearer {API_KEY}"}


# --------------------------------------------------------------------------- HTTP

@pytest.fixture
def server(live_server):
    fake_jobs.reset_gates()
    yield live_server(setup=fake_jobs.install)
    fake_jobs.GATES["gated"].set()


def test_a_client_may_demote_a_request_to_batch_but_not_ask_for_a_bad_lane(server):
    r = requests.post(f"{server.url}/test/run?lane=batch", json={"kind": "echo", "value": 3}, headers=H, timeout=20)
    assert r.status_code == 200 and r.headers["X-Job-Lane"] == BATCH
    job = requests.get(f"{server.url}/jobs/{r.json()['job_id']}", headers=H, timeout=20).json()
    assert job["lane"] == BATCH
    r = requests.post(f"{server.url}/test/run", json={"kind": "echo"}, headers=H, timeout=20)
    assert r.headers["X-Job-Lane"] == INTERACTIVE
    r = requests.post(f"{server.url}/test/run?lane=urgent", json={"kind": "echo"}, headers=H, timeout=20)
    assert r.status_code == 400 and r.json()["error"]["param"] == "lane"


def test_a_full_batch_lane_still_serves_interactive_requests(live_server, make_settings, wait_for):
    fake_jobs.reset_gates()
    server = live_server(make_settings(queue_max=1), setup=fake_jobs.install)
    try:
        url, async_h = f"{server.url}/test/run", {**H, "Prefer": "respond-async"}
        assert requests.post(url + "?lane=batch", json={"kind": "gated"}, headers=async_h, timeout=20).status_code == 202
        assert fake_jobs.GATES["entered"].wait(10)
        assert requests.post(url + "?lane=batch", json={"kind": "echo"}, headers=async_h, timeout=20).status_code == 202
        full = requests.post(url + "?lane=batch", json={"kind": "echo"}, headers=async_h, timeout=20)
        assert full.status_code == 429 and full.headers["Retry-After"] == "10"
        assert requests.post(url, json={"kind": "echo"}, headers=async_h, timeout=20).status_code == 202
    finally:
        fake_jobs.GATES["gated"].set()


# --------------------------------------------------------------------------- real models

@pytest.fixture(scope="module")
def face_dir(smoke_models):
    return smoke_models("face")


def _frames(path):
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_face_detect_runs_while_a_face_video_pauses_and_the_video_is_unchanged(
        live_server, make_settings, face_dir, tmp_path, wait_for):
    server = live_server(make_settings(models_dir=face_dir, face_det_size=256, job_wait_seconds=120))
    jobs = server.app.extensions["enfoads"].jobs
    events = []
    jobs.add_listener(lambda job: events.append((job.id, job.status)))
    target = fm.video(tmp_path / "t.mp4", frames=40, fps=10).read_bytes()
    source = fm.png(faces=[(16, 80)])

    def swap_video(**headers):
        return requests.post(f"{server.url}/face-swap/video", headers={**H, **headers}, timeout=120,
                             files={"source": ("s.png", source), "target": ("t.mp4", target)})

    alone = swap_video()
    assert alone.status_code == 200 and alone.headers["X-Job-Lane"] == BATCH
    reference = _frames(server.app.extensions["enfoads"].settings.outputs_dir / alone.json()["job_id"]
                        / alone.json()["file"])

    video = swap_video(Prefer="respond-async").json()
    wait_for(lambda: jobs.get(video["job_id"]).progress > 0, timeout=60, interval=0.005)
    detect = requests.post(f"{server.url}/faces/detect", headers=H, timeout=60,
                           files={"image": ("a.png", fm.png(faces=[(16, 80)]))})
    assert detect.status_code == 200 and detect.json()["count"] == 1
    assert detect.headers["X-Job-Lane"] == INTERACTIVE
    done = jobs.wait(video["job_id"], 120)
    assert done.status == SUCCEEDED
    assert (video["job_id"], PAUSED) in events  # it yielded to the detect request
    order = [jid for jid, status in events if status == SUCCEEDED]
    assert order.index(detect.json()["job_id"]) < order.index(video["job_id"])
    resumed = _frames(server.app.extensions["enfoads"].settings.outputs_dir / video["job_id"] / done.result["file"])
    assert len(resumed) == len(reference) == 40
    assert all(np.array_equal(a, b) for a, b in zip(resumed, reference))
