"""VITA's parts on their own: sentence cutting, audio out, packets, VAD segmentation on real
speech, the Qwen2-VL brain on a tiny model, and what the pins do against another family's job."""
import json
import threading

import numpy as np
import pytest
from PIL import Image

from services.errors import InvalidInput
from services.vita.audio_out import PcmStream
from services.vita.packets import parse_audio
from services.vita.sentences import SentenceSplitter
from services.vita.throttle import AudioBudget
from services.vram import Runtime, VramOffloader
from tests.vita_helpers import silence, spanish_speech


@pytest.fixture(scope="session")
def speech(tmp_path_factory):
    return spanish_speech(tmp_path_factory.mktemp("vita-speech-u"))


@pytest.fixture(scope="session")
def vad_model():
    from services.vita.vad import load_vad_model

    return load_vad_model()


def feed_tokens(text, step=3):
    sp = SentenceSplitter()
    out = []
    for i in range(0, len(text), step):
        out += sp.feed(text[i:i + step])
    return out, sp.flush()


def test_sentences_are_cut_at_their_ends_as_tokens_arrive():
    done, rest = feed_tokens("Hola, Sr. García. Son las 3.5 horas, ¿vale? ¡Claro! Veo una taza azul")
    assert done == ["Hola, Sr. García.", "Son las 3.5 horas, ¿vale?", "¡Claro!"]
    assert rest == ["Veo una taza azul"]


def test_a_long_run_without_an_end_is_cut_at_a_space():
    sp = SentenceSplitter(max_chars=40)
    pieces = sp.feed("palabra " * 20) + sp.flush()
    assert all(len(p) <= 40 for p in pieces) and " ".join(pieces).split() == ["palabra"] * 20


@pytest.mark.parametrize("rate", [22050, 24000, 44100, 16000])
def test_speech_goes_out_as_int16_at_24khz_whatever_the_tts_rate(rate):
    stream = PcmStream()
    tone = (0.5 * np.sin(2 * np.pi * 300 * np.arange(rate) / rate)).astype(np.float32)  # 1 s
    out = b"".join(stream.convert(chunk, rate) for chunk in np.array_split(tone, 7)) + stream.flush()
    pcm = np.frombuffer(out, "<i2")
    assert abs(pcm.size - 24000) <= 48
    assert 0.4 * 32767 < np.abs(pcm).max() <= 0.52 * 32767
    # no clicks at chunk boundaries: the 300 Hz tone stays smooth
    assert np.abs(np.diff(pcm.astype(np.int32))).max() < 0.06 * 32767


def test_audio_packet_decodes_int16_little_endian():
    pcm = np.array([0, 16384, -32768, 32767], "<i2")
    samples = parse_audio(json.dumps({"sample_rate": 16000, "audio": list(pcm.tobytes())}))
    assert samples.dtype == np.float32 and samples.tolist() == [0.0, 0.5, -1.0, 32767 / 32768]
    with pytest.raises(InvalidInput) as err:
        parse_audio(json.dumps({"sample_rate": 16000, "audio": [0] * 40000}))
    assert err.value.param == "audio"


def test_the_budget_lets_real_time_through_and_cuts_a_flood():
    now = [0.0]
    budget = AudioBudget(rate=1.5, burst=1.0, clock=lambda: now[0])
    took = 0
    for _ in range(10 * 125):  # 10 s of packets within 1 s
        now[0] += 1 / 1250
        took += budget.take(0.008)
    assert took * 0.008 <= 1.0 + 1.5 + 0.01
    real_time = 0
    for _ in range(125):
        now[0] += 0.008
        real_time += budget.take(0.008)
    assert real_time == 125


