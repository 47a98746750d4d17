"""Upscaling and face restoration through HTTP on tiny random-weight Real-ESRGAN / GFPGAN checkpoints
(real .pth layout, loaded by spandrel) and the smoke face pack: sizes, tiles, faces, errors."""
import base64

import numpy as np
import pytest
import requests

from tests import face_media as fm
from tests.conftest import API_KEY

H = {"Authorization": f"Bearer {API_KEY}"}
LEFT, RIGHT = (16, 80), (144, 80)


@pytest.fixture(scope="session")
def restore_models_dir(smoke_models):
    from services.restore.smoke import build_upscalers

    root = smoke_models("face")  # the face pack and GFPGAN
    if not (root / "realesrgan-x4plus").is_dir():
        build_upscalers(root)  # the image family's Real-ESRGAN files, without building SDXL
    return root


@pytest.fixture
def restore_settings(make_settings, restore_models_dir):
    def make(**overrides):
        # a loaded CI machine can take more than the default 10 s wait on the tiny models
        return make_settings(models_dir=restore_models_dir, face_det_size=256, **{"job_wait_seconds": 120, **overrides})

    return make


@pytest.fixture
def server(live_server, restore_settings):
    return live_server(restore_settings())


def post(server, path, files=None, data=None, json=None, **kw):
    return requests.post(f"{server.url}{path}", files=files, data=data, json=json,
                         headers={**H, **kw.pop("headers", {})}, timeout=120, **kw)


def noise(width, height, seed=0):
    return (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)


def upscale(server, img, **data):
    return post(server, "/upscale", files={"image": ("a.png", fm.encode(img))}, data=data)


def error(r):
    body = r.json()
    assert body["status"] == "error" and body["message"] == body["error"]["message"]
    return body["error"]


# --------------------------------------------------------------------------- upscale

@pytest.mark.parametrize("scale", [4, 2])
def test_upscale_gives_exactly_scale_times_the_input(server, scale):
    img = noise(37, 29)  # odd sizes: x2plus pads to its 4-pixel grid and must crop back
    r = upscale(server, img, scale=str(scale))
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "image/png" and r.headers["X-Scale"] == str(scale)
    assert r.headers["X-Job-Lane"] == "interactive"
    out = fm.decode(r.content)
    assert out.shape == (29 * scale, 37 * scale, 3)
    assert out.std() > 0  # the network ran: not a blank canvas


def test_upscale_default_is_x4_and_json_base64_in_b64_json_out(server):
    img = noise(20, 16, seed=3)
    image = base64.b64encode(fm.encode(img)).decode()
    r = post(server, "/upscale", json={"image": f"data:image/png;base64,{image}", "response_format": "b64_json",
                                       "output_format": "webp", "quality": 90})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"], body["scale"], body["model"]) == (80, 64, 4, "realesrgan-x4plus")
    assert (body["input_width"], body["input_height"], body["format"]) == (20, 16, "webp")
    assert fm.decode(base64.b64decode(body["b64_json"])).shape == (64, 80, 3)


def test_upscale_of_a_previous_output_by_asset_with_url_response(server):
    first = upscale(server, noise(12, 10), scale="2", response_format="url")
    assert first.status_code == 200, first.text
    body = first.json()
    asset = f"{body['job_id']}/{body['file']}"
    r = post(server, "/upscale", json={"image_asset": asset, "scale": 2, "response_format": "url"})
    assert r.status_code == 200, r.text
    got = requests.get(f"{server.url}{r.json()['url']}", headers=H, timeout=30)
    assert fm.decode(got.content).shape == (40, 48, 3)


def test_tiled_and_untiled_runs_agree_pixel_for_pixel(live_server, restore_settings):
    """16-pixel tiles (12 of them) with the default 32-pixel overlap vs one tile: no seams."""
    img = noise(60, 40, seed=5)
    untiled = upscale(live_server(restore_settings()), img, scale="4")
    tiled = upscale(live_server(restore_settings(restore_tile=16)), img, scale="4")
    assert untiled.status_code == tiled.status_code == 200
    assert np.array_equal(fm.decode(untiled.content), fm.decode(tiled.content))


