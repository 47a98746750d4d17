"""VITA realtime assistant over Socket.IO: real Silero VAD on espeak-ng Spanish speech, the real
Qwen2-VL code on a tiny random-weight model, and test doubles for whisper and TTS."""
import base64
import io
import json
import threading

import numpy as np
import pytest
import requests
import socketio
from PIL import Image

from tests.conftest import API_KEY
from tests.vita_helpers import ToneSpeaker, VitaClient, packets, silence

FAST = 8.0  # x real time: the VAD does not care how fast packets come, the throttle is opened up


def utterance(speech, lead=0.3, tail=1.0):
    return np.concatenate([silence(lead), speech, silence(tail)])


def jpeg_data_url(size=(64, 48), fmt="JPEG", mime="image/jpeg") -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (30, 120, 200)).save(buf, format=fmt)
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode()


# ---------------------------------------------------------------------------------------- replies


def test_spanish_speech_in_real_time_gives_one_utterance_and_a_spoken_reply(vita, speech):
    server, manager, transcriber, speaker = vita()
    c = vita.client(server)
    c.emit("recording-started")
    c.emit("video_frame", jpeg_data_url())
    c.send_audio(utterance(speech), speed=1.0)  # 125 packets/s, as VITA's page sends
    c.wait_event("response_done", timeout=60)
    c.send_audio(silence(1.0), speed=FAST)

    assert len(c.of("transcript")) == 1, c.summary()
    assert transcriber.calls and len(transcriber.calls) == 1
    # the whole phrase, not the silence around it: VAD cut it within a window or two
    assert len(speech) / 16000 - 0.6 < transcriber.calls[0] < len(speech) / 16000 + 0.7
    assert c.of("transcript")[0] == {"text": "¿Qué ves en la cámara?", "language": "es", "language_probability": 1.0,
                                     "switched": False}
    sentences = [d["text"] for d in c.of("response_text")]
    assert sentences and all(s.strip() for s in sentences)
    assert speaker.sentences == sentences  # each sentence spoken as it came
    pcm = b"".join(c.of("audio"))
    assert len(pcm) % 2 == 0
    # 0.25 s of tone per sentence at 22.05 kHz -> Int16 at 24 kHz
    assert abs(len(pcm) // 2 - len(sentences) * 6000) <= 64 * len(sentences)
    names = c.names()
    assert names.index("transcript") < names.index("response_text") < names.index("audio") < \
        names.index("response_done")
    done = c.of("response_done")[0]
    assert done["interrupted"] is False and done["text"] == " ".join(sentences)
    assert not c.of("error")


def test_silence_and_subsecond_noise_trigger_nothing(vita, speech):
    server, manager, transcriber, speaker = vita()
    c = vita.client(server)
    rng = np.random.default_rng(0)
    noise = (0.3 * rng.standard_normal(int(0.4 * 16000))).astype(np.float32)
    short_word = speech[: int(0.5 * 16000)]  # half a second of real speech: under VITA's 1 s minimum
    audio = np.concatenate([silence(2.0), noise, silence(1.0), short_word, silence(1.0)])
    c.send_audio(audio, speed=FAST)
    session = manager.get(c.sid)
    c.wait(lambda: session.stats["packets"] >= len(audio) // 128)
    assert transcriber.calls == []
    assert not {"transcript", "response_text", "audio", "stop_tts"} & set(c.names())
    assert session.stats["utterances"] == 0


def test_speaking_during_a_reply_stops_it(vita, speech):
    slow = ToneSpeaker(seconds=2.0, chunks=20, delay=0.1)  # 2 s of speech per sentence, slowly made
    server, manager, transcriber, speaker = vita(speaker=slow)
    c = vita.client(server)
    c.send_audio(utterance(speech), speed=FAST)
    c.wait_event("audio")
    c.send_audio(utterance(speech), speed=FAST)
    c.wait_event("transcript", count=2)
    c.wait_event("response_done")
    names = c.names()
    stop = names.index("stop_tts")
    second = [i for i, n in enumerate(names) if n == "transcript"][1]
    assert stop < second
    # nothing of the old reply's speech after stop_tts
    assert "audio" not in names[stop:second]
    assert manager.get(c.sid).stats["interruptions"] == 1
    # the first reply never finished: one response_done, the second reply's
    assert names.count("response_done") == 1 and names.index("response_done") > second


def test_recording_restart_stops_speech(vita, speech):
    slow = ToneSpeaker(seconds=2.0, chunks=20, delay=0.1)
    server, manager, transcriber, speaker = vita(speaker=slow)
    c = vita.client(server)
    c.send_audio(utterance(speech), speed=FAST)
    c.wait_event("audio")
    c.emit("recording-stopped")
    c.wait_event("stop_tts")
    n = len(c.of("audio"))
    pieces = slow.pieces_out
    reply = manager.get(c.sid).last_reply
    c.wait(lambda: reply.done.is_set(), timeout=5)
    # the TTS stopped too (one piece may have been under way), and nothing more reached the client
    assert slow.pieces_out <= pieces + 1 < 20
    assert len(c.of("audio")) == n


def test_two_sessions_keep_separate_histories(vita, speech):
    server, manager, transcriber, speaker = vita()
    a, b = vita.client(server), vita.client(server)
    a.send_audio(utterance(speech), speed=FAST)
    a.wait_event("response_done")
    a.send_audio(utterance(speech), speed=FAST)
    a.wait_event("response_done", count=2)
    b.send_audio(utterance(speech), speed=FAST)
    b.wait_event("response_done")
    sa, sb = manager.get(a.sid), manager.get(b.sid)
    assert len(sa.history) == 2 and len(sb.history) == 1
    assert sb.history[0].assistant == b.of("response_done")[0]["text"]
    assert not b.of("transcript")[1:] and len(a.of("transcript")) == 2
    a.emit("reset_state")
    a.wait(lambda: len(sa.history) == 0, timeout=5)
    assert len(sb.history) == 1


def test_third_session_gets_too_many_users(vita):
    server, manager, *_ = vita(vita_max_sessions=2)
    a, b = vita.client(server), vita.client(server)
    c = vita.client(server)
    c.wait_event("too_many_users", timeout=10)
    c.wait(lambda: not c.sio.connected, timeout=10)
    assert manager.count() == 2
    a.close()
    a.wait(lambda: manager.count() == 1, timeout=5)
    d = vita.client(server)
    assert manager.get(d.sid) is not None and not d.of("too_many_users")


def test_idle_session_times_out_with_out_time_and_releases_its_pins(vita):
    server, manager, *_ = vita(vita_session_timeout_s=0.5)
    c = vita.client(server)
    c.wait_event("out_time", timeout=10)
    c.wait(lambda: not c.sio.connected, timeout=10)
    assert manager.count() == 0
    assert all(m["pinned"] == 0 for m in server.app.extensions["enfoads"].vram.snapshot()["models"])


def test_models_are_pinned_while_a_session_is_open(vita):
    server, manager, *_ = vita()
    vram = server.app.extensions["enfoads"].vram

    def pins():
        return {m["name"]: m["pinned"] for m in vram.snapshot()["models"]}

    a, b = vita.client(server), vita.client(server)
    assert pins()["silero-vad"] == 2 and pins()["qwen2-vl-2b-instruct"] == 2
    a.close()
    a.wait(lambda: pins()["silero-vad"] == 1, timeout=5)
    b.close()
    b.wait(lambda: all(v == 0 for v in pins().values()), timeout=5)


# ------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("event,payload,code", [
    ("audio", "{not json", "malformed_audio"),
    ("audio", json.dumps({"audio": [0, 0]}), "malformed_audio"),
    ("audio", json.dumps({"sample_rate": 16000, "audio": [0, 300]}), "malformed_audio"),
    ("audio", json.dumps({"sample_rate": 44100, "audio": [0, 0] * 128}), "wrong_sample_rate"),
    ("audio", json.dumps({"sample_rate": 16000, "audio": [0] * 255}), "odd_byte_count"),
    ("video_frame", jpeg_data_url(fmt="PNG", mime="image/png"), "not_jpeg"),
    ("video_frame", jpeg_data_url(fmt="PNG"), "not_jpeg"),  # PNG bytes labelled as JPEG
    ("video_frame", "data:image/jpeg;base64,!!!notbase64", "malformed_frame"),
    ("video_frame", "data:image/jpeg;base64," + "A" * 4_000_000, "frame_too_large"),
    ("video_frame", jpeg_data_url(size=(5000, 4000)), "image_too_large"),
])
def test_bad_packets_are_dropped_with_an_error_and_the_session_goes_on(vita, event, payload, code):
    server, manager, *_ = vita(vita_max_frame_mb=2.0)
    c = vita.client(server)
    c.emit(event, payload)
    err = c.wait_event("error") and c.of("error")[0]
    assert err["code"] == code and err["message"]
    assert c.sio.connected
    session = manager.get(c.sid)
    c.emit("video_frame", jpeg_data_url())
    c.wait(lambda: len(session.frames) == 1, timeout=5)
    c.send_audio(silence(0.1), speed=float("inf"))
    c.wait(lambda: session.stats["packets"] >= 12, timeout=5)
    assert len(c.of("error")) == 1


