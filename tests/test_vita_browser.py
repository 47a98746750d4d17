"""The /vita page in a real browser: headless Debian chromium (driven by Playwright, no browser
download) with a fake microphone playing Spanish speech gets a transcript and a spoken reply."""
import shutil

import numpy as np
import pytest

from tests.conftest import API_KEY
from tests.vita_helpers import FixedTranscriber, ToneSpeaker, espeak_wav

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def mic_wav(tmp_path):
    import soundfile as sf

    from services.media import decode_audio

    speech = decode_audio(espeak_wav("Hola, ¿qué ves en la cámara ahora mismo?", tmp_path / "s.wav"), 48000)
    track = np.concatenate([np.zeros(48000, np.float32), speech, np.zeros(3 * 48000, np.float32)])
    path = tmp_path / "mic.wav"
    sf.write(path, track, 48000, subtype="PCM_16")
    return path


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (scripts/install.sh --dev)")
def test_the_page_hears_spanish_from_a_fake_microphone_and_plays_a_reply(live_server, make_settings, smoke_models,
                                                                          mic_wav, tmp_path):
    from playwright.sync_api import sync_playwright

    transcriber = FixedTranscriber()

    def wire(app):
        app.extensions["vita"].transcriber = transcriber
        app.extensions["vita"].speaker = ToneSpeaker()

    server = live_server(make_settings(models_dir=smoke_models("vita"), vita_max_new_tokens=12), setup=wire)
    args = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={mic_wav}",
            "--autoplay-policy=no-user-gesture-required"]
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                       headless=True, args=args)
        try:
            page = browser.new_page()
            console = []
            page.on("console", lambda m: console.append(m.text))
            page.goto(f"{server.url}/vita?token={API_KEY}")
            page.wait_for_function("document.getElementById('status').textContent === 'conectado'", timeout=20000)
            # connected with the key, which no longer shows in the address bar (replaceState: nor in history)
            assert page.url == f"{server.url}/vita"
            page.click("#start")
            page.wait_for_function(
                "window.vitaEvents.some(e => e.event === 'transcript') && "
                "window.vitaEvents.some(e => e.event === 'audio' && e.bytes > 0)", timeout=60000)
            events = page.evaluate("window.vitaEvents")
            log = page.inner_text("#log")
        finally:
            browser.close()
    transcripts = [e["data"] for e in events if e["event"] == "transcript"]
    assert transcripts[0] == {"text": "¿Qué ves en la cámara?", "language": "es"}, console
    assert "Tú: ¿Qué ves en la cámara?" in log and "VITA: " in log
    assert sum(e["bytes"] for e in events if e["event"] == "audio") % 2 == 0
    # what the browser captured and sent was the phrase: at least a second, VITA's minimum
    assert transcriber.calls and transcriber.calls[0] >= 1.0
