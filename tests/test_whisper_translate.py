"""Translation on the real multilingual Whisper base (tests/real_whisper.py): Spanish speech in,
English text out, through the OpenAI route; the same audio transcribed stays Spanish."""
import pytest

from tests import whisper_media as wm
from tests.conftest import API_KEY

SPEECH = "Hola, buenos días. Hoy vamos a cocinar una sopa de pollo con toda mi familia."
# espeak's voice is robotic and base is small: it may mishear a noun, so count common English words
ENGLISH = {"hello", "good", "morning", "today", "we", "are", "going", "to", "the", "cook", "chicken", "soup",
           "family", "with", "my", "our", "a"}
SPANISH = {"hola", "buenos", "días", "hoy", "cocinar", "sopa", "pollo", "familia", "con", "mi"}


def words(text: str) -> set[str]:
    return {w.strip(".,;:!?¿¡\"'").lower() for w in text.split()}


@pytest.fixture(scope="module")
def client(real_whisper_models, tmp_path_factory):
    from backend.app import create_app, shutdown_app
    from backend.settings import load_settings

    settings = load_settings(profile="local", data_dir=tmp_path_factory.mktemp("data"), api_key=API_KEY,
                             device="cpu", port=0, models_dir=real_whisper_models, whisper_model="base",
                             whisper_beam_size=1, job_wait_seconds=120)
    app = create_app(settings)
    yield app.test_client()
    shutdown_app(app)


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return wm.espeak(SPEECH, tmp_path_factory.mktemp("speech") / "es.wav", voice="es-419")


def post(client, route, speech, **form):
    with open(speech, "rb") as f:
        r = client.post(route, headers={"Authorization": f"Bearer {API_KEY}"},
                        data={"file": (f, "es.wav"), "model": "whisper-1", "temperature": "0", **form})
    assert r.status_code == 200, r.get_data(as_text=True)
    return r.get_json()["text"]


def test_spanish_speech_is_translated_into_english(client, speech):
    text = post(client, "/v1/audio/translations", speech)
    heard = words(text)
    assert len(heard & ENGLISH) >= 4, text
    assert not heard & (SPANISH - {"mi"}), text


def test_the_same_speech_transcribed_stays_spanish(client, speech):
    text = post(client, "/v1/audio/transcriptions", speech, language="es")
    heard = words(text)
    assert len(heard & SPANISH) >= 4, text
    assert not heard & {"chicken", "soup", "today", "family", "we", "going", "the"}, text
