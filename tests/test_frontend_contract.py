"""The original EnfoadsIA frontend's response shapes, served beside ours (issue: frontend contract).

Its routes answered `{"status": "success", ...}`, `/vram-monitor` `{"status": "online" | "offline"}`
and errors `{"status": "error", "message"}`. One contract test per seed-named route: the success
body carries `status: success`, an error body carries both the OpenAI envelope and the seed's
`status`/`message`; the OpenAI routes' success bodies stay exactly OpenAI's.
"""
import base64

import numpy as np
import pytest
import requests

from services.vram import VramOffloader
from tests import face_media as fm
from tests import whisper_media as wm
from tests.conftest import API_KEY

H = {"Authorization": f"Bearer {API_KEY}"}
GB = 1024**3


@pytest.fixture(scope="module")
def models(smoke_models):
    return smoke_models("image", "face", "whisper", "tts")


@pytest.fixture
def server(live_server, make_settings, models):
    return live_server(make_settings(models_dir=models, face_det_size=256, whisper_beam_size=1,
                                     job_wait_seconds=120))


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return wm.espeak("Hola, buenos días a todos.", tmp_path_factory.mktemp("contract") / "hola.wav")


def post(server, path, **kw):
    return requests.post(f"{server.url}{path}", headers={**H, **kw.pop("headers", {})}, timeout=120, **kw)


def assert_success(r):
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "success"
    return body


def assert_error(r, status, param=None):
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == "error"
    assert body["message"] == body["error"]["message"] and body["message"]
    assert body["error"]["type"]
    if param is not None:
        assert body["error"]["param"] == param
    return body


# --------------------------------------------------------------------------- image

def test_magic_prompt(server):
    # the frontend's body names no engine: auto, which is the llm when the session built the smoke VLM
    body = assert_success(post(server, "/magic-prompt", json={"idea": "una taza de café", "style": "product"}))
    assert body["engine"] in ("rules", "llm") and body["prompt"].startswith("commercial product photography of ")
    body = assert_success(post(server, "/magic-prompt", json={"idea": "una taza de café", "engine": "rules"}))
    assert "coffee" in body["prompt"]
    assert_error(post(server, "/magic-prompt", json={"idea": "  "}), 400, "idea")


def test_generate_image_json(server):
    body = assert_success(post(server, "/generate-image", json={"prompt": "a red cup", "width": 64, "height": 64,
                                                               "response_format": "b64_json", "seed": 1}))
    assert base64.b64decode(body["data"][0]["b64_json"]).startswith(b"\x89PNG")
    assert_error(post(server, "/generate-image", json={"prompt": "a red cup", "width": 65}), 400, "width")


def test_openai_images_keep_openais_schema(server):
    r = post(server, "/v1/images/generations", json={"prompt": "a red cup", "size": "64x64",
                                                     "response_format": "b64_json"})
    assert r.status_code == 200, r.text
    assert "status" not in r.json() and r.json()["data"][0]["b64_json"]
    assert_error(post(server, "/v1/images/generations", json={"prompt": ""}), 400)


def test_image_bytes_are_not_wrapped(server):
    r = post(server, "/generate-image", json={"prompt": "a red cup", "width": 64, "height": 64})
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/png"


# --------------------------------------------------------------------------- face

def test_face_swap_json(server):
    files = {"source": ("s.png", fm.png(faces=[(16, 80)])), "target": ("t.png", fm.png(faces=[(144, 80)]))}
    body = assert_success(post(server, "/face-swap", files=files, data={"response_format": "b64_json"}))
    assert body["faces_swapped"] == [0] and body["b64_json"]
    no_face = {"source": ("s.png", fm.png()), "target": ("t.png", fm.png(faces=[(144, 80)]))}
    assert_error(post(server, "/face-swap", files=no_face, data={"response_format": "url"}), 422)


