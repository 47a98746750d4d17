"""Portrait animation through real HTTP on the tiny LivePortrait and the smoke face pack (a face
is a white square, see tests/face_media.py): frame count, rate and audio kept, per-frame progress,
frames without a face counted, expression edits confined to the face crop, every bad input."""
import pytest
import requests

from services import media
from tests import face_media as fm
from tests.conftest import API_KEY, job_events

H = {"Authorization": f"Bearer {API_KEY}"}
SOURCE = fm.png(faces=[(112, 80)])
TWO_FACES = fm.png(faces=[(16, 16), (144, 144)])


@pytest.fixture(scope="session")
def animate_models(smoke_models):
    return smoke_models("face", "animate")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny networks are many small ops: on a shared 2-core runner torch's intra-op threads
    spin against each other (7x slower per frame than one thread)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def server(live_server, make_settings, animate_models):
    return live_server(make_settings(models_dir=animate_models, face_det_size=256, animate_max_seconds=10,
                                     job_wait_seconds=120))


def driving_video(path, frames=10, fps=10, missing=(3, 4), audio=True):
    """A face (white square) that moves and "opens its mouth" (a dark bar of changing height: the
    crop follows the face, so only what is inside the square makes the motion differ), missing in
    the `missing` frames; a tone as audio."""
    import av
    from fractions import Fraction

    import numpy as np

    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = 256, 160, "yuv420p"
        a = out.add_stream("aac", rate=16000, layout="mono") if audio else None
        for i in range(frames):
            x = 16 + 32 * (i % 3)
            img = fm.canvas(256, 160, [] if i in missing else [(x, 16)])
            if i not in missing:
                img[16 + 60:16 + 64 + 3 * (i % 4), x + 28:x + 68] = 30
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for p in v.encode(frame):
                out.mux(p)
        for p in v.encode(None):
            out.mux(p)
        if a is not None:
            t = np.arange(int(16000 * frames / fps)) / 16000
            pcm = (np.sin(2 * np.pi * 440 * t) * 0.3 * 32767).astype("<i2").reshape(1, -1)
            af = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            af.sample_rate = 16000
            for p in a.encode(af):
                out.mux(p)
            for p in a.encode(None):
                out.mux(p)
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return driving_video(tmp_path_factory.mktemp("video") / "drive.mp4")


def post_animate(server, driving: bytes, name="drive.mp4", source=SOURCE, headers=None, **data):
    return requests.post(f"{server.url}/animate", files={"source": ("s.png", source), "driving": (name, driving)},
                         data=data, headers={**H, **(headers or {})}, timeout=120)


def post_expression(server, source=SOURCE, **data):
    return requests.post(f"{server.url}/animate/expression", files={"source": ("s.png", source)}, data=data,
                         headers=H, timeout=60)


def get(server, path):
    return requests.get(f"{server.url}{path}", headers=H, timeout=30)


def _frames(path):
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_animate_keeps_frames_rate_and_audio_and_counts_faceless_frames(server, clip, tmp_path, wait_for):
    with job_events(server.url) as events:
        r = post_animate(server, clip.read_bytes())
        assert r.status_code == 200, r.text
        body = r.json()
        wait_for(lambda: any(e["id"] == body["job_id"] and e["status"] == "succeeded" for e in events))
    assert r.headers["X-Job-Lane"] == "batch"
    assert body["frames"] == 10 and body["frames_without_face"] == 2 and body["audio"] == "copied"
    out = tmp_path / "out.mp4"
    out.write_bytes(get(server, body["url"]).content)
    before, after = media.probe(clip), media.probe(out)
    assert after.fps == before.fps == 10 and after.has_audio and after.audio_rate == before.audio_rate
    assert (after.width, after.height) == (256, 256)  # pasted back into the source picture
    assert after.duration == pytest.approx(before.duration, abs=0.1)
    frames = _frames(out)
    assert len(frames) == 10
    x1, y1, x2, y2 = body["face_box"]
    assert x1 > 20 and y2 < 236, body["face_box"]
    source = fm.decode(SOURCE).astype(int)
    first = frames[0].astype(int)
    for frame in frames[1:]:  # outside the crop the picture stays still; inside, the face moves
        diff = abs(frame.astype(int) - first).mean(axis=2)
        assert diff[:, :x1 - 4].mean() < 2 and diff[y2 + 4:, :].mean() < 2
    inside = (slice(y1 + 30, y2 - 30), slice(x1 + 30, x2 - 30))
    assert max(abs(f.astype(int) - first)[inside].mean() for f in frames[1:]) > 2
    assert abs(first - source)[inside].mean() > 20  # rendered, not the source's pixels
    messages = [e["message"] for e in events if e["id"] == body["job_id"] and e["status"] == "running"]
    assert [f"frame {i}/10" for i in range(1, 11)] == [m for m in messages if m.startswith("frame")]


def test_animate_without_paste_back_returns_the_crop_and_absolute_motion_runs(server, clip, tmp_path):
    r = post_animate(server, clip.read_bytes(), paste_back="false", relative_motion="false", stitching="false")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["width"] == body["height"] == 64 and body["face_box"] is None  # the tiny model renders 64x64
    out = tmp_path / "crop.mp4"
    out.write_bytes(get(server, body["url"]).content)
    assert len(_frames(out)) == 10


