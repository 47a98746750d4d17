"""Whisper over HTTP on a live server: OpenAI SDK calls, /transcribe, formats, inputs, errors."""
import pysubs2
import pytest
import requests

from tests import whisper_media as wm
from tests.conftest import API_KEY

H = {"Authorization": f"Bearer {API_KEY}"}
FAST = {"temperature": "0"}  # a random model would otherwise walk the whole fallback schedule


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("whisper-http-media")
    wm.espeak(wm.SPEECH_ES, d / "speech.wav")
    wm.silence_wav(d / "silence.wav")
    wm.silent_video(d / "mute.mp4")
    return d


@pytest.fixture
def server(live_server, make_settings, smoke_models):
    return live_server(make_settings(models_dir=smoke_models("whisper"), whisper_beam_size=1))


def post(server, path, file_path=None, data=None, files=None, **kw):
    if file_path is not None:
        files = {"file": (file_path.name, file_path.read_bytes())}
    return requests.post(f"{server.url}{path}", headers={**H, **kw.pop("headers", {})}, data=data or {},
                         files=files, timeout=60, **kw)


def error(r, status):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and "Traceback" not in err["message"]
    return err


def test_openai_sdk_transcribes_and_translates(server, media_dir):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY)
    with open(media_dir / "speech.wav", "rb") as f:
        tr = client.audio.transcriptions.create(model="whisper-1", file=f, language="es", temperature=0)
    assert isinstance(tr.text, str) and tr.text
    with open(media_dir / "speech.wav", "rb") as f:
        verbose = client.audio.transcriptions.create(model="whisper-1", file=f, temperature=0,
                                                     response_format="verbose_json",
                                                     timestamp_granularities=["word", "segment"])
    assert verbose.language == "es" and verbose.duration > 3
    assert verbose.segments and verbose.words
    assert all(0 <= w.start <= w.end <= verbose.duration for w in verbose.words)
    with open(media_dir / "speech.wav", "rb") as f:
        srt = client.audio.transcriptions.create(model="whisper-1", file=f, temperature=0, response_format="srt")
    assert len(pysubs2.SSAFile.from_string(srt, format_="srt")) >= 1
    with open(media_dir / "speech.wav", "rb") as f:
        translated = client.audio.translations.create(model="whisper-1", file=f, temperature=0)
    assert isinstance(translated.text, str)