def test_face_swap_video(server, tmp_path):
    target = fm.video(tmp_path / "t.mp4", frames=4, fps=4)
    files = {"source": ("s.png", fm.png(faces=[(16, 80)])), "target": ("t.mp4", target.read_bytes())}
    body = assert_success(post(server, "/face-swap/video", files=files))
    assert body["frames"] == 4 and body["url"].endswith(".mp4")
    bad = {"source": ("s.png", fm.png(faces=[(16, 80)])), "target": ("t.mp4", b"not a video")}
    assert_error(post(server, "/face-swap/video", files=bad), 415, "target")


# --------------------------------------------------------------------------- whisper

def test_transcribe_json(server, speech):
    body = assert_success(post(server, "/transcribe", files={"file": ("a.wav", speech.read_bytes())},
                               data={"language": "es"}))
    assert body["language"] == "es" and body["job_id"] and "srt" in body["files"]
    assert_error(post(server, "/transcribe", files={"file": ("a.wav", speech.read_bytes())},
                      data={"language": "xx"}), 400, "language")


def test_openai_transcription_keeps_openais_schema(server, speech):
    r = post(server, "/v1/audio/transcriptions", files={"file": ("a.wav", speech.read_bytes())},
             data={"model": "whisper-1", "response_format": "json", "language": "es"})
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"text"}


def test_subtitle_video_json(server, speech, tmp_path):
    video = wm.video_with_audio(speech, tmp_path / "v.mp4", size="64x48")
    body = assert_success(post(server, "/subtitle-video", files={"file": ("v.mp4", video.read_bytes())},
                               data={"response_format": "json", "language": "es"}))
    assert body["video"] and body["srt"] is not None
    assert_error(post(server, "/subtitle-video", files={"file": ("a.wav", speech.read_bytes())}), 400)


# --------------------------------------------------------------------------- tts

def test_tts_errors_and_async_answer(server):
    assert_error(post(server, "/tts", json={"text": ""}), 400)
    assert_error(post(server, "/tts", json={"text": "Hola", "voice": "nobody"}), 404)
    r = post(server, "/tts", json={"text": "Hola."}, headers={"Prefer": "respond-async"})
    # a 202 keeps the job's own state in `status`: the client polls the job
    assert r.status_code == 202 and r.json()["status"] in {"queued", "running", "succeeded"}


# --------------------------------------------------------------------------- every error body

def test_errors_carry_both_shapes_everywhere(server):
    assert_error(requests.get(f"{server.url}/jobs", timeout=10), 401)
    assert_error(requests.get(f"{server.url}/jobs/nope", headers=H, timeout=10), 404)
    assert_error(requests.get(f"{server.url}/no-such-route", headers=H, timeout=10), 404)
    assert_error(requests.delete(f"{server.url}/magic-prompt", headers=H, timeout=10), 405)
    assert_error(post(server, "/magic-prompt", data="{not json", headers={"Content-Type": "application/json"}), 400)
    assert_error(post(server, "/transcribe", files={"file": ("a.txt", b"plain text")}), 415, "file")


def test_openapi_documents_the_error_shape(server):
    doc = requests.get(f"{server.url}/openapi.json", headers=H, timeout=10).json()
    props = doc["components"]["schemas"]["ErrorEnvelope"]["properties"]
    assert {"error", "status", "message"} <= set(props)


# --------------------------------------------------------------------------- vram-monitor

def test_vram_monitor_offline_without_cuda(server):
    body = requests.get(f"{server.url}/vram-monitor", headers=H, timeout=10).json()
    assert body["status"] == "offline" and body["device"] == "cpu"
    assert body["total_gb"] == pytest.approx(15.0)
    for key in ("allocated_gb", "reserved_gb", "free_gb", "utilization_percent", "models_loaded"):
        assert key in body


