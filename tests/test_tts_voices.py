"""The voice store without a model: ids, listing, lookup (OpenAI names), cloning rules and deletion
as a user of /v1/audio/voices sees them (the HTTP layer only maps these errors to status codes)."""
import json
import wave

import numpy as np
import pytest

from services.errors import Conflict, InvalidInput, NotFound
from services.tts.voices import CLIP_RATE, VoiceStore, check_id
from tests.tts_media import speech_wav


@pytest.fixture
def store(tmp_path):
    return VoiceStore(tmp_path / "voices")


def clip(tmp_path, seconds, name="clip.wav", **kw):
    path = tmp_path / name
    path.write_bytes(speech_wav(seconds, **kw))
    return path


@pytest.mark.parametrize("voice_id", ["a", "ana", "voz-1", "v_2", "0", "x" * 64])
def test_ids_of_the_pattern_are_accepted_as_they_are(voice_id):
    assert check_id(voice_id) == voice_id


@pytest.mark.parametrize("voice_id", ["", "Ana", "-x", "_x", "a/b", "..", "x" * 65, "evil\n", "a b", 5, None])
def test_other_ids_are_refused_naming_the_field(voice_id):
    with pytest.raises(InvalidInput) as err:
        check_id(voice_id, "id")
    assert err.value.param == "id" and err.value.code == "invalid_voice_id"
    assert "1-64 characters" in err.value.message and repr(voice_id) in err.value.message
    with pytest.raises(InvalidInput) as err:
        check_id(voice_id)
    assert err.value.param == "voice"


def test_the_folders_are_predefined_and_cloned_and_reopening_keeps_them(tmp_path):
    root = tmp_path / "voices"
    store = VoiceStore(root)
    (root / "predefined" / "maria.wav").write_bytes(b"x")  # where an operator puts a clip
    store.clone(clip(tmp_path, 6.0), voice_id="ana")
    assert (root / "cloned" / "ana.wav").is_file() and (root / "cloned" / "ana.json").is_file()
    again = VoiceStore(root)  # the server restarts on the same data dir
    assert [(v.id, v.kind) for v in again.list()] == [("default", "builtin"), ("maria", "predefined"),
                                                      ("ana", "cloned")]


def test_an_empty_store_lists_the_built_in_voice_only(store):
    assert [v.public() for v in store.list()] == [
        {"id": "default", "name": "the model's built-in voice", "type": "builtin", "created_at": None}]
    for missing in (None, ""):
        voice = store.get(missing)
        assert (voice.id, voice.kind, voice.path) == ("default", "builtin", None)


def test_predefined_clips_are_listed_by_their_lowercase_name(store, tmp_path):
    folder = store.predefined_dir
    for name in ("Maria.WAV", "pedro.mp3", "notes.txt", "bad name.wav", "zz.flac"):
        (folder / name).write_bytes(b"x")
    voices = store.list()
    assert [(v.id, v.kind) for v in voices] == [("default", "builtin"), ("maria", "predefined"),
                                                ("pedro", "predefined"), ("zz", "predefined")]
    maria = store.get("maria")
    assert maria.path == folder / "Maria.WAV" and maria.public() == {
        "id": "maria", "name": "maria", "type": "predefined", "created_at": None}


def test_openai_names_are_the_built_in_voice_unless_a_clip_has_that_name(store):
    nova = store.get("nova")
    assert (nova.id, nova.kind, nova.path) == ("nova", "builtin", None)
    assert "nova" in nova.name
    (store.predefined_dir / "nova.wav").write_bytes(b"x")
    assert store.get("nova").kind == "predefined"


def test_an_unknown_voice_is_404_listing_the_voices_there_are(store):
    (store.predefined_dir / "zulu.wav").write_bytes(b"x")
    (store.predefined_dir / "alfa.ogg").write_bytes(b"x")
    with pytest.raises(NotFound) as err:
        store.get("nadie")
    assert err.value.param == "voice" and err.value.code == "voice_not_found"
    assert "'nadie'" in err.value.message and err.value.message.endswith("available: alfa, default, zulu")
    with pytest.raises(InvalidInput):
        store.get("../x")