def test_after_bad_packets_speech_still_gets_an_answer(vita, speech):
    server, manager, *_ = vita()
    c = vita.client(server)
    c.emit("audio", "{")
    c.emit("audio", json.dumps({"sample_rate": 8000, "audio": [1, 2]}))
    c.emit("video_frame", "data:image/gif;base64,R0lGOD")
    c.send_audio(utterance(speech), speed=FAST)
    c.wait_event("response_done")
    assert {e["code"] for e in c.of("error")} == {"malformed_audio", "wrong_sample_rate", "not_jpeg"}
    assert len(c.of("transcript")) == 1


def test_a_wrong_token_is_refused_and_opens_nothing(vita):
    server, manager, *_ = vita()
    with pytest.raises(socketio.exceptions.ConnectionError):
        VitaClient(server.url, token="wrong", transports=("polling",))
    with pytest.raises(socketio.exceptions.ConnectionError):
        VitaClient(server.url, token="", transports=("polling",))
    assert manager.count() == 0


def test_events_before_auth_are_refused(vita, speech):
    import engineio

    server, manager, transcriber, _ = vita()
    # Raw Socket.IO packets on one Engine.IO connection: VITA's events for /vita with no CONNECT
    # to it, then a CONNECT with a wrong token followed by more events.
    eio = engineio.Client()
    received = []
    refusals = threading.Semaphore(0)

    def on_message(message):
        received.append(message)
        if message.startswith("4/vita"):  # CONNECT_ERROR
            refusals.release()

    eio.on("message", on_message)
    eio.connect(server.url, transports=["polling"], engineio_path="socket.io")
    try:
        pkts = list(packets(utterance(speech)))[:100]
        for pkt in pkts:
            eio.send("2/vita," + json.dumps(["audio", pkt]))
        eio.send("0/vita," + json.dumps({"token": "wrong"}))  # Socket.IO CONNECT
        for pkt in pkts:
            eio.send("2/vita," + json.dumps(["audio", pkt]))
        eio.send("2/vita," + json.dumps(["reset_state"]))
        # A connection's packets are handled in order: the answer to this last CONNECT comes after
        # whatever the packets before it caused, so nothing can still be on its way.
        eio.send("0/vita," + json.dumps({"token": "wrong again"}))
        assert refusals.acquire(timeout=20) and refusals.acquire(timeout=20), received
    finally:
        eio.disconnect(abort=True)
    assert [m for m in received if m.startswith("4/vita")] == [m for m in received if "API key" in m], received
    assert not any(m.startswith("2/vita") for m in received)  # no event ever came back
    assert manager.count() == 0 and transcriber.calls == []