def test_vram_monitor_on_cuda_counts_memory_torch_does_not_see(server, monkeypatch):
    """On a T4, whisper (CTranslate2) and face (ONNX Runtime) memory is invisible to
    torch.cuda.memory_allocated(): the monitor reports the device's own total - free."""
    from services import diagnostics

    total, free = 15 * GB, 9 * GB  # 6 GB in use on the card, none of it PyTorch's
    fake = VramOffloader(device="cuda", budget_bytes=14 * GB, mem_probe=lambda: (free, total), gc_collect=False)
    fake.register("whisper:big", lambda d: object(), runtime="ctranslate2", estimate_bytes=2 * GB)
    with fake.acquire("whisper:big"):
        pass
    server.app.extensions["enfoads"].vram = fake
    monkeypatch.setattr(diagnostics, "torch_cuda_memory", lambda device: (0, 0))
    body = requests.get(f"{server.url}/vram-monitor", headers=H, timeout=10).json()
    assert body["status"] == "online"
    assert body["total_gb"] == pytest.approx(15.0) and body["free_gb"] == pytest.approx(9.0)
    assert body["allocated_gb"] == pytest.approx(6.0) and body["utilization_percent"] == pytest.approx(40.0)
    assert body["torch_allocated_gb"] == 0
    model = next(m for m in body["models"] if m["name"] == "whisper:big")
    assert model["state"] == "gpu" and model["gb"] > 0
    assert body["models_loaded"] == ["whisper:big"]


def test_vram_report_sizes_per_model():
    from services.diagnostics import vram_report

    off = VramOffloader(device="cpu", budget_bytes=8 * GB, gc_collect=False)
    off.register("a", lambda d: np.zeros(1), runtime="onnx", estimate_bytes=3 * GB)
    with off.acquire("a"):
        report = vram_report(off)
    assert report["status"] == "offline"
    assert report["allocated_gb"] == pytest.approx(3.0) and report["free_gb"] == pytest.approx(5.0)
    assert report["models"] == [{"name": "a", "family": None, "state": "gpu", "gb": 3.0, "measured": False}]


def test_vram_monitor_and_diagnostics_show_each_device(live_server, make_settings, models, tmp_path):
    """Two simulated devices (Kaggle's two T4s): the monitor and /diagnostics list each one."""
    import soundfile as sf

    server = live_server(make_settings(models_dir=models, vram_devices=2, vram_budget_gb=4,
                                       vram_reserve_gb=0.5, whisper_beam_size=1, job_wait_seconds=120))
    vram = server.app.extensions["enfoads"].vram
    vram.register("filler", lambda device: np.zeros(1), runtime="onnx", estimate_bytes=2 * GB)
    with vram.acquire("filler"):  # cpu:0 holds 2 GB: the real whisper model goes to cpu:1
        pass
    wav = tmp_path / "tone.wav"
    sf.write(wav, (0.1 * np.sin(np.arange(16000) / 5)).astype("float32"), 16000)
    with open(wav, "rb") as fh:
        r = post(server, "/v1/audio/transcriptions", files={"file": ("tone.wav", fh, "audio/wav")},
                 data={"model": "base"})
    assert r.status_code == 200, r.text

    body = requests.get(f"{server.url}/vram-monitor", headers=H, timeout=10).json()
    assert body["status"] == "offline" and body["device"] == "cpu:0,cpu:1"
    assert body["total_gb"] == pytest.approx(8.0)
    names = [d["name"] for d in body["devices"]]
    assert names == ["cpu:0", "cpu:1"]
    dev0, dev1 = body["devices"]
    assert dev0["models_loaded"] == ["filler"] and dev0["allocated_gb"] == pytest.approx(2.0)
    assert dev1["models_loaded"] == ["whisper:whisper-base"] and dev1["total_gb"] == pytest.approx(4.0)
    assert body["allocated_gb"] == pytest.approx(dev0["allocated_gb"] + dev1["allocated_gb"])
    assert sorted(body["models_loaded"]) == ["filler", "whisper:whisper-base"]

    diag = requests.get(f"{server.url}/diagnostics", headers=H, timeout=30).json()
    assert [d["name"] for d in diag["vram_devices"]] == ["cpu:0", "cpu:1"]
    assert diag["vram_devices"][1]["models_loaded"] == ["whisper:whisper-base"]
