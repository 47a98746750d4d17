"""What the notebook's cells rely on: the self-test client against a real server, the one-server
rule, the GPU check, the prefetch form, the connection text. The notebook itself runs under
nbmake (scripts/test.sh)."""
import json
from pathlib import Path

import pytest

from backend import notebook as nb
from backend.selftest import SelfTest, format_results
from tests.conftest import API_KEY

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(smoke_models):
    return smoke_models("image", "face", "whisper", "tts", "vita", "animate")


def test_self_test_runs_one_real_request_per_installed_family(live_server, make_settings, models):
    # a tiny random whisper hits the temperature fallback: the first transcription can pass 10 s here
    server = live_server(make_settings(models_dir=models, face_det_size=256, job_wait_seconds=120))
    results = {r.family: r for r in SelfTest(server.url, API_KEY, log=lambda m: None).run()}

    assert {f: r.status for f, r in results.items()} == dict.fromkeys(
        ("image", "pose", "face", "restore", "whisper", "tts", "vita", "animate"), "ok"), {f: r.detail for f, r in results.items()}
    for family in ("tts", "whisper", "face"):
        r = results[family]
        assert r.seconds > 0 and r.load_seconds is not None and r.load_seconds > 0  # first use loads it
        assert r.vram_delta_gb > 0  # the offloader now holds it
    assert results["tts"].speed.startswith("RTF ") and "24000 Hz" in results["tts"].detail
    assert results["whisper"].speed.startswith("RTF ")
    assert results["face"].speed.endswith(" s/image") and "1 face(s) found" in results["face"].detail
    assert results["image"].speed.endswith(" s/image")
    assert results["pose"].speed.endswith(" s/pose+image") and "1 person(s), 64x64 image" in results["pose"].detail
    assert "magic prompt by the llm in " in results["vita"].detail  # the assistant's model writes prompts too
    assert results["animate"].speed.endswith(" frames/s") and "50 frames" in results["animate"].detail
    assert "128x128 -> 512x512, 1 face(s) restored" in results["restore"].detail
    table = format_results(list(results.values()))
    assert table.splitlines()[0].split()[:3] == ["FAMILY", "STATUS", "REQUEST"]


def test_self_test_reports_missing_models_with_the_prefetch_command(live_server, make_settings, tmp_path):
    empty = tmp_path / "no-models"
    empty.mkdir()
    server = live_server(make_settings(models_dir=empty))
    results = SelfTest(server.url, API_KEY, log=lambda m: None).run(["face", "whisper"])
    assert [r.status for r in results] == ["models missing", "models missing"]
    assert all("python -m prefetch" in r.detail for r in results)


def test_the_server_cell_twice_starts_one_server(make_settings, capsys):
    settings = make_settings()
    try:
        first = nb.start_server(settings, show_log=False)
        second = nb.start_server(make_settings(), show_log=False)
        assert second is first and nb.running_server() is first
        assert "already running" in capsys.readouterr().out
        import requests

        assert requests.get(first.url + "/health", timeout=5).json()["status"] == "ok"
    finally:
        nb.stop_server()
    assert nb.running_server() is None


def test_a_port_taken_by_another_process_is_explained(make_settings):
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        with pytest.raises(RuntimeError, match="already in use"):
            nb.start_server(make_settings(port=sock.getsockname()[1]), show_log=False)
    finally:
        sock.close()
        nb.stop_server()


def test_gpu_check_warns_clearly_without_a_gpu():
    import torch

    report, warning = nb.gpu_check()
    if torch.cuda.is_available():
        assert "compute capability" in report
    else:
        assert "NO GPU" in warning and "T4" in warning and "float32" in report