def test_a_clone_is_stored_as_a_24khz_wav_at_the_reference_loudness(store, tmp_path):
    quiet = clip(tmp_path, 6.0, amplitude=0.02)
    loud = clip(tmp_path, 6.0, "loud.wav", amplitude=0.6)
    a = store.clone(quiet, name="Ana", voice_id="ana")
    b = store.clone(loud, voice_id="beto")
    assert (a.id, a.kind, a.name, a.path) == ("ana", "cloned", "Ana", store.cloned_dir / "ana.wav")
    assert b.name == "beto"  # no name given: the id
    levels = []
    for voice in (a, b):
        with wave.open(str(voice.path)) as w:
            assert w.getframerate() == CLIP_RATE and w.getnchannels() == 1
            assert w.getnframes() == pytest.approx(6.0 * CLIP_RATE, abs=CLIP_RATE * 0.02)
            levels.append(np.abs(np.frombuffer(w.readframes(w.getnframes()), "<i2")).mean())
    assert levels[0] == pytest.approx(levels[1], rel=0.05)  # 30x apart before
    meta = json.loads((store.cloned_dir / "ana.json").read_text())
    assert meta["name"] == "Ana" and meta["seconds"] == pytest.approx(6.0, abs=0.02)
    assert meta["created_at"] == a.created_at and a.created_at > 1.7e9
    # the stored clone is what the store lists and finds afterwards, with its metadata
    listed = {v.id: v.public() for v in store.list()}
    assert listed["ana"] == {"id": "ana", "name": "Ana", "type": "cloned", "created_at": a.created_at}
    assert [v.id for v in store.list()] == ["default", "ana", "beto"]
    assert store.get("ana").path == a.path
    assert sorted(p.name for p in store.cloned_dir.iterdir()) == ["ana.json", "ana.wav", "beto.json", "beto.wav"]


def test_a_clone_without_an_id_gets_a_fresh_one(store, tmp_path):
    one = store.clone(clip(tmp_path, 5.5))
    two = store.clone(clip(tmp_path, 5.5))
    assert one.id != two.id
    for voice in (one, two):
        assert voice.id.startswith("voice-") and len(voice.id) == len("voice-") + 12 and check_id(voice.id)
        assert voice.name == voice.id and store.get(voice.id).kind == "cloned"


def test_a_clone_with_lost_metadata_is_still_listed_under_its_id(store, tmp_path):
    store.clone(clip(tmp_path, 6.0), name="Ana", voice_id="ana")
    (store.cloned_dir / "ana.json").write_text("{broken")
    assert store.get("ana").public() == {"id": "ana", "name": "ana", "type": "cloned", "created_at": None}
    (store.cloned_dir / "ana.json").unlink()
    assert store.get("ana").public()["name"] == "ana"
    store.delete("ana")  # deletable without its metadata
    assert list(store.cloned_dir.iterdir()) == []


@pytest.mark.parametrize("voice_id", ["default", "nova", "maria"])
def test_predefined_and_openai_ids_cannot_be_cloned_over(store, tmp_path, voice_id):
    (store.predefined_dir / "maria.wav").write_bytes(b"x")
    with pytest.raises(Conflict) as err:
        store.clone(clip(tmp_path, 6.0), voice_id=voice_id)
    assert err.value.param == "id" and err.value.code == "voice_exists" and repr(voice_id) in err.value.message
    assert list(store.cloned_dir.iterdir()) == []


def test_a_taken_clone_id_is_409_and_the_first_voice_stays(store, tmp_path):
    first = store.clone(clip(tmp_path, 6.0), name="Ana", voice_id="ana")
    before = first.path.read_bytes()
    with pytest.raises(Conflict) as err:
        store.clone(clip(tmp_path, 8.0, "other.wav"), name="Otra", voice_id="ana")
    assert err.value.param == "id" and err.value.code == "voice_exists"
    assert "DELETE /v1/audio/voices/ana" in err.value.message
    assert first.path.read_bytes() == before and store.get("ana").name == "Ana"
    assert sorted(p.name for p in store.cloned_dir.iterdir()) == ["ana.json", "ana.wav"]  # no temp file left


@pytest.mark.parametrize("seconds, code, says", [
    (4.8, "audio_too_short", "is 4.8 s; it must last at least 5 s"),
    (30.3, "audio_too_long", "is 30.3 s; it must last at most 30 s"),  # decoded, just over
    (31.0, "audio_too_long", "file: the reference clip must last at most 30 s"),  # cut off at 30.5 s of decoding
    (30.7, "audio_too_long", "file: the reference clip must last at most 30 s"),
])
def test_clips_outside_5_to_30_seconds_are_refused_with_their_length(store, tmp_path, seconds, code, says):
    with pytest.raises(InvalidInput) as err:
        store.clone(clip(tmp_path, seconds, rate=CLIP_RATE), voice_id="ana")
    assert err.value.param == "file" and err.value.code == code
    assert err.value.message.endswith(says) and (says.startswith("file:") or err.value.message.startswith("file: "))
    assert list(store.cloned_dir.iterdir()) == []


