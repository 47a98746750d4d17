"""Face models: where inswapper comes from, its checksum, missing models, and the ONNX Runtime
providers really in use (a CUDA provider that does not start is reported, never silent)."""
import hashlib
import shutil

import pytest
import requests

from tests import face_media as fm
from tests.conftest import API_KEY

H = {"Authorization": f"Bearer {API_KEY}"}
FACE = (16, 16)


@pytest.fixture(scope="session")
def face_models_dir(smoke_models):
    return smoke_models("face")


@pytest.fixture
def start(live_server, make_settings, face_models_dir):
    def start(**overrides):
        overrides.setdefault("models_dir", face_models_dir)
        return live_server(make_settings(face_det_size=256, **overrides))

    return start


def swap(server):
    return requests.post(f"{server.url}/face-swap", headers=H, timeout=60,
                         files={"source": ("s.png", fm.png(faces=[FACE])), "target": ("t.png", fm.png(faces=[FACE]))})


def detect(server):
    return requests.post(f"{server.url}/faces/detect", headers=H, timeout=60,
                         files={"image": ("i.png", fm.png(faces=[FACE]))})


@pytest.fixture
def pack_only(tmp_path, face_models_dir):
    """A models dir with the buffalo_l pack and no inswapper."""
    models = tmp_path / "models-pack-only"
    models.mkdir()
    (models / "buffalo_l").symlink_to(face_models_dir / "buffalo_l")
    return models


def test_missing_inswapper_is_503_saying_how_to_provide_it(start, pack_only):
    server = start(models_dir=pack_only)
    r = swap(server)
    assert r.status_code == 503
    message = r.json()["error"]["message"]
    assert "no longer publishes" in message and "ENFOADS_FACE_INSWAPPER_PATH" in message
    assert str(pack_only / "inswapper_128" / "inswapper_128.onnx") in message
    assert detect(server).status_code == 200  # the analysis pack alone still works
    models = {m["id"]: m for m in requests.get(f"{server.url}/v1/models", headers=H, timeout=10).json()["data"]}
    assert models["buffalo_l"]["available"] is True and models["inswapper_128"]["available"] is False


def test_missing_pack_is_503_naming_the_command(start, tmp_path):
    server = start(models_dir=tmp_path / "empty-models")
    r = detect(server)
    assert r.status_code == 503 and "python -m prefetch --smoke" in r.json()["error"]["message"]


def test_inswapper_from_a_configured_path_with_its_checksum(start, pack_only, face_models_dir, tmp_path):
    path = tmp_path / "elsewhere" / "my_swapper.onnx"
    path.parent.mkdir()
    shutil.copy(face_models_dir / "inswapper_128" / "inswapper_128.onnx", path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    r = swap(start(models_dir=pack_only, face_inswapper_path=path, face_inswapper_sha256=sha))
    assert r.status_code == 200, r.text


def test_inswapper_with_a_wrong_checksum_is_503(start, face_models_dir):
    r = swap(start(face_inswapper_sha256="0" * 64))
    assert r.status_code == 503
    err = r.json()["error"]
    assert err["code"] == "checksum_mismatch" and "expected " + "0" * 64 in err["message"]


def test_configured_path_that_does_not_exist_is_503(start, tmp_path):
    r = swap(start(face_inswapper_path=tmp_path / "nope.onnx"))
    assert r.status_code == 503 and "nope.onnx" in r.json()["error"]["message"]


def test_published_checksum_is_expected_outside_smoke(face_models_dir):
    from prefetch.manifest import INSWAPPER_SHA256
    from services.face import FaceConfig

    assert FaceConfig(models_dir=face_models_dir, profile="colab").expected_inswapper_sha256 == INSWAPPER_SHA256
    assert FaceConfig(models_dir=face_models_dir, profile="smoke").expected_inswapper_sha256 is None
    assert FaceConfig(models_dir=face_models_dir, profile="colab", inswapper_sha256="").expected_inswapper_sha256 is None


def test_cuda_provider_that_does_not_start_is_refused_not_silent(start):
    """This machine's onnxruntime has no CUDA provider: asking for it must not quietly run on CPU."""
    r = detect(start(face_execution_provider="cuda"))
    assert r.status_code == 503
    err = r.json()["error"]
    assert err["code"] == "cuda_provider_failed" and "ENFOADS_FACE_ALLOW_CPU_FALLBACK" in err["message"]


def test_cpu_fallback_when_allowed_is_reported(start):
    server = start(face_execution_provider="cuda", face_allow_cpu_fallback=True)
    r = detect(server)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["providers"] == {"buffalo_l": ["CPUExecutionProvider"]}
    assert body["warnings"] and body["warnings"][0].startswith("running on CPU")
    diag = requests.get(f"{server.url}/diagnostics", headers=H, timeout=30).json()
    pack = next(m for m in diag["models"] if m["id"] == "buffalo_l")
    assert pack["onnx"]["requested"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert pack["onnx"]["providers"] == ["CPUExecutionProvider"] and pack["onnx"]["warning"]


def test_diagnostics_show_the_providers_in_use(start):
    server = start()
    diag = requests.get(f"{server.url}/diagnostics", headers=H, timeout=30).json()
    assert next(m for m in diag["models"] if m["id"] == "inswapper_128")["onnx"] == {"loaded": False}
    assert swap(server).status_code == 200
    diag = requests.get(f"{server.url}/diagnostics", headers=H, timeout=30).json()
    swapper = next(m for m in diag["models"] if m["id"] == "inswapper_128")
    assert swapper["onnx"]["loaded"] and swapper["onnx"]["providers"] == ["CPUExecutionProvider"]
    assert swapper["onnx"]["warning"] is None


def test_models_are_unloaded_and_reloaded_by_the_offloader(start):
    server = start()
    assert swap(server).status_code == 200
    vram = server.app.extensions["enfoads"].vram
    assert {vram.state_of("buffalo_l"), vram.state_of("inswapper_128")} == {"gpu"}
    vram.unload_all()
    assert vram.state_of("inswapper_128") == "unloaded"
    assert swap(server).status_code == 200
    snap = {m["name"]: m for m in vram.snapshot()["models"]}
    assert snap["inswapper_128"]["loads"] == 2 and snap["inswapper_128"]["runtime"] == "onnx"


def test_openapi_documents_the_face_routes(start):
    spec = requests.get(f"{start().url}/openapi.json", headers=H, timeout=10).json()
    for path in ("/faces/detect", "/face-swap", "/face-swap/video"):
        assert "post" in spec["paths"][path]
    schemas = spec["components"]["schemas"]
    # multipart (files as binary parts) and JSON (files as base64) bodies, both documented
    assert "target_indices" in schemas["SwapOptionsForm"]["properties"]
    assert schemas["SwapOptionsForm"]["properties"]["source"]["format"] == "binary"
    assert schemas["SwapOptionsJson"]["properties"]["source"]["format"] == "byte"
