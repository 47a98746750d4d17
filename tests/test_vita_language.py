"""The assistant's language policy (services/vita/language.py), its settings, and a session that
follows it over Socket.IO (whisper and TTS doubles; the real model is in test_vita_real_whisper.py)."""
import numpy as np
import pytest

from services.vita.language import Decision, LanguagePolicy
from tests.vita_helpers import FixedTranscriber, ToneSpeaker, VitaClient, silence

POLICY = LanguagePolicy()  # es; es, en, pt; 2 s; p 0.8


def test_short_utterances_keep_the_session_language_without_detection():
    assert not POLICY.should_detect(1.99) and POLICY.should_detect(2.0)
    assert POLICY.decide("es", {"en": 0.99}, 1.5) == Decision("es", None, False)
    assert POLICY.decide("en", None, 5.0) == Decision("en", None, False)


def test_a_confident_allowed_language_switches():
    assert POLICY.decide("es", {"en": 0.85, "es": 0.1}, 3.0) == Decision("en", 0.85, True)
    assert POLICY.decide("es", [("pt", 0.8), ("es", 0.2)], 3.0) == Decision("pt", 0.8, True)  # >= threshold


def test_a_doubtful_or_foreign_detection_keeps_the_session_language():
    assert POLICY.decide("es", {"en": 0.79, "es": 0.2}, 3.0) == Decision("es", 0.2, False)
    # Whisper's favourite is a language the assistant does not speak: ignored, and the mass it
    # takes is doubt (renormalised over es/en/pt, English would be 0.75 here)
    assert POLICY.decide("es", {"th": 0.95, "en": 0.006, "es": 0.002}, 3.0) == Decision("es", 0.002, False)
    # the session's own language, however confident, is no switch
    assert POLICY.decide("es", {"es": 0.99}, 3.0) == Decision("es", 0.99, False)


def test_a_switch_sticks_until_another_confident_one():
    lang = "es"
    for probs, expect in [({"en": 0.9}, "en"), ({"es": 0.6, "en": 0.3}, "en"), ({"es": 0.7}, "en"),
                          ({"pt": 0.95}, "pt"), ({"es": 0.81}, "es")]:
        lang = POLICY.decide(lang, probs, 4.0).language
        assert lang == expect


def test_one_language_never_detects():
    only = LanguagePolicy(default="es", languages=("es",))
    assert not only.should_detect(30.0)
    assert only.decide("es", {"en": 1.0}, 30.0) == Decision("es", None, False)


@pytest.mark.parametrize("kwargs", [dict(languages=()), dict(default="fr"), dict(switch_p=0.0),
                                    dict(switch_p=1.5)])
def test_policy_refuses_an_impossible_configuration(kwargs):
    with pytest.raises(ValueError):
        LanguagePolicy(**kwargs)


# ---------------------------------------------------------------------------------------- settings


def test_language_settings_from_the_environment(monkeypatch, tmp_path):
    from backend.routes.vita import config_from
    from backend.settings import load_settings

    monkeypatch.setenv("ENFOADS_VITA_LANGUAGES", " Español, en ,pt-BR,en")
    monkeypatch.setenv("ENFOADS_VITA_LANGUAGE", "es-419")
    monkeypatch.setenv("ENFOADS_VITA_LANGUAGE_SWITCH_MIN_S", "3")
    monkeypatch.setenv("ENFOADS_VITA_LANGUAGE_SWITCH_P", "0.9")
    monkeypatch.setenv("ENFOADS_VITA_TTS_MODEL", "kyutai-pocket-tts")
    s = load_settings(data_dir=tmp_path)
    assert s.vita_languages == ["es", "en", "pt"] and s.vita_language == "es"
    assert s.vita_tts_model == "kyutai-pocket-tts"
    assert config_from(s).language == LanguagePolicy("es", ("es", "en", "pt"), 3.0, 0.9)


@pytest.mark.parametrize("env,needle", [
    ({"ENFOADS_VITA_LANGUAGE": "fr"}, "must be one of vita_languages"),
    ({"ENFOADS_VITA_LANGUAGES": "es,klingon"}, "unknown language 'klingon'"),
    ({"ENFOADS_VITA_LANGUAGE": "auto"}, "'auto' is not one"),
    ({"ENFOADS_VITA_LANGUAGES": " , "}, "at least one language"),
    ({"ENFOADS_VITA_LANGUAGE_SWITCH_P": "0"}, "vita_language_switch_p"),
])
def test_bad_language_settings_say_what_is_wrong(monkeypatch, tmp_path, env, needle):
    from pydantic import ValidationError

    from backend.settings import load_settings

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValidationError) as err:
        load_settings(data_dir=tmp_path)
    assert needle in str(err.value)


# ------------------------------------------------------------------------ a session over Socket.IO


@pytest.fixture
def assistant(live_server, make_settings, smoke_models):
    clients = []

    def start(transcriber, **overrides):
        speaker = ToneSpeaker()

        def setup(app):
            app.extensions["vita"].transcriber = transcriber
            app.extensions["vita"].speaker = speaker

        values = dict(models_dir=smoke_models("vita"), vita_max_new_tokens=6, vita_audio_rate_limit=20,
                      vita_audio_burst_s=30)
        values.update(overrides)
        server = live_server(make_settings(**values), setup=setup)
        c = VitaClient(server.url)
        clients.append(c)
        return c, speaker

    yield start
    for c in clients:
        c.close()


def say(c, audio, n):
    c.send_audio(np.concatenate([silence(0.3), audio, silence(1.0)]), speed=8.0)
    c.wait_event("response_done", timeout=60, count=n)


def test_the_session_switches_on_a_confident_detection_and_answers_in_its_language(assistant, speech_clip):
    transcriber = FixedTranscriber(text="Hello, what do you see?", language="en")
    c, speaker = assistant(transcriber)
    say(c, speech_clip, 1)
    first = c.of("transcript")[0]
    assert first == {"text": "Hello, what do you see?", "language": "en", "language_probability": 1.0,
                     "switched": True}
    assert transcriber.languages == ["en"] and set(speaker.languages) == {"en"}
    # sticky: a detection under the threshold keeps English
    transcriber.probabilities = [("es", 0.7), ("en", 0.2)]
    say(c, speech_clip, 2)
    second = c.of("transcript")[1]
    assert second["language"] == "en" and second["switched"] is False and second["language_probability"] == 0.2
    assert transcriber.languages == ["en", "en"] and set(speaker.languages) == {"en"}


def test_short_utterances_are_transcribed_in_the_session_language_without_detection(assistant, speech_clip):
    transcriber = FixedTranscriber(language="en")  # detection would say English with certainty
    c, speaker = assistant(transcriber, vita_language_switch_min_s=30)
    say(c, speech_clip, 1)
    assert c.of("transcript")[0]["language"] == "es" and c.of("transcript")[0]["language_probability"] is None
    assert transcriber.detections == 0 and transcriber.languages == ["es"] and set(speaker.languages) == {"es"}


@pytest.fixture(scope="module")
def speech_clip(tmp_path_factory):
    from tests.vita_helpers import spanish_speech

    return spanish_speech(tmp_path_factory.mktemp("lang-speech"))
