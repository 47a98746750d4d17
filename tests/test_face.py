"""Face family through HTTP on the tiny smoke pack: detect, swap (paste-back), errors."""
import base64

import numpy as np
import pytest
import requests

from tests import face_media as fm
from tests.conftest import API_KEY

H = {"Authorization": f"Bearer {API_KEY}"}
LEFT, RIGHT = (16, 80), (144, 80)  # two faces, left and right


@pytest.fixture(scope="session")
def face_models_dir(smoke_models):
    return smoke_models("face")


@pytest.fixture
def face_settings(make_settings, face_models_dir):
    def make(**overrides):
        return make_settings(models_dir=face_models_dir, face_det_size=256, **overrides)

    return make


@pytest.fixture
def server(live_server, face_settings):
    return live_server(face_settings())


def post(server, path, files=None, data=None, json=None, **kw):
    return requests.post(f"{server.url}{path}", files=files, data=data, json=json, headers={**H, **kw.pop("headers", {})},
                         timeout=60, **kw)


def swap(server, source, target, **data):
    return post(server, "/face-swap", files={"source": ("s.png", source), "target": ("t.png", target)}, data=data)


def changed_box(before: np.ndarray, after: np.ndarray):
    ys, xs = np.nonzero(np.any(before != after, axis=2))
    return (xs.min(), ys.min(), xs.max(), ys.max()) if xs.size else None


def inside(box, face_xy, margin=24):
    x, y = face_xy
    return box[0] >= x - margin and box[1] >= y - margin and box[2] < x + fm.SIZE + margin \
        and box[3] < y + fm.SIZE + margin


# --------------------------------------------------------------------------- detect

def test_detect_returns_the_planted_face(server):
    r = post(server, "/faces/detect", files={"image": ("a.png", fm.png(faces=[LEFT]))})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == 1 and (body["width"], body["height"]) == (256, 256)
    face = body["faces"][0]
    assert face["index"] == 0 and face["score"] > 0.9
    assert face["box"] == pytest.approx([16, 80, 112, 176], abs=2)
    assert len(face["landmarks"]) == 5
    for x, y in face["landmarks"]:  # eyes, nose, mouth corners inside the box
        assert 16 <= x <= 112 and 80 <= y <= 176
    assert isinstance(face["age"], int) and face["gender"] in ("male", "female")
    assert "embedding" not in face
    assert body["providers"] == {"buffalo_l": ["CPUExecutionProvider"]}


def test_detect_finds_nothing_on_an_empty_image(server):
    r = post(server, "/faces/detect", files={"image": ("a.png", fm.png())})
    assert r.status_code == 200 and r.json()["count"] == 0 and r.json()["faces"] == []


def test_detect_sorts_left_to_right_and_gives_embeddings_from_json(server):
    image = base64.b64encode(fm.png(faces=[RIGHT, LEFT])).decode()
    r = post(server, "/faces/detect", json={"image": f"data:image/png;base64,{image}", "embedding": True,
                                            "landmarks": True})
    assert r.status_code == 200, r.text
    faces = r.json()["faces"]
    assert [f["index"] for f in faces] == [0, 1]
    assert faces[0]["box"][0] < faces[1]["box"][0]
    emb = np.array(faces[0]["embedding"])
    assert emb.shape == (512,) and np.linalg.norm(emb) == pytest.approx(1.0, abs=1e-3)
    assert len(faces[0]["landmark_2d_106"]) == 106 and len(faces[0]["landmark_3d_68"]) == 68
    assert set(faces[0]["pose"]) == {"pitch", "yaw", "roll"}


# --------------------------------------------------------------------------- swap

def test_swap_changes_only_the_chosen_face_and_keeps_the_size(server):
    target = fm.canvas(256, 256, [LEFT, RIGHT])
    r = swap(server, fm.png(faces=[LEFT]), fm.encode(target), target_indices="1")
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "image/png"
    assert r.headers["X-Faces-Found"] == "2" and r.headers["X-Faces-Swapped"] == "1"
    assert "CPUExecutionProvider" in r.headers["X-Onnx-Providers"]
    out = fm.decode(r.content)
    assert out.shape == target.shape
    box = changed_box(target, out)
    assert box is not None and inside(box, RIGHT), box  # paste-back: the rest is untouched
    x, y = RIGHT
    assert np.any(out[y + 20:y + 76, x + 20:x + 76] != 255)  # the face itself did change


def test_swap_all_faces_by_default_in_jpeg(server):
    target = fm.canvas(256, 256, [LEFT, RIGHT])
    r = swap(server, fm.png(faces=[RIGHT]), fm.encode(target), output_format="jpeg", quality=95)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "image/jpeg" and r.headers["X-Faces-Swapped"] == "0,1"
    out = fm.decode(r.content).astype(int)
    for x, y in (LEFT, RIGHT):
        assert np.abs(out[y + 20:y + 76, x + 20:x + 76] - 255).mean() > 10


