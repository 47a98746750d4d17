"""The assistant with the real whisper and TTS services (tiny random-weight models): the cascade
as Colab runs it, only smaller."""
import numpy as np
import pytest

from tests.vita_helpers import VitaClient, silence, spanish_speech


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return spanish_speech(tmp_path_factory.mktemp("vita-real-speech"))


@pytest.fixture
def server(live_server, make_settings, smoke_models):
    models = smoke_models("whisper", "tts", "vita")
    return live_server(make_settings(models_dir=models, vita_max_new_tokens=8, vita_audio_rate_limit=20,
                                     vita_audio_burst_s=30))


def test_the_real_speech_services_are_wired_as_ears_and_voice(server, speech):
    backend = server.app.extensions["enfoads"]
    manager = server.app.extensions["vita"]
    assert not manager.missing_services()
    text, _ = manager.transcriber.transcribe(speech, None)
    direct = backend.whisper.transcribe_array(speech, backend.whisper.options(language=None, vad_filter=False, temperature=0.0))
    assert text == direct["text"].strip()
    chunks = list(manager.speaker.synthesize("Hola. ¿Cómo estás?", "es", None))
    assert chunks and all(a.dtype == np.float32 and a.ndim == 1 and rate == 24000 for a, rate in chunks)
    # a language no TTS engine speaks (whisper mishearing) is answered in the assistant's language
    assert list(manager.speaker.synthesize("Hola.", "sd", None))
    # while a session is open, the assistant's speech models stay pinned in the offloader
    assert set(manager.transcriber.vram_names) == {"whisper:whisper-base"}
    assert set(manager.speaker.vram_names) == {"chatterbox-es-latam"}


def test_spoken_question_gets_a_transcript_and_spoken_reply_from_the_real_services(server, speech):
    c = VitaClient(server.url)
    try:
        c.send_audio(np.concatenate([silence(0.3), speech, silence(1.0)]), speed=8.0)
        # an utterance in which whisper hears nothing sends no transcript (and no reply): the wait fails
        c.wait_event("transcript", timeout=120)
        assert c.of("transcript")[0]["text"].strip()
        c.wait_event("response_done", timeout=180)
        assert c.of("response_text") and len(b"".join(c.of("audio"))) > 0
        assert not c.of("error"), c.of("error")
    finally:
        c.close()
