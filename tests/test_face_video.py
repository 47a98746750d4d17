"""Face swap on video through HTTP: frames, rate and audio kept, per-frame progress, cancel, limits."""
import pytest
import requests

from services import media
from tests import face_media as fm
from tests.conftest import API_KEY, job_events

H = {"Authorization": f"Bearer {API_KEY}"}
SOURCE = fm.png(faces=[(16, 16)])


@pytest.fixture(scope="session")
def face_models_dir(smoke_models):
    return smoke_models("face")


@pytest.fixture
def server(live_server, make_settings, face_models_dir):
    return live_server(make_settings(models_dir=face_models_dir, face_det_size=256, face_video_max_seconds=10))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return fm.video(tmp_path_factory.mktemp("video") / "clip.mp4", frames=12, fps=12)


def post_video(server, target: bytes, name="clip.mp4", source=SOURCE, headers=None, **data):
    return requests.post(f"{server.url}/face-swap/video", files={"source": ("s.png", source), "target": (name, target)},
                         data=data, headers={**H, **(headers or {})}, timeout=120)


def get(server, path):
    return requests.get(f"{server.url}{path}", headers=H, timeout=30)


def test_video_swap_keeps_frames_rate_and_audio_with_per_frame_progress(server, clip, tmp_path, wait_for):
    with job_events(server.url) as events:
        r = post_video(server, clip.read_bytes())
        assert r.status_code == 200, r.text
        body = r.json()
        wait_for(lambda: any(e["id"] == body["job_id"] and e["status"] == "succeeded" for e in events))
    assert body["frames"] == 12 and body["frames_with_faces"] == 12 and body["audio"] == "copied"
    assert body["providers"]["inswapper_128"] == ["CPUExecutionProvider"]
    out = tmp_path / "out.mp4"
    out.write_bytes(get(server, body["url"]).content)
    before, after = media.probe(clip), media.probe(out)
    assert after.has_audio and after.audio_rate == before.audio_rate
    assert after.fps == before.fps == 12
    assert (after.width, after.height) == (before.width, before.height)
    assert _count_frames(out) == _count_frames(clip) == 12
    assert after.duration == pytest.approx(before.duration, abs=0.1)
    messages = [e["message"] for e in events if e["id"] == body["job_id"] and e["status"] == "running"]
    assert [f"frame {i}/12" for i in range(1, 13)] == [m for m in messages if m.startswith("frame")]


def _count_frames(path):
    import av

    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def test_video_frames_change_only_around_the_face(server, clip, tmp_path):
    import av

    body = post_video(server, clip.read_bytes()).json()
    out = tmp_path / "out.mp4"
    out.write_bytes(get(server, body["url"]).content)
    with av.open(str(clip)) as a, av.open(str(out)) as b:
        first_in = next(a.decode(video=0)).to_ndarray(format="rgb24").astype(int)
        first_out = next(b.decode(video=0)).to_ndarray(format="rgb24").astype(int)
    diff = abs(first_in - first_out).mean(axis=2)
    # Frame 0 has its face at (16, 16); H.264 blurs edges a little, paste-back touches nothing far away.
    assert diff[36:92, 36:92].mean() > 10
    assert diff[:, 150:].mean() < 3


def test_video_without_audio_and_silent_index_choice(server, tmp_path):
    clip = fm.video(tmp_path / "mute.mp4", frames=4, audio=False)
    r = post_video(server, clip.read_bytes(), target_indices="3")
    assert r.status_code == 422  # no frame has a 4th face: nothing swapped anywhere
    r = post_video(server, clip.read_bytes(), target_indices="0")
    assert r.status_code == 200 and r.json()["audio"] is None and r.json()["frames"] == 4


def test_audio_that_mp4_cannot_carry_is_reencoded_to_aac(server, tmp_path):
    clip = fm.video(tmp_path / "clip.mkv", frames=6, audio_codec="pcm_s16le")
    r = post_video(server, clip.read_bytes(), name="clip.mkv")
    assert r.status_code == 200, r.text
    assert r.json()["audio"] == "aac" and r.json()["frames"] == 6
    out = tmp_path / "out.mp4"
    out.write_bytes(get(server, r.json()["url"]).content)
    info = media.probe(out)
    assert info.has_audio and info.audio_rate == 16000 and _count_frames(out) == 6
    assert info.duration == pytest.approx(media.probe(clip).duration, abs=0.15)


