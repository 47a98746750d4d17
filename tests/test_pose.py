"""Pose control through the HTTP API: POST /pose (DWPose on ONNX Runtime) and pose_image /
pose_reference / control_scale on /generate-image and /v1/images/generations (the OpenPose ControlNet),
on the tiny models the image smoke builder writes (services/pose/smoke.py: the tiny detector sees one
person in a white upright rectangle at a known place, nobody elsewhere)."""
from __future__ import annotations

import base64
import io
import threading

import numpy as np
import pytest
import requests
from PIL import Image

from services.pose.dwpose import NUM_KEYPOINTS
from services.pose.smoke import person_rect
from tests.conftest import API_KEY, job_events

H = {"Authorization": f"Bearer {API_KEY}"}
SIDE = 320


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def person_photo(side: int = SIDE) -> bytes:
    img = np.zeros((side, side, 3), np.uint8)
    x1, y1, x2, y2 = person_rect(side)
    img[y1:y2, x1:x2] = 255
    return png(img)


EMPTY_PHOTO = png(np.full((SIDE, SIDE, 3), 40, np.uint8))


def decode(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    img.load()
    assert img.format == "PNG"
    return np.asarray(img.convert("RGB"))


@pytest.fixture
def models(smoke_models):
    return smoke_models("image")


@pytest.fixture
def server(live_server, make_settings, models):
    return live_server(make_settings(models_dir=models, job_wait_seconds=120))


def post(server, path, headers=H, **kw):
    return requests.post(f"{server.url}{path}", headers=headers, timeout=180, **kw)


def generate(server, body, path="/generate-image"):
    return post(server, path, json={"prompt": "una bailarina en un escenario", "width": 64, "height": 64,
                                    "seed": 5, **body})


# --------------------------------------------------------------------------- POST /pose

def test_pose_finds_the_person_with_133_keypoints_inside_its_box_and_draws_the_skeleton(server):
    r = post(server, "/pose", files={"image": ("foto.png", person_photo(), "image/png")})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["status"] == "success" and (data["width"], data["height"]) == (SIDE, SIDE)
    assert data["count"] == 1 and data["keypoint_format"] == "coco_wholebody_133"
    person = data["people"][0]
    x1, y1, x2, y2 = person_rect(SIDE)
    bx1, by1, bx2, by2 = person["box"]
    assert abs(bx1 - x1) < 20 and abs(by1 - y1) < 20 and abs(bx2 - x2) < 20 and abs(by2 - y2) < 20
    kps = np.array(person["keypoints"])
    assert kps.shape == (NUM_KEYPOINTS, 3)
    # the crop is the box grown by 1.25 at the model's 3:4 aspect: every keypoint maps back inside it
    cx, cy, w, h = (bx1 + bx2) / 2, (by1 + by2) / 2, (bx2 - bx1) * 1.25, (by2 - by1) * 1.25
    w, h = max(w, h * 0.75), max(h, w / 0.75)
    assert (abs(kps[:, 0] - cx) <= w / 2).all() and (abs(kps[:, 1] - cy) <= h / 2).all()
    assert (kps[:, 2] > 0.3).all()
    assert kps[0, 1] < kps[15, 1]  # the nose above the ankles: the crop was not flipped
    skeleton = decode(base64.b64decode(data["skeleton"]["b64_json"]))
    assert skeleton.shape == (SIDE, SIDE, 3)
    lit = np.argwhere(skeleton.any(axis=2))
    assert len(lit) > 200  # limbs, not a few dots
    assert lit[:, 1].min() >= cx - w / 2 - 5 and lit[:, 1].max() <= cx + w / 2 + 5
    assert (skeleton[..., 0] > 200).any() and (skeleton[..., 2] > 200).any()  # OpenPose's colours
    # the skeleton is one of the job's outputs: downloadable, and usable as pose_image_asset
    assert data["skeleton"]["asset"] == f"{data['job_id']}/skeleton.png"
    got = requests.get(f"{server.url}{data['skeleton']['url']}", headers=H, timeout=10)
    assert got.status_code == 200 and (decode(got.content) == skeleton).all()


def test_pose_of_an_empty_photo_is_nobody_and_a_black_skeleton(server):
    r = post(server, "/pose", json={"image": b64(EMPTY_PHOTO), "response_format": "url"})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["count"] == 0 and data["people"] == [] and "b64_json" not in data["skeleton"]
    got = requests.get(f"{server.url}{data['skeleton']['url']}", headers=H, timeout=10)
    assert not decode(got.content).any()


def test_pose_response_format_image_is_the_png(server):
    r = post(server, "/pose", json={"image": "data:image/png;base64," + b64(person_photo()),
                                    "response_format": "image"})
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/png"
    assert r.headers["X-People-Found"] == "1" and decode(r.content).shape == (SIDE, SIDE, 3)


def test_pose_refuses_what_is_not_a_usable_image(live_server, make_settings, models, server):
    r = post(server, "/pose", files={"image": ("notes.txt", b"just some text", "text/plain")})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_image"
    r = post(server, "/pose", json={})
    assert r.status_code == 400 and r.json()["error"]["param"] == "image"
    r = post(server, "/pose", json={"image": b64(person_photo()), "response_format": "svg"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"
    small = live_server(make_settings(models_dir=models, job_wait_seconds=120, image_pose_max_pixels=100 * 100))
    r = post(small, "/pose", json={"image": b64(person_photo())})
    assert r.status_code == 413 and "320x320" in r.json()["error"]["message"]


# --------------------------------------------------------------------------- pose on the image routes

def test_the_controlnet_conditions_the_image_and_the_pose_is_part_of_the_cache_key(server):
    skeleton = post(server, "/pose", json={"image": b64(person_photo())}).json()["skeleton"]
    plain = generate(server, {})
    posed = generate(server, {"pose_image": skeleton["b64_json"]})
    assert plain.status_code == 200 and posed.status_code == 200, posed.text
    a, b = (np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"), int) for r in (plain, posed))
    assert a.shape == b.shape == (64, 64, 3)
    assert np.abs(a - b).mean() > 1.0  # same seed and prompt: only the ControlNet differs
    assert posed.headers["X-Cache"] == "miss" and "X-Pose-Url" in posed.headers
    # the same skeleton given as the /pose job's output: same pixels, so the cache answers
    again = generate(server, {"pose_image_asset": skeleton["asset"]})
    assert again.headers["X-Cache"] == "hit" and again.content == posed.content
    # another scale is another image
    weaker = generate(server, {"pose_image_asset": skeleton["asset"], "control_scale": 0.2})
    assert weaker.headers["X-Cache"] == "miss" and weaker.content != posed.content
    # scale 0: the ControlNet adds nothing, the image is the plain one
    off = generate(server, {"pose_image_asset": skeleton["asset"], "control_scale": 0})
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(off.content)).convert("RGB"), int), a)


def test_pose_reference_is_read_by_dwpose_then_followed(server):
    r = generate(server, {"pose_reference": b64(person_photo()), "response_format": "b64_json", "n": 2})
    assert r.status_code == 200, r.text
    data = r.json()
    assert len(data["data"]) == 2 and [d["seed"] for d in data["data"]] == [5, 6]
    pose = data["pose"]
    assert pose["source"] == "pose_reference" and pose["people"] == 1 and pose["control_scale"] == 0.8
    assert pose["controlnet"] == "controlnet-openpose-sdxl"
    drawn = decode(requests.get(pose["url"], headers=H, timeout=10).content)
    assert drawn.shape == (SIDE, SIDE, 3) and drawn.any()
    # the skeleton DWPose drew, sent as pose_image, gives the same images (from the cache)
    same = generate(server, {"pose_image": b64(png(drawn)), "response_format": "b64_json", "n": 2}).json()
    assert [d["b64_json"] for d in same["data"]] == [d["b64_json"] for d in data["data"]]
    assert all(d["cached"] for d in same["data"])


def test_pose_reference_without_a_person_is_422(server):
    r = generate(server, {"pose_reference": b64(EMPTY_PHOTO)})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "no_person" and err["param"] == "pose_reference" and "no person" in err["message"]


def test_the_openai_route_takes_a_pose(server):
    body = {"prompt": "una bailarina", "size": "64x64", "seed": 5, "response_format": "b64_json"}
    r = post(server, "/v1/images/generations", json={**body, "pose_reference": b64(person_photo())})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["size"] == "64x64" and data["pose"]["people"] == 1 and data["pose"]["source"] == "pose_reference"
    assert data["warnings"] == []
    plain = post(server, "/v1/images/generations", json=body).json()
    assert "pose" not in plain and plain["data"][0]["b64_json"] != data["data"][0]["b64_json"]


def _vram_models(server) -> dict:
    snap = server.app.extensions["enfoads.image"].env.vram.snapshot()
    return {m["name"]: m for m in snap["models"]}


def test_a_posed_job_reports_progress_from_the_pose_reading_on(server, wait_for):
    with job_events(server.url, transports=["polling"]) as events:
        r = generate(server, {"pose_reference": b64(person_photo()), "seed": 77, "response_format": "url"})
        job_id = r.json()["job_id"]
        wait_for(lambda: any(e["id"] == job_id and e["status"] == "succeeded" for e in events), timeout=60)
    running = [e for e in events if e["id"] == job_id and e["status"] == "running" and e["message"] != "running"]
    messages = [e["message"] for e in running]
    assert messages[0] == "reading the pose from pose_reference"
    assert messages[1:5] == [f"image 1/1: step {i}/4" for i in range(1, 5)] and messages[-1] == "image 1/1 done"
    progress = [e["progress"] for e in running]
    assert progress == sorted(progress) and progress[-1] == 1.0
    # the ControlNet was loaded beside SDXL, and neither stays pinned after the job
    models = _vram_models(server)
    assert models["controlnet-openpose-sdxl"]["loads"] == 1 and models["sdxl-lightning"]["loads"] == 1
    assert models["controlnet-openpose-sdxl"]["pinned"] == 0 and models["sdxl-lightning"]["pinned"] == 0


def test_cancel_inside_the_controlnet_stops_between_steps(live_server, make_settings, models, monkeypatch, wait_for):
    from diffusers import ControlNetModel

    entered, release = threading.Event(), threading.Event()
    forward = ControlNetModel.forward
    calls = []

    def gated(self, *args, **kwargs):  # holds the second ControlNet step until the test has cancelled
        calls.append(1)
        if len(calls) == 2:
            entered.set()
            release.wait(20)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(ControlNetModel, "forward", gated)
    settings = make_settings(models_dir=models, job_wait_seconds=120)
    server = live_server(settings)
    try:
        r = post(server, "/generate-image", json={"prompt": "x", "width": 64, "height": 64, "seed": 3,
                                                  "pose_reference": b64(person_photo())},
                 headers={**H, "Prefer": "respond-async"})
        job_id = r.json()["job_id"]
        assert entered.wait(30)
        assert requests.delete(f"{server.url}/jobs/{job_id}", headers=H, timeout=10).status_code == 202
    finally:
        release.set()
    job = wait_for(lambda: (j := requests.get(f"{server.url}/jobs/{job_id}", headers=H, timeout=10).json())
                   ["status"] == "cancelled" and j, timeout=60)
    assert job["result"] is None and len(calls) == 2
    assert not (settings.outputs_dir / job_id).exists()
    assert _vram_models(server)["controlnet-openpose-sdxl"]["pinned"] == 0


@pytest.mark.parametrize("body,param,status", [
    ({"control_scale": 2.5}, "control_scale", 400),
    ({"control_scale": -0.1}, "control_scale", 400),
    ({"pose_image": "no es base64!"}, "pose_image", 400),
    ({"pose_image": b64(b"plain text, not a picture")}, "pose_image", 400),
    ({"pose_reference": b64(b"GIF89a not really")}, "pose_reference", 400),
    ({"pose_image_asset": "0123456789abcdef0123456789abcdef/skeleton.png"}, "pose_image_asset", 404),
])
def test_bad_pose_parameters_are_refused_naming_the_field(server, body, param, status):
    r = generate(server, body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param


def test_both_pose_fields_at_once_are_refused(server):
    r = generate(server, {"pose_image": b64(person_photo()), "pose_reference": b64(person_photo())})
    assert r.status_code == 400 and "either pose_image" in r.json()["error"]["message"]


def test_a_too_large_pose_image_is_413(live_server, make_settings, models):
    small = live_server(make_settings(models_dir=models, job_wait_seconds=120, image_pose_max_pixels=100 * 100))
    for field in ("pose_image", "pose_reference"):
        r = generate(small, {field: b64(person_photo())})
        assert r.status_code == 413 and r.json()["error"]["param"] == field


def test_a_missing_controlnet_is_503_only_for_posed_requests(live_server, make_settings, models, tmp_path):
    import shutil

    partial = tmp_path / "partial"
    shutil.copytree(models, partial, ignore=shutil.ignore_patterns("controlnet-openpose-sdxl", "dwpose"))
    server = live_server(make_settings(models_dir=partial, job_wait_seconds=120))
    r = generate(server, {"pose_image": b64(person_photo())})
    assert r.status_code == 503 and "python -m prefetch --smoke" in r.json()["error"]["message"]
    assert "controlnet-openpose-sdxl" in r.json()["error"]["message"]
    assert generate(server, {}).status_code == 200
    r = post(server, "/pose", json={"image": b64(person_photo())})
    assert r.status_code == 503 and "dwpose" in r.json()["error"]["message"]


def test_openapi_lists_the_pose_route_and_fields(server):
    spec = requests.get(f"{server.url}/openapi.json", headers=H, timeout=10).json()
    assert "/pose" in spec["paths"]
    pose = spec["paths"]["/pose"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(pose)
    schemas = spec["components"]["schemas"]
    for name in ("GenerateImageBody", "OpenAIImageBody"):
        props = schemas[name]["properties"]
        assert {"pose_image", "pose_image_asset", "pose_reference", "pose_reference_asset",
                "control_scale"} <= set(props)
        scale = props["control_scale"]["anyOf"][0]
        assert scale["minimum"] == 0 and scale["maximum"] == 2
    assert "422" in spec["paths"]["/generate-image"]["post"]["responses"]