def test_prefetch_form_maps_ticks_to_models():
    assert nb.prefetch_names({"image": False, "face": True, "whisper": True, "tts": False, "vita": False}) == [
        "face", "whisper-large-v3-turbo"]
    assert nb.prefetch_names({"animate": True}) == ["liveportrait"]
    from prefetch import download as dl

    assert {s.key for s in dl.select(["liveportrait"])} == {"liveportrait", "buffalo_l"}  # its face finder
    names = nb.prefetch_names({"vita": True}, "chatterbox-turbo, whisper-small")
    assert names == ["vita", "whisper-large-v3-turbo", "chatterbox-es-latam", "spacy-pkuseg-ontonotes",
                     "chatterbox-turbo", "whisper-small"]
    # the TTS tick: the Latin-American Spanish pack, and prefetch adds the shared V3 files it needs
    assert nb.prefetch_names({"tts": True}) == ["chatterbox-es-latam", "spacy-pkuseg-ontonotes"]
    from prefetch import download as dl

    assert [s.key for s in dl.select(["chatterbox-es-latam"])] == ["chatterbox-v3-shared", "chatterbox-es-latam"]
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        nb.prefetch_names({}, "nope")
    # image: the default 4-step Lightning UNet only, not the 1/2/8-step files (5 GB each); pose control's models;
    # the Real-ESRGAN files /upscale loads (x4 by default, x2 on request)
    assert nb.prefetch_names({"image": True}) == ["sdxl-base", "sdxl-lightning-unet-4step", "sdxl-vae-fp16-fix",
                                                  "controlnet-openpose-sdxl", "dwpose", "realesrgan-x4plus",
                                                  "realesrgan-x2plus"]
    # face: the family, GFPGAN included (swaps restore their faces by default on a GPU)
    assert "gfpgan-v1.4" in [s.key for s in dl.select(nb.prefetch_names({"face": True}))]


def test_colab_settings_take_the_key_secret_and_respect_env(tmp_path, monkeypatch):
    monkeypatch.setattr(nb, "in_notebook_runtime", lambda: True)
    monkeypatch.setattr(nb.runtime, "secret", lambda name: ("fixed-key", "colab-secret", None)
                        if name == "ENFOADS_API_KEY" else (None, None, None))
    for name in ("ENFOADS_API_KEY", "ENFOADS_HOST", "ENFOADS_PROFILE", "ENFOADS_PORT"):
        monkeypatch.delenv(name, raising=False)
    s = nb.settings_for(ci=False, data_dir=tmp_path)
    assert s.api_key.get_secret_value() == "fixed-key" and s.profile == "colab" and s.host == "0.0.0.0"
    monkeypatch.setenv("ENFOADS_PROFILE", "local")
    monkeypatch.setenv("ENFOADS_PORT", "9123")
    monkeypatch.setenv("ENFOADS_API_KEY", "env-key")
    s = nb.settings_for(ci=False, data_dir=tmp_path)
    assert (s.profile, s.port, s.api_key.get_secret_value()) == ("local", 9123, "env-key")


def test_connection_help_says_what_to_paste_where(make_settings):
    class FakeServer:
        url = "http://127.0.0.1:8000"
        key_for_display = "k-123"

    text = nb.connection_help(FakeServer(), "https://abc.ngrok-free.app", "ngrok")
    assert "https://abc.ngrok-free.app" in text and "k-123" in text and "ngrok-skip-browser-warning" in text
    assert "only in this browser" in nb.connection_help(FakeServer(), "https://x.colab.dev", "colab-proxy")
    assert "http://127.0.0.1:8000" in nb.connection_help(FakeServer(), None, None)


def test_the_committed_notebook_is_what_the_generator_writes():
    import nbformat

    from notebooks.make_notebook import build

    committed = nbformat.read(REPO / "notebooks" / "enfoads_colab.ipynb", as_version=4)
    nbformat.validate(committed)
    assert json.loads(nbformat.writes(build())) == json.loads(nbformat.writes(committed))
    sources = [c.source for c in committed.cells if c.cell_type == "code"]
    assert [s.splitlines()[0].split("·")[0] for s in sources][:4] == [
        "# @title 1. Setup ", "# @title 2. Models ", "# @title 3. Server ", "# @title 4. Diagnostics "]


def test_every_cell_is_valid_python():
    """The Colab/Kaggle-only branches of a cell never run in CI mode: a syntax error there would
    first show in a user's runtime."""
    import ast

    nb = json.loads((REPO / "notebooks" / "enfoads_colab.ipynb").read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            ast.parse("".join(cell["source"]), filename=cell.get("id", "cell"))