class StoppedClock:
    """The session's throttle clock, moved only by the test: how much audio gets through then depends
    on what was sent and on the clock, not on how fast a busy machine delivers packets."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_audio_faster_than_real_time_is_throttled(vita):
    from services.vita.throttle import AudioBudget

    server, manager, *_ = vita(vita_audio_rate_limit=1.5, vita_audio_burst_s=1.0)
    c = vita.client(server)
    session = manager.get(c.sid)
    clock = StoppedClock()
    session.budget = AudioBudget(rate=1.5, burst=1.0, clock=clock)
    packet_s = 128 / 16000

    def accepted():
        return (session.stats["packets"] - session.stats["dropped"]) * packet_s

    def send(seconds):
        """Send `seconds` of audio at once; the audio seconds that got through."""
        before, total = accepted(), session.stats["packets"] + seconds * 125
        c.send_audio(np.tile(silence(1.0), seconds), speed=float("inf"))
        c.wait(lambda: session.stats["packets"] >= total, timeout=30)
        return accepted() - before

    # 4 s of audio in no time: only the 1 s burst gets through
    assert 1.0 - packet_s <= send(4) <= 1.0
    errors = [e for e in c.of("error") if e["code"] == "audio_throttled"]
    assert errors and "1.5x real time" in errors[0]["message"]
    # half a second later, 0.75 s more gets through (1.5x real time) ...
    clock.now += 0.5
    assert abs(send(4) - 0.75) <= packet_s  # give or take the part-packet left from before
    # ... and after two seconds no more than the burst
    clock.now += 2.0
    assert 1.0 - packet_s <= send(4) <= 1.0
    # what is kept is bounded whatever was sent
    assert session.segmenter._pending.size < 512


# ------------------------------------------------------------------------------ missing services


def test_without_whisper_and_tts_a_reply_reports_what_is_missing(vita, speech):
    server, manager, *_ = vita(wire=False)
    c = vita.client(server)
    c.send_audio(utterance(speech), speed=FAST)
    err = c.wait_event("error") and c.of("error")[0]
    assert err["code"] == "service_unavailable"
    assert "whisper" in err["message"] and "TTS" in err["message"]
    assert not c.of("audio")


def test_without_the_vlm_the_error_names_the_prefetch_command(vita, speech, tmp_path):
    server, manager, *_ = vita(models_dir=tmp_path / "empty")
    c = vita.client(server)
    c.send_audio(utterance(speech), speed=FAST)
    err = c.wait_event("error") and c.of("error")[0]
    assert err["code"] == "service_unavailable" and "python -m prefetch" in err["message"]
    models = requests.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}).json()
    assert {"id": "qwen2-vl-2b-instruct", "available": False}.items() <= \
        next(m for m in models["data"] if m["family"] == "vita").items()


# ---------------------------------------------------------------------------------------- the page


def test_page_and_client_library_are_served_without_the_key(vita):
    server, *_ = vita()
    page = requests.get(f"{server.url}/vita?token=abc", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "vita/static/socket.io.min.js" in page.text and "AudioWorklet" in page.text
    lib = requests.get(f"{server.url}/vita/static/socket.io.min.js", timeout=10)
    assert lib.status_code == 200 and "Socket.IO" in lib.text[:200]
    assert requests.get(f"{server.url}/vita/static/nothing.js", timeout=10).status_code == 404


def test_polling_transport_works_too(vita, speech):
    server, *_ = vita()
    c = vita.client(server, transports=("polling",))
    c.send_audio(utterance(speech), speed=FAST)
    c.wait_event("response_done")
    assert c.of("audio")


def test_only_the_page_and_its_script_skip_the_key(vita):
    server, *_ = vita()
    app = server.app
    public = {r.rule for r in app.url_map.iter_rules() if getattr(app.view_functions[r.endpoint], "public", False)}
    assert {r for r in public if "vita" in r} == {"/vita", "/vita/static/<path:name>"}