def test_cancel_a_running_video_job(server, tmp_path, wait_for):
    clip = fm.video(tmp_path / "long.mp4", frames=150, fps=30)
    r = post_video(server, clip.read_bytes(), headers={"Prefer": "respond-async"})
    assert r.status_code == 202
    job_id = r.json()["job_id"]
    wait_for(lambda: get(server, f"/jobs/{job_id}").json()["progress"] > 0, timeout=60)
    assert requests.delete(f"{server.url}/jobs/{job_id}", headers=H, timeout=10).status_code in (200, 202)
    job = wait_for(lambda: (j := get(server, f"/jobs/{job_id}").json())["status"] in ("cancelled", "succeeded") and j,
                   timeout=60)
    assert job["status"] == "cancelled" and job["progress"] < 1
    assert not (server.settings.outputs_dir / job_id).exists()


def test_audio_only_file_is_400(server, tmp_path):
    r = post_video(server, fm.wav(tmp_path / "a.wav").read_bytes(), name="a.wav")
    assert r.status_code == 400 and r.json()["error"]["param"] == "target"
    assert "no video stream" in r.json()["error"]["message"]


def test_not_media_is_415(server):
    r = post_video(server, b"\x00garbage" * 100, name="x.mp4")
    assert r.status_code == 415 and r.json()["error"]["param"] == "target"


def test_over_the_duration_limit_is_413(live_server, make_settings, face_models_dir, clip):
    server = live_server(make_settings(models_dir=face_models_dir, face_det_size=256, face_video_max_seconds=0.5))
    r = post_video(server, clip.read_bytes())
    assert r.status_code == 413 and "limit is 0.5 s" in r.json()["error"]["message"]


def test_over_the_resolution_limit_is_413(live_server, make_settings, face_models_dir, clip):
    server = live_server(make_settings(models_dir=face_models_dir, face_video_max_pixels=100 * 100))
    r = post_video(server, clip.read_bytes())
    assert r.status_code == 413 and "256x160" in r.json()["error"]["message"]


def test_no_face_in_source_is_422_before_any_frame(server, clip):
    r = post_video(server, clip.read_bytes(), source=fm.png())
    assert r.status_code == 422 and r.json()["error"]["message"] == "no face found in source image"


def test_a_raw_stream_without_duration_is_400_before_any_frame(server, tmp_path):
    # a bare H.264 stream: no container duration, frames without times (nothing would bound the job)
    from tests.whisper_media import ffmpeg

    raw = tmp_path / "t.h264"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x64:rate=25", "-t", "20", "-c:v", "libx264", "-f", "h264", str(raw))
    r = post_video(server, raw.read_bytes(), name="t.h264")
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "unknown_duration" and err["param"] == "target" and "container" in err["message"]
    assert get(server, "/jobs").json()["data"] == []  # refused before queueing


def test_a_container_that_understates_its_length_stops_at_the_frame_cap(live_server, make_settings,
                                                                        face_models_dir, tmp_path, monkeypatch):
    """The checked duration is what the container says; the frames are counted too (max seconds x
    fps), so a file whose header lies about its length cannot run past the limit."""
    from dataclasses import replace

    real_probe = media.probe
    monkeypatch.setattr(media, "probe", lambda path: replace(real_probe(path), duration=0.5))
    server = live_server(make_settings(models_dir=face_models_dir, face_det_size=256, face_video_max_seconds=1,
                                       job_wait_seconds=120))
    long_clip = fm.video(tmp_path / "long.mp4", frames=36, fps=12)  # 3 s: frame times stay under 1 s + 1 s of slack
    r = post_video(server, long_clip.read_bytes())
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "video_too_long" and "1 s limit" in r.json()["error"]["message"]
    job = get(server, "/jobs").json()["data"][0]
    assert job["status"] == "failed" and 0 < job["progress"] < 0.5  # stopped after ~13 of 36 frames
    assert not list((server.settings.outputs_dir / job["id"]).glob("*.mp4"))