def test_the_length_limits_are_inclusive(store, tmp_path):
    assert store.clone(clip(tmp_path, 5.0, rate=CLIP_RATE), voice_id="short").kind == "cloned"
    assert store.clone(clip(tmp_path, 30.0, rate=CLIP_RATE), voice_id="long").kind == "cloned"


def test_a_store_with_other_limits_applies_them(tmp_path):
    store = VoiceStore(tmp_path / "voices", min_seconds=2.0, max_seconds=3.0)
    assert store.clone(clip(tmp_path, 2.5), voice_id="ok").kind == "cloned"
    with pytest.raises(InvalidInput, match="at least 2 s"):
        store.clone(clip(tmp_path, 1.5))
    with pytest.raises(InvalidInput, match="at most 3 s"):
        store.clone(clip(tmp_path, 3.3, rate=CLIP_RATE))


def test_a_file_that_is_not_audio_is_refused_with_the_reason(store, tmp_path):
    bad = tmp_path / "x.wav"
    bad.write_bytes(b"RIFF but not really audio at all")
    with pytest.raises(InvalidInput) as err:
        store.clone(bad, voice_id="ana")
    assert err.value.param == "file" and err.value.code == "unsupported_media"  # the decoder's own reason
    assert err.value.message == ("file: the reference clip is not usable audio "
                                 "(the file is not audio or video that can be decoded)")
    assert list(store.cloned_dir.iterdir()) == []


def test_a_decoder_crash_is_still_a_400_with_its_reason(store, tmp_path, monkeypatch):
    import services.tts.voices as voices

    def crash(*args, **kwargs):
        raise RuntimeError("libavcodec said no")

    monkeypatch.setattr(voices, "decode_audio", crash)
    with pytest.raises(InvalidInput) as err:
        store.clone(clip(tmp_path, 6.0), voice_id="ana")
    assert (err.value.param, err.value.code) == ("file", "invalid_audio")
    assert err.value.message == "file: the reference clip is not usable audio (libavcodec said no)"


@pytest.mark.parametrize("voice_id", ["Ana", "../x", "a b"])
def test_a_bad_clone_id_is_refused_naming_the_id_field(store, tmp_path, voice_id):
    with pytest.raises(InvalidInput) as err:
        store.clone(clip(tmp_path, 6.0), voice_id=voice_id)
    assert (err.value.param, err.value.code) == ("id", "invalid_voice_id") and err.value.message.startswith("id: ")
    assert list(store.cloned_dir.iterdir()) == []


def test_the_clip_length_is_recorded_to_the_hundredth(store, tmp_path):
    path = tmp_path / "odd.wav"
    with wave.open(str(path), "wb") as w:  # 5.50375 s at 24 kHz
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(CLIP_RATE)
        t = np.arange(132090) / CLIP_RATE
        w.writeframes((0.3 * np.sin(2 * np.pi * 200 * t) * 32767).astype("<i2").tobytes())
    store.clone(path, voice_id="ana")
    assert json.loads((store.cloned_dir / "ana.json").read_text())["seconds"] == 5.5


def test_a_silent_clip_is_refused(store, tmp_path):
    with pytest.raises(InvalidInput) as err:
        store.clone(clip(tmp_path, 6.0, amplitude=0.0), voice_id="ana")
    assert err.value.param is not None
    assert list(store.cloned_dir.iterdir()) == []


def test_deleting_a_clone_removes_its_files(store, tmp_path):
    voice = store.clone(clip(tmp_path, 6.0), voice_id="ana")
    store.delete("ana")
    assert list(store.cloned_dir.iterdir()) == [] and not voice.path.exists()
    with pytest.raises(NotFound) as err:
        store.get("ana")
    assert err.value.code == "voice_not_found"


def test_deleting_what_is_not_a_clone_says_why(store):
    (store.predefined_dir / "maria.wav").write_bytes(b"x")
    for voice_id in ("maria", "default"):
        with pytest.raises(InvalidInput) as err:
            store.delete(voice_id)
        assert (err.value.param, err.value.code) == ("voice_id", "voice_predefined")
        assert repr(voice_id) in err.value.message
    assert (store.predefined_dir / "maria.wav").exists()
    with pytest.raises(NotFound) as err:
        store.delete("nadie")
    assert (err.value.param, err.value.code) == ("voice_id", "voice_not_found") and "'nadie'" in err.value.message
    with pytest.raises(InvalidInput) as err:
        store.delete("../x")
    assert err.value.code == "invalid_voice_id"