def test_swap_json_base64_in_and_out_then_chain_by_asset_id(server):
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    target = fm.canvas(256, 256, [LEFT, RIGHT])
    r = post(server, "/face-swap", json={"source": b64(fm.png(faces=[RIGHT])), "target": b64(fm.encode(target)),
                                         "target_indices": [1], "output_format": "webp",
                                         "response_format": "b64_json"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["format"] == "webp" and body["faces_swapped"] == [1] and body["width"] == 256
    out = fm.decode(base64.b64decode(body["b64_json"]))
    assert out.shape == (256, 256, 3)
    first = requests.get(f"{server.url}{body['url']}", headers=H, timeout=10)
    assert first.status_code == 200 and first.content == base64.b64decode(body["b64_json"])
    # The output of that job is the target of the next one (its left face is still a white square).
    r = post(server, "/face-swap", json={"source": b64(fm.png(faces=[LEFT])),
                                         "target_asset": f"{body['job_id']}/{body['file']}", "response_format": "url"})
    assert r.status_code == 200, r.text
    assert r.json()["url"].startswith(f"/jobs/{r.json()['job_id']}/files/swap.png")


def test_asset_of_an_unknown_job_is_404(server):
    r = post(server, "/face-swap", json={"source": base64.b64encode(fm.png(faces=[LEFT])).decode(),
                                         "target_asset": f"{'0' * 32}/swap.png"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "target_asset"


# --------------------------------------------------------------------------- bad input

def test_not_an_image_is_400(server):
    r = post(server, "/faces/detect", files={"image": ("a.png", b"this is not an image")})
    assert r.status_code == 400 and r.json()["error"]["param"] == "image"


def test_truncated_image_is_400(server):
    data = fm.encode(fm.canvas(256, 256, [LEFT]), "JPEG")
    r = swap(server, fm.png(faces=[LEFT]), data[: len(data) // 2])
    assert r.status_code == 400 and r.json()["error"]["param"] == "target"


@pytest.mark.parametrize("width,height,status,words", [
    (100_000, 100_000, 413, "40,000,000 pixel limit"),  # past Pillow's own guard, from the header
    (10_000, 5_000, 413, "10000x5000"),  # over face_max_image_pixels (40 MP)
])
def test_decompression_bomb_is_refused_before_decoding(server, width, height, status, words):
    r = post(server, "/faces/detect", files={"image": ("bomb.png", fm.bomb_png(width, height))})
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"] and r.json()["error"]["param"] == "image"


def test_no_face_in_source_is_422(server):
    r = swap(server, fm.png(), fm.png(faces=[LEFT]))
    assert r.status_code == 422
    assert r.json()["error"]["message"] == "no face found in source image"
    assert r.json()["error"]["param"] == "source"


def test_no_face_in_target_is_422(server):
    r = swap(server, fm.png(faces=[LEFT]), fm.png())
    assert r.status_code == 422 and r.json()["error"]["param"] == "target"
    assert "no face found in target image" in r.json()["error"]["message"]


@pytest.mark.parametrize("field,value,what", [("target_indices", "0,5", "target image has 2 faces"),
                                              ("source_index", "3", "source image has 1 face ")])
def test_face_index_out_of_range_is_400_with_the_count(server, field, value, what):
    r = swap(server, fm.png(faces=[LEFT]), fm.png(faces=[LEFT, RIGHT]), **{field: value})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == field and what in err["message"]


def test_missing_file_and_unknown_option_are_400(server):
    r = post(server, "/face-swap", files={"source": ("s.png", fm.png(faces=[LEFT]))})
    assert r.status_code == 400 and r.json()["error"]["param"] == "target"
    r = swap(server, fm.png(faces=[LEFT]), fm.png(faces=[LEFT]), output_format="gif")
    assert r.status_code == 400 and r.json()["error"]["param"] == "output_format"
    r = swap(server, fm.png(faces=[LEFT]), fm.png(faces=[LEFT]), face_idx="1")
    assert r.status_code == 400 and r.json()["error"]["param"] == "face_idx"


def test_uploads_are_deleted_after_the_job(live_server, face_settings):
    server = live_server(face_settings(job_wait_seconds=120))  # the answer comes after the job, even on a busy box
    r = swap(server, fm.png(faces=[LEFT]), fm.png(faces=[LEFT]))
    assert r.status_code == 200, r.text  # a swap that ran to the end, not one refused before its files were saved
    assert r.headers["X-Faces-Found"] == "1" and r.headers["X-Faces-Swapped"] == "0"  # face 0 was swapped
    uploads = server.settings.data_dir / "uploads"
    assert not uploads.exists() or not any(uploads.iterdir())


def test_exif_orientation_is_applied(server):
    """Phone photos store pixels sideways with an EXIF tag; faces are found on the upright picture."""
    import io

    from PIL import Image

    upright = fm.canvas(128, 256, [(16, 144)])
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(upright, k=1)))  # as the camera wrote it
    exif = stored.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    r = post(server, "/faces/detect", files={"image": ("phone.jpg", buf.getvalue())})
    body = r.json()
    assert (body["width"], body["height"]) == (128, 256)
    assert body["count"] == 1 and body["faces"][0]["box"] == pytest.approx([16, 144, 112, 240], abs=3)