def test_large_upscales_go_to_the_batch_lane(live_server, restore_settings):
    from services.restore.params import BATCH_OUTPUT_PIXELS

    server = live_server(restore_settings())
    r = upscale(server, noise(520, 8, seed=2), scale="4")  # a wide 2080 x 32 output: few pixels
    assert r.headers["X-Job-Lane"] == "interactive"
    side = int((BATCH_OUTPUT_PIXELS ** 0.5) // 2) + 2  # x2 of this side passes the bound
    r = post(server, "/upscale?async=true", files={"image": ("a.png", fm.encode(noise(side, side)))},
             data={"scale": "2"})
    assert r.status_code == 202 and r.json()["lane"] == "batch"
    requests.delete(f"{server.url}/jobs/{r.json()['job_id']}", headers=H, timeout=30)


def test_face_enhance_restores_faces_only_inside_them(server):
    # 128x128 with a 48 px face at (8, 8): the detector (at 256) sees the 96 px square it finds
    img = fm.canvas(128, 128)
    img[8:56, 8:56] = 255
    plain = upscale(server, img, scale="2")
    enhanced = upscale(server, img, scale="2", face_enhance="true", fidelity="0")
    assert plain.status_code == enhanced.status_code == 200, enhanced.text
    assert plain.headers["X-Faces-Restored"] == "0" and enhanced.headers["X-Faces-Restored"] == "1"
    a, b = fm.decode(plain.content), fm.decode(enhanced.content)
    assert a.shape == b.shape == (256, 256, 3)
    box = changed_box(a, b)
    assert box is not None, "face_enhance changed nothing"
    # the face is at 16..112 in the x2 output; its aligned crop's footprint reaches a little beyond
    assert box[0] >= 16 - 24 and box[1] >= 16 - 24 and box[2] < 112 + 24 and box[3] < 112 + 24
    assert changed_box(a[:, 140:], b[:, 140:]) is None and changed_box(a[140:], b[140:]) is None


# --------------------------------------------------------------------------- restore-faces

def changed_box(before, after):
    ys, xs = np.nonzero(np.any(before != after, axis=2))
    return (xs.min(), ys.min(), xs.max(), ys.max()) if xs.size else None


def within(box, face_xy, margin=24):
    x, y = face_xy
    return box[0] >= x - margin and box[1] >= y - margin and box[2] < x + fm.SIZE + margin \
        and box[3] < y + fm.SIZE + margin


def test_restore_faces_changes_each_face_and_nothing_else(server):
    img = fm.canvas(256, 256, faces=[LEFT, RIGHT])
    r = post(server, "/restore-faces", files={"image": ("a.png", fm.encode(img))}, data={"fidelity": "0"})
    assert r.status_code == 200, r.text
    assert r.headers["X-Faces-Found"] == "2" and r.headers["X-Faces-Restored"] == "0,1"
    out = fm.decode(r.content)
    assert out.shape == img.shape
    left_half, right_half = (slice(None), slice(0, 128)), (slice(None), slice(128, None))
    for half, face in ((left_half, LEFT), (right_half, RIGHT)):
        box = changed_box(img[half], out[half])
        assert box is not None
        shifted = (face[0] - (128 if face is RIGHT else 0), face[1])
        assert within(box, shifted)


def test_restore_faces_by_index_leaves_the_others_alone(server):
    img = fm.canvas(256, 256, faces=[LEFT, RIGHT])
    r = post(server, "/restore-faces", data={"face_indices": "1", "response_format": "b64_json", "fidelity": "0"},
             files={"image": ("a.png", fm.encode(img))})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["faces_found"] == 2 and body["faces_restored"] == [1]
    assert body["boxes"][0] == pytest.approx([144, 80, 240, 176], abs=2)
    out = fm.decode(base64.b64decode(body["b64_json"]))
    box = changed_box(img, out)
    assert box is not None and within(box, RIGHT)


def test_fidelity_one_keeps_the_original_and_between_blends(server):
    img = fm.canvas(256, 256, faces=[LEFT])

    def restored(fidelity):
        r = post(server, "/restore-faces", files={"image": ("a.png", fm.encode(img))}, data={"fidelity": fidelity})
        assert r.status_code == 200, r.text
        return fm.decode(r.content).astype(int)

    assert np.array_equal(restored("1"), img)
    full, half = restored("0"), restored("0.5")
    # GFPGAN adds noise of its own (as upstream); the blend sits between the original and a restoration
    region = (slice(LEFT[1], LEFT[1] + fm.SIZE), slice(LEFT[0], LEFT[0] + fm.SIZE))
    assert np.abs(half[region] - img[region]).mean() < np.abs(full[region] - img[region]).mean()


# --------------------------------------------------------------------------- errors

@pytest.mark.parametrize("path", ["/upscale", "/restore-faces"])
def test_not_an_image_is_400(server, path):
    r = post(server, path, files={"image": ("a.png", b"this is not an image")})
    assert r.status_code == 400
    assert error(r)["code"] == "invalid_image" and error(r)["param"] == "image"


@pytest.mark.parametrize("path", ["/upscale", "/restore-faces"])
def test_missing_image_is_400(server, path):
    r = post(server, path, data={"fidelity": "0.5"})
    assert r.status_code == 400 and error(r)["param"] == "image"


def test_too_large_images_are_413(live_server, restore_settings):
    server = live_server(restore_settings(face_max_image_pixels=50 * 50, restore_max_output_pixels=100 * 100))
    r = upscale(server, noise(60, 60), scale="2")
    assert r.status_code == 413 and error(r)["code"] == "image_too_large"
    r = upscale(server, noise(30, 30), scale="4")  # 120 x 120 out
    assert r.status_code == 413 and error(r)["code"] == "output_too_large" and "120x120" in error(r)["message"]
    assert upscale(server, noise(30, 30), scale="2").status_code == 200  # 60 x 60 fits
    r = post(server, "/restore-faces", files={"image": ("a.png", fm.bomb_png())})
    assert r.status_code == 413


@pytest.mark.parametrize("scale", ["3", "1", "8", "x", "2.5"])
def test_scale_other_than_2_or_4_is_400(server, scale):
    r = upscale(server, noise(8, 8), scale=scale)
    assert r.status_code == 400 and error(r)["param"] == "scale"


@pytest.mark.parametrize("fidelity", ["-0.1", "1.5", "much"])
def test_fidelity_out_of_range_is_400(server, fidelity):
    r = post(server, "/restore-faces", files={"image": ("a.png", fm.png(faces=[LEFT]))}, data={"fidelity": fidelity})
    assert r.status_code == 400 and error(r)["param"] == "fidelity"


def test_face_index_out_of_range_is_400(server):
    r = post(server, "/restore-faces", files={"image": ("a.png", fm.png(faces=[LEFT]))}, data={"face_indices": "0,3"})
    assert r.status_code == 400
    assert error(r)["code"] == "face_index_out_of_range" and error(r)["param"] == "face_indices"
    assert "has 1 face" in error(r)["message"]


def test_no_face_is_422(server):
    r = post(server, "/restore-faces", files={"image": ("a.png", fm.png())})
    assert r.status_code == 422 and error(r)["code"] == "no_face"


def test_missing_models_are_503_naming_the_command(live_server, make_settings, tmp_path):
    server = live_server(make_settings(models_dir=tmp_path / "empty"))
    r = upscale(server, noise(8, 8), scale="2")
    assert r.status_code == 503 and "prefetch" in error(r)["message"] and "realesrgan-x2plus" in error(r)["message"]
    r = post(server, "/restore-faces", files={"image": ("a.png", fm.png(faces=[LEFT]))})
    assert r.status_code == 503 and "gfpgan-v1.4" in error(r)["message"]
    models = requests.get(f"{server.url}/v1/models", headers=H, timeout=30).json()["data"]
    offered = {m["id"]: m for m in models}
    assert offered["realesrgan-x4plus"]["available"] is False and offered["gfpgan-v1.4"]["family"] == "face"


def test_openapi_documents_the_routes(server):
    doc = requests.get(f"{server.url}/openapi.json", headers=H, timeout=30).json()
    up = doc["paths"]["/upscale"]["post"]
    form = up["requestBody"]["content"]["multipart/form-data"]["schema"]
    props = form.get("properties") or doc["components"]["schemas"][form["$ref"].rsplit("/", 1)[-1]]["properties"]
    assert props["scale"]["enum"] == [2, 4] and props["scale"]["default"] == 4
    assert {"face_enhance", "response_format", "output_format", "image", "fidelity"} <= set(props)
    assert "/restore-faces" in doc["paths"]


# --------------------------------------------------------------------------- restore on face swaps

def swap(server, **data):
    files = {"source": ("s.png", fm.png(faces=[LEFT])), "target": ("t.png", fm.png(faces=[LEFT, RIGHT]))}
    return post(server, "/face-swap", files=files, data=data)


def test_face_swap_restores_the_swapped_faces_on_request(server):
    plain, restored = swap(server, restore="false"), swap(server, restore="true", restore_fidelity="0")
    assert plain.status_code == restored.status_code == 200, restored.text
    assert plain.headers["X-Faces-Restored"] == "" and restored.headers["X-Faces-Restored"] == "0,1"
    a, b = fm.decode(plain.content), fm.decode(restored.content)
    for half, face in (((slice(None), slice(0, 128)), LEFT), ((slice(None), slice(128, None)), (RIGHT[0] - 128, 80))):
        box = changed_box(a[half], b[half])
        assert box is not None and within(box, face)


def test_face_swap_restore_is_off_by_default_on_the_cpu(server):
    r = swap(server, target_indices="1", response_format="b64_json")
    assert r.status_code == 200, r.text
    assert r.json()["faces_swapped"] == [1] and r.json()["faces_restored"] == []


def test_face_swap_restore_without_gfpgan_is_503(live_server, make_settings, tmp_path):
    from services.face.smoke import build_pack

    build_pack(tmp_path / "models")  # the face pack and inswapper, no GFPGAN
    server = live_server(make_settings(models_dir=tmp_path / "models", face_det_size=256))
    assert swap(server).status_code == 200  # the default just does not restore
    r = swap(server, restore="true")
    assert r.status_code == 503 and "gfpgan-v1.4" in error(r)["message"]


def test_face_swap_video_restores_every_swapped_face(server, tmp_path):
    target = fm.video(tmp_path / "t.mp4", frames=4, audio=False)
    r = post(server, "/face-swap/video", files={"source": ("s.png", fm.png(faces=[LEFT])),
                                                "target": ("t.mp4", target.read_bytes(), "video/mp4")},
             data={"restore": "true"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["frames"] == 4 and body["faces_swapped"] == 4 and body["faces_restored"] == 4