def test_expression_changes_only_the_face_crop(server):
    r = post_expression(server, eye_open=0.0, lip_open=1.0, yaw=20, pitch=-10, roll=5)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "image/png"
    x1, y1, x2, y2 = map(int, r.headers["X-Face-Box"].split(","))
    before, after = fm.decode(SOURCE).astype(int), fm.decode(r.content).astype(int)
    assert after.shape == before.shape
    changed = abs(after - before).sum(axis=2) > 0
    assert changed.any()
    ys, xs = changed.nonzero()
    assert x1 <= xs.min() and xs.max() < x2 and y1 <= ys.min() and ys.max() < y2
    assert (x2 - x1) < 256 or (y2 - y1) < 256  # the crop is a part of the picture


def test_expression_parameters_change_the_result(server):
    a = fm.decode(post_expression(server, eye_open=0.0).content).astype(int)
    b = fm.decode(post_expression(server, eye_open=1.0).content).astype(int)
    c = fm.decode(post_expression(server, yaw=25).content).astype(int)
    assert abs(a - b).sum() > 0 and abs(a - c).sum() > 0


def test_expression_url_and_face_index(server):
    r = post_expression(server, TWO_FACES, face_index=1, response_format="url")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["faces_found"] == 2 and body["face_index"] == 1
    first = post_expression(server, TWO_FACES, face_index=0, response_format="url").json()
    assert first["face_box"][0] < body["face_box"][0]  # left to right
    assert get(server, body["url"]).status_code == 200
    r = post_expression(server, TWO_FACES, face_index=5)
    assert r.status_code == 400 and "2 faces" in r.json()["error"]["message"]
    assert r.json()["error"]["param"] == "face_index"


@pytest.mark.parametrize("data", [{"eye_open": 1.5}, {"yaw": 90}, {"lip_open": -0.1}, {"crop_scale": 9},
                                  {"colour": "red"}])
def test_expression_out_of_range_parameters_are_400(server, data):
    r = post_expression(server, **data)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == next(iter(data))


def test_no_face_in_the_source_is_422(server, clip):
    r = post_expression(server, fm.png())
    assert r.status_code == 422 and r.json()["error"]["message"] == "no face found in source image"
    r = post_animate(server, clip.read_bytes(), source=fm.png())
    assert r.status_code == 422 and r.json()["error"]["param"] == "source"


def test_a_driving_video_without_any_face_is_422(server, tmp_path):
    clip = fm.video(tmp_path / "empty.mp4", frames=3, faces_in=lambda i: [], audio=False)
    r = post_animate(server, clip.read_bytes())
    assert r.status_code == 422 and "any frame of the driving video" in r.json()["error"]["message"]


def test_driving_video_limits(live_server, make_settings, animate_models, clip, tmp_path):
    server = live_server(make_settings(models_dir=animate_models, face_det_size=256, animate_max_seconds=0.5,
                                       animate_video_max_pixels=200 * 200))
    r = post_animate(server, clip.read_bytes())
    assert r.status_code == 413 and r.json()["error"]["code"] == "video_too_long"
    assert r.json()["error"]["param"] == "driving"
    short = fm.video(tmp_path / "short.mp4", frames=3, fps=10)
    r = post_animate(server, short.read_bytes())
    assert r.status_code == 413 and r.json()["error"]["code"] == "video_too_large"
    assert get(server, "/jobs").json()["data"] == []  # refused before queueing


def test_unknown_duration_is_400_and_not_media_is_415(server, tmp_path):
    from tests.whisper_media import ffmpeg

    raw = tmp_path / "t.h264"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x64:rate=25", "-t", "2", "-c:v", "libx264", "-f", "h264", str(raw))
    r = post_animate(server, raw.read_bytes(), name="t.h264")
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_duration"
    r = post_animate(server, b"\x00garbage" * 100, name="x.mp4")
    assert r.status_code == 415 and r.json()["error"]["param"] == "driving"
    r = post_animate(server, fm.wav(tmp_path / "a.wav").read_bytes(), name="a.wav")
    assert r.status_code == 400 and "no video stream" in r.json()["error"]["message"]


def test_cancel_a_running_animation(server, tmp_path, wait_for):
    clip = fm.video(tmp_path / "long.mp4", frames=90, fps=30)
    r = post_animate(server, clip.read_bytes(), headers={"Prefer": "respond-async"})
    assert r.status_code == 202
    job_id = r.json()["job_id"]
    wait_for(lambda: get(server, f"/jobs/{job_id}").json()["progress"] > 0, timeout=60)
    assert requests.delete(f"{server.url}/jobs/{job_id}", headers=H, timeout=10).status_code in (200, 202)
    job = wait_for(lambda: (j := get(server, f"/jobs/{job_id}").json())["status"] in ("cancelled", "succeeded") and j,
                   timeout=60)
    assert job["status"] == "cancelled" and job["progress"] < 1
    assert not (server.settings.outputs_dir / job_id).exists()


def test_openapi_documents_the_animate_bodies(server):
    doc = get(server, "/openapi.json").json()
    schemas = doc["components"]["schemas"]
    assert "ExpressionOptions" in str(doc["paths"]["/animate/expression"]["post"])
    props = schemas["ExpressionOptionsJson"]["properties"]
    for name in ("eye_open", "lip_open", "pitch", "yaw", "roll", "face_index", "crop_scale"):
        assert name in props
    assert props["yaw"]["maximum"] == 30 and "maximum" in str(props["eye_open"])
    assert "AnimateOptions" in str(doc["paths"]["/animate"]["post"])
    assert {"relative_motion", "stitching", "paste_back"} <= set(schemas["AnimateOptionsForm"]["properties"])
