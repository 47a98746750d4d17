"""The whisper service on the tiny CTranslate2 model: real VAD on real Spanish speech, clamped
timestamps, file and array input, progress and cancel, the offloader, subtitle writing."""
import numpy as np
import pysubs2
import pytest

from services.errors import Cancelled, InvalidInput, TooLarge, UnsupportedMedia
from services.model_env import ModelEnv
from services.vram import VramOffloader
from services.whisper import WhisperService, cues_from_segments, to_srt, to_vtt
from services.whisper.subtitles import break_lines, to_ass
from tests import whisper_media as wm

GB = 2**30


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("whisper-media")
    wm.espeak(wm.SPEECH_ES, d / "speech.wav")
    wm.silence_wav(d / "silence.wav")
    return d


@pytest.fixture(scope="module")
def service(smoke_models, tmp_path_factory):
    models = smoke_models("whisper")
    vram = VramOffloader(device="cpu", budget_bytes=15 * GB)
    env = ModelEnv(models_dir=models, profile="smoke", device="cpu", dtype="float32", vram=vram,
                   data_dir=tmp_path_factory.mktemp("data"))
    return WhisperService(env, default_model="base", beam_size=1)


def fast(service, **kw):
    return service.options(temperature=0.0, **kw)  # a random model would walk the whole fallback schedule


def assert_timeline(result):
    last = 0.0
    for seg in result["segments"]:
        assert last <= seg["start"] <= seg["end"] <= result["duration"]
        last = seg["end"]
        for w in seg.get("words") or []:
            assert seg["start"] <= w["start"] <= w["end"] <= seg["end"]


def test_vad_finds_the_speech_and_nothing_in_silence(service, media_dir):
    speech = service.transcribe_file(media_dir / "speech.wav", fast(service))
    assert speech["language"] == "es" and speech["duration"] > 3
    assert speech["speech_duration"] > 2.0
    assert speech["segments"] and speech["text"]
    assert_timeline(speech)

    silence = service.transcribe_file(media_dir / "silence.wav", fast(service))
    assert silence["speech_duration"] == 0.0
    assert silence["segments"] == [] and silence["text"] == ""


def test_timestamps_stay_inside_the_audio_even_when_the_model_runs_past_it(service, media_dir):
    # Without VAD the random model "hears" 30 s of text in 3 s of silence: the times must be clamped.
    result = service.transcribe_file(media_dir / "silence.wav", fast(service, vad_filter=False, word_timestamps=True))
    assert result["segments"], "expected the random model to produce text without VAD"
    assert_timeline(result)
    assert result["segments"][-1]["end"] <= 3.0
    assert result["words"] and all(w["end"] <= 3.0 for w in result["words"])


def test_array_input_gives_the_same_transcript_as_the_file(service, media_dir):
    from services.media import decode_audio

    from_file = service.transcribe_file(media_dir / "speech.wav", fast(service))
    from_array = service.transcribe_array(decode_audio(media_dir / "speech.wav"), fast(service))
    assert from_array["segments"] == from_file["segments"]