def test_transcribe_returns_verbose_json_and_subtitle_files(server, media_dir):
    r = post(server, "/transcribe", media_dir / "speech.wav", data={**FAST, "word_timestamps": "true",
                                                                     "max_line_chars": "20"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["language"] == "es" and body["task"] == "transcribe" and body["speech_duration"] > 2
    assert set(body["files"]) == {"json", "text", "srt", "vtt"}
    srt = requests.get(server.url + body["files"]["srt"], headers=H, timeout=10)
    vtt = requests.get(server.url + body["files"]["vtt"], headers=H, timeout=10)
    for fmt, resp in (("srt", srt), ("vtt", vtt)):
        assert resp.status_code == 200
        subs = pysubs2.SSAFile.from_string(resp.content.decode("utf-8"), format_=fmt)
        assert len(subs) >= 1
        last = 0
        for ev in subs:
            assert last <= ev.start <= ev.end <= body["duration"] * 1000
            assert all(len(line) <= 20 for line in ev.plaintext.split("\n"))
            last = ev.end
    saved = requests.get(server.url + body["files"]["json"], headers=H, timeout=10).json()
    assert saved["segments"] == body["segments"]


@pytest.mark.parametrize("fmt,mime", [("text", "text/plain"), ("vtt", "text/vtt"), ("srt", "application/x-subrip"),
                                      ("json", "application/json")])
def test_each_response_format_has_its_content_type(server, media_dir, fmt, mime):
    r = post(server, "/v1/audio/transcriptions", media_dir / "speech.wav",
             data={**FAST, "model": "whisper-1", "response_format": fmt})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith(mime)
    if fmt == "json":
        assert set(r.json()) == {"text"}
    if fmt == "vtt":
        assert r.text.startswith("WEBVTT")


def test_base64_json_body_is_accepted(server, media_dir):
    import base64

    data = base64.b64encode((media_dir / "speech.wav").read_bytes()).decode()
    r = requests.post(f"{server.url}/transcribe", headers=H, timeout=60,
                      json={"file": f"data:audio/wav;base64,{data}", "temperature": 0, "response_format": "json"})
    assert r.status_code == 200 and r.json()["text"]


@pytest.mark.parametrize("name,codec", [("speech.mp3", ["-c:a", "libmp3lame"]), ("speech.ogg", ["-c:a", "libopus"]),
                                        ("speech.m4a", ["-c:a", "aac"]), ("speech.webm", ["-c:a", "libopus"])])
def test_common_audio_containers_are_decoded(server, media_dir, tmp_path, name, codec):
    src = wm.convert(media_dir / "speech.wav", tmp_path / name, *codec)
    r = post(server, "/transcribe", src, data=FAST)
    assert r.status_code == 200, r.text
    assert r.json()["speech_duration"] > 2 and r.json()["segments"]


def test_silence_gives_an_empty_transcript(server, media_dir):
    r = post(server, "/transcribe", media_dir / "silence.wav", data=FAST)
    assert r.status_code == 200
    body = r.json()
    assert body["text"] == "" and body["segments"] == [] and body["speech_duration"] == 0
    srt = requests.get(server.url + body["files"]["srt"], headers=H, timeout=10).text
    assert srt.strip() == ""


def test_bad_inputs(server, media_dir, tmp_path):
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"\x00\x13\x37 definitely not audio " * 100)
    assert error(post(server, "/transcribe", junk), 415)["param"] == "file"
    text = tmp_path / "notes.txt"
    text.write_text("Hola, esto es un archivo de texto.\nLínea dos.\n")
    assert error(post(server, "/v1/audio/transcriptions", text), 415)["code"] == "unsupported_media"
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    assert error(post(server, "/v1/audio/transcriptions", files={"file": ("empty.wav", b"")}), 400)["param"] == "file"
    assert error(post(server, "/transcribe", media_dir / "mute.mp4"), 400)["code"] == "no_audio"
    err = error(post(server, "/transcribe", media_dir / "speech.wav", data={"language": "klingon"}), 400)
    assert err["param"] == "language" and "es" in err["message"].split(":")[-1]
    err = error(post(server, "/v1/audio/transcriptions", media_dir / "speech.wav", data={"response_format": "docx"}), 400)
    assert err["param"] == "response_format" and "verbose_json" in err["message"]
    err = error(post(server, "/v1/audio/transcriptions", media_dir / "speech.wav", data={"model": "gpt-4o"}), 400)
    assert err["param"] == "model"
    err = error(post(server, "/v1/audio/transcriptions", media_dir / "speech.wav",
                     data={"timestamp_granularities[]": "word", "response_format": "json"}), 400)
    assert err["param"] == "timestamp_granularities"
    assert error(post(server, "/transcribe", media_dir / "speech.wav", data={"temperature": "3"}), 400)["param"] \
        == "temperature"
    assert error(post(server, "/transcribe", media_dir / "speech.wav", data={"prompt": "palabra " * 200}), 400)[
        "param"] == "prompt"
    assert error(post(server, "/transcribe"), 400)["param"] == "file"


def test_size_and_duration_limits_are_413(live_server, make_settings, smoke_models, media_dir):
    models = smoke_models("whisper")
    small = live_server(make_settings(models_dir=models, max_upload_mb=0.05))
    assert error(post(small, "/transcribe", media_dir / "speech.wav"), 413)
    short = live_server(make_settings(models_dir=models, whisper_max_seconds=2))
    err = error(post(short, "/v1/audio/transcriptions", media_dir / "speech.wav"), 413)
    assert err["param"] == "file" and "2 s" in err["message"]


def test_async_transcription_reports_progress_and_files(server, media_dir, wait_for):
    r = post(server, "/transcribe", media_dir / "speech.wav", data=FAST, headers={"Prefer": "respond-async"})
    assert r.status_code == 202
    job = wait_for(lambda: (j := requests.get(server.url + r.json()["location"], headers=H, timeout=10).json())
                   ["status"] in ("succeeded", "failed") and j, timeout=60)
    assert job["status"] == "succeeded" and job["progress"] == 1.0
    assert job["result"]["segments"] and job["result"]["files"]["srt"] == "transcript.srt"
    uploads = server.app.extensions["enfoads"].settings.data_dir / "uploads"
    assert list(uploads.iterdir()) == []  # the upload is not kept once its job is done


def test_models_are_listed(server):
    models = {m["id"]: m for m in requests.get(f"{server.url}/v1/models", headers=H, timeout=10).json()["data"]}
    assert models["whisper-base"]["available"] is True and models["whisper-1"]["available"] is True
    assert models["whisper-large-v3-turbo"]["available"] is False


def test_missing_model_is_503_naming_the_prefetch_command(live_server, make_settings, tmp_path, media_dir):
    server = live_server(make_settings(models_dir=tmp_path / "no-models"))
    err = error(post(server, "/transcribe", media_dir / "speech.wav", data=FAST), 503)
    assert "python -m prefetch" in err["message"]


def test_openapi_documents_the_routes(server):
    doc = requests.get(f"{server.url}/openapi.json", headers=H, timeout=10).json()
    for p in ("/transcribe", "/v1/audio/transcriptions", "/v1/audio/translations", "/subtitle-video"):
        assert "multipart/form-data" in doc["paths"][p]["post"]["requestBody"]["content"]
    multipart = doc["paths"]["/v1/audio/transcriptions"]["post"]["requestBody"]["content"]["multipart/form-data"]
    form = doc["components"]["schemas"][multipart["schema"]["$ref"].rsplit("/", 1)[1]]
    assert {"model", "language", "prompt", "response_format", "temperature", "timestamp_granularities",
            "file"} <= set(form["properties"])
    assert form["properties"]["file"]["format"] == "binary" and "file" in form["required"]
    assert multipart["encoding"]["file"]["contentType"] == "audio/*, video/*"
    assert "verbose_json" in form["properties"]["response_format"]["enum"]