def test_segmenter_finds_one_utterance_in_speech_and_none_in_silence(vad_model, speech):
    from services.vita.vad import SpeechSegmenter

    seg = SpeechSegmenter(vad_model)
    audio = np.concatenate([silence(1.0), speech, silence(1.0)])
    events = []
    for i in range(0, audio.size, 128):
        events += seg.push(audio[i:i + 128])
    kinds = [e.kind for e in events]
    assert kinds == ["start", "utterance"]
    assert abs(events[1].audio.size - speech.size) < 0.6 * 16000
    quiet = SpeechSegmenter(vad_model)
    assert [e for i in range(0, 48000, 128) for e in quiet.push(silence(3.0)[i:i + 128])] == []


def test_sessions_do_not_share_vad_state(vad_model, speech):
    from services.vita.vad import SpeechSegmenter

    a, b = SpeechSegmenter(vad_model), SpeechSegmenter(vad_model)
    events_a = []
    for i in range(0, speech.size // 2, 128):
        events_a += a.push(speech[i:i + 128])
        assert b.push(silence(0.008)) == []
    assert [e.kind for e in events_a] == ["start"] and a.in_speech and not b.in_speech


def test_a_long_monologue_is_cut_at_the_limit(vad_model, speech):
    from services.vita.vad import SpeechSegmenter

    seg = SpeechSegmenter(vad_model, max_utterance_s=1.5)
    events = [e for i in range(0, speech.size, 128) for e in seg.push(speech[i:i + 128])]
    utterances = [e for e in events if e.kind == "utterance"]
    assert utterances and all(u.audio.size <= 1.5 * 16000 + 512 for u in utterances)


# ------------------------------------------------------------------------------------------ brain


@pytest.fixture(scope="session")
def brain(smoke_models):
    from prefetch.manifest import VLM_KEY
    from services.vita.brain import VlmBrain

    vram = VramOffloader(device="cpu", budget_bytes=2**30)
    return VlmBrain(smoke_models("vita") / VLM_KEY, vram=vram, name=VLM_KEY, device="cpu", dtype="float32",
                    estimate_bytes=10**6, max_new_tokens=16)


def test_brain_streams_a_reply_looking_at_frames(brain):
    from services.vita.brain import Turn

    frames = [Image.new("RGB", (640, 480), (200, 20, 20)), Image.new("RGB", (640, 480), (20, 200, 20))]
    pieces = list(brain.stream_text([Turn("hola", "buenas")], "¿Qué ves?", frames, "es", threading.Event()))
    assert len(pieces) > 1 and "".join(pieces).strip()
    prompt = brain.processor.apply_chat_template(brain.messages([Turn("hola", "buenas")], "¿Qué ves?", frames, "es"),
                                                 add_generation_prompt=True, tokenize=False)
    assert prompt.count("<|image_pad|>") == 2 and "español" in prompt and prompt.endswith("<|im_start|>assistant\n")
    assert brain.vram.snapshot()["models"][0]["in_use"] == 0


def test_a_cancelled_reply_stops_generating(brain):
    cancel = threading.Event()
    stream = brain.stream_text([], "Cuéntame una historia larga", [], "es", cancel)
    first = next(stream)
    cancel.set()
    rest = list(stream)
    assert first and len(rest) <= 1


def test_pinned_assistant_models_are_evicted_last_by_another_familys_job():
    vram = VramOffloader(device="cpu", budget_bytes=10 * 2**30, host_ram_budget_bytes=0)
    for name in ("vlm", "tts", "old-image"):
        vram.register(name, lambda device: object(), runtime=Runtime.ONNX, estimate_bytes=3 * 2**30)
    vram.register("sdxl", lambda device: object(), runtime=Runtime.ONNX, estimate_bytes=4 * 2**30)
    for name in ("old-image", "vlm", "tts"):
        with vram.acquire(name):
            pass
    vram.pin("vlm")
    vram.pin("tts")
    with vram.acquire("sdxl"):  # needs 4 GB: the idle unpinned image model goes, not the assistant's
        states = {m["name"]: m["state"] for m in vram.snapshot()["models"]}
    assert states["old-image"] == "unloaded" and states["vlm"] == "gpu" and states["tts"] == "gpu"