def test_progress_rises_to_the_end_and_cancel_stops_the_work(service, media_dir):
    seen = []
    service.transcribe_file(media_dir / "speech.wav", fast(service), progress=lambda f, m: seen.append((f, m)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] > 0.9
    assert "of" in seen[-1][1]

    calls = []

    def cancel(fraction, message):
        calls.append(fraction)
        raise Cancelled("client cancelled")

    with pytest.raises(Cancelled):
        service.transcribe_file(media_dir / "speech.wav", fast(service), progress=cancel)
    assert len(calls) == 1


def test_the_model_is_loaded_once_through_the_offloader(service, media_dir):
    service.transcribe_file(media_dir / "speech.wav", fast(service))
    service.transcribe_file(media_dir / "speech.wav", fast(service))
    snap = {m["name"]: m for m in service.env.vram.snapshot()["models"]}
    entry = snap["whisper:whisper-base"]
    assert entry["loads"] == 1 and entry["state"] == "gpu"  # "gpu": resident on the offloader's device
    assert snap["whisper:whisper-large-v3-turbo"]["state"] == "unloaded"


def test_bad_input_is_refused_with_the_field_named(service, tmp_path, monkeypatch):
    junk = tmp_path / "notes.txt"
    junk.write_bytes(b"\x00\x01 not audio at all " * 50)
    with pytest.raises(UnsupportedMedia):
        service.transcribe_file(junk)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(InvalidInput) as e:
        service.transcribe_file(empty)
    assert e.value.param == "file"
    with pytest.raises(InvalidInput) as e:
        service.options(language="klingon")
    assert e.value.param == "language" and "es" in e.value.message and "pt" in e.value.message
    assert service.options(language="es-MX").language == "es"
    assert service.options(language="auto").language is None
    with pytest.raises(InvalidInput) as e:
        service.model_key("gpt-4o")
    assert e.value.param == "model"
    monkeypatch.setattr(service, "max_seconds", 1.0)
    with pytest.raises(TooLarge):
        service.transcribe_array(np.zeros(16000 * 5, np.float32), fast(service))


# ---------------------------------------------------------------- subtitles

def test_lines_are_balanced_and_within_the_limit():
    text = "Esta es una frase bastante larga que tiene que partirse en dos líneas parejas"
    [cue] = break_lines(text, 42, 2)
    assert len(cue) == 2 and all(len(line) <= 42 for line in cue)
    assert abs(len(cue[0]) - len(cue[1])) <= 12  # balanced, not 42 + the rest
    many = break_lines(" ".join(["palabra"] * 40), 20, 2)
    assert len(many) > 1 and all(len(c) <= 2 and all(len(line) <= 20 for line in c) for c in many)
    assert break_lines("   ", 42, 2) == []


def test_srt_and_vtt_parse_back_with_monotonic_times():
    segments = [{"start": 0.0, "end": 2.5, "text": " Hola, ¿qué tal?"},
                {"start": 2.5, "end": 9.0, "text": " " + "una frase muy larga que no cabe en una sola línea " * 3},
                {"start": 9.0, "end": 9.5, "text": "  "}]
    cues = cues_from_segments(segments, max_line_chars=30, max_lines=2)
    assert len(cues) > 2
    for fmt, body in (("srt", to_srt(cues)), ("vtt", to_vtt(cues))):
        if fmt == "vtt":
            assert body.startswith("WEBVTT")
        subs = pysubs2.SSAFile.from_string(body, format_=fmt)
        assert len(subs) == len(cues)
        assert subs[0].plaintext == "Hola, ¿qué tal?"
        last = 0
        for event in subs:
            assert last <= event.start <= event.end <= 9000
            assert all(len(line) <= 30 for line in event.plaintext.split("\n"))
            last = event.end
    assert cues[-1].end == 9.0


def test_ass_keeps_speech_from_becoming_override_tags():
    cues = cues_from_segments([{"start": 0, "end": 1, "text": r"{\b1}hola\N"}])
    ass = to_ass(cues, width=320, height=240, font_size=20, position="top")
    subs = pysubs2.SSAFile.from_string(ass)
    assert subs.info["PlayResY"] == "240" and subs.styles["Default"].alignment == 8
    assert "{" not in subs[0].text and "\\b1" not in subs[0].text


@pytest.fixture(scope="module")
def two_sentences(media_dir):
    """Speech, 4 s of silence, speech, 2 s of silence (~14 s): a file longer than a short window."""
    from services.media import decode_audio, encode_audio

    speech = decode_audio(media_dir / "speech.wav")
    gap = np.zeros(16000 * 4, np.float32)
    audio = np.concatenate([speech, gap, speech, gap[:32000]])
    path = media_dir / "two.wav"
    path.write_bytes(encode_audio(audio, 16000, "wav"))
    return path, speech.size / 16000, audio.size / 16000


def test_long_files_are_transcribed_window_by_window_on_one_timeline(service, two_sentences):
    path, speech_s, total_s = two_sentences
    whole = service.transcribe_file(path, fast(service))
    windowed_service = WhisperService(service.env, default_model="base", beam_size=1, window_seconds=5)
    seen = []
    windowed = windowed_service.transcribe_file(path, fast(service), progress=lambda f, m: seen.append(f))
    assert windowed["duration"] == whole["duration"] == pytest.approx(total_s, abs=0.01)
    assert_timeline(windowed)
    # the second sentence is found where it is in the file, not at the start of its window
    assert any(seg["start"] >= speech_s + 3.5 for seg in windowed["segments"])
    # no speech lost or doubled at the cuts
    assert windowed["speech_duration"] == pytest.approx(whole["speech_duration"], abs=1.0)
    # one progress step per window at least, rising to the end
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0) and len(seen) >= 3


def test_a_window_ends_inside_a_pause(two_sentences):
    from services.media import decode_audio
    from services.whisper.transcriber import _pause_near_end

    path, speech_s, _ = two_sentences
    audio = decode_audio(path)
    window = audio[: int((speech_s + 2.5) * 16000)]  # speech, then 2.5 s of the pause
    cut = _pause_near_end(window, search_s=4.0) / 16000
    assert speech_s < cut < speech_s + 2.5


def test_long_audio_decodes_in_windows_of_bounded_size(media_dir):
    from services.media import iter_audio

    sizes = [w.size for w in iter_audio(media_dir / "silence.wav", 16000, window_samples=16000)]
    assert sizes == [16000, 16000, 16000]
    with pytest.raises(TooLarge):
        list(iter_audio(media_dir / "silence.wav", 16000, window_samples=16000, max_seconds=2.0))
