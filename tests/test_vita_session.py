"""One realtime session (services/vita/session.py) driven packet by packet, with a clock the test moves
and stand-ins for the models: the VAD reads its probability off the audio (as in test_vita_vad.py),
the transcriber, brain and speaker are scripted. What a client receives is asserted event by event:
transcript, sentences, speech, barge-in, errors and their rate limit, camera frames, closing."""
import io
import json
import threading

import numpy as np
import pytest
import silero_vad  # noqa: F401  the VAD's own imports (torch), done once at collection, not per test
from PIL import Image

from services.errors import InvalidInput
from services.vita.brain import Turn
from services.vita.session import Session, VitaConfig
from services.vram import VramError
from tests.test_vita_vad import WINDOW, ProbabilityIsTheSignal, track

RATE = 16000
OUT_RATE = 24000
WAIT = 10  # seconds a test waits for a reply thread before failing (never slept)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Transcriber:
    def __init__(self, text="hola", probabilities=None, error=None):
        self.text, self.probabilities, self.error = text, probabilities, error
        self.calls = []
        self.detections = 0

    def transcribe(self, audio, language):
        self.calls.append((audio.size, language))
        if self.error is not None:
            raise self.error
        return self.text, None

    def language_probabilities(self, audio):
        self.detections += 1
        self.detected_on = audio.size
        return self.probabilities


class Brain:
    """Writes `sentences`; with `gate`, holds before the second one (and does not look at the cancel
    flag, as a model between two tokens)."""

    def __init__(self, sentences=("Hola.", "¿Qué tal?"), gate=None, order=None):
        self.sentences, self.gate = sentences, gate
        self.order = order if order is not None else []
        self.calls = []
        self.between = threading.Event()

    def stream_sentences(self, history, text, frames, language, cancel):
        self.calls.append({"history": list(history), "text": text, "frames": list(frames), "language": language})
        try:
            for i, sentence in enumerate(self.sentences):
                if self.gate is not None and i == 1:
                    self.between.set()
                    assert self.gate.wait(WAIT)
                elif cancel.is_set():
                    return
                yield sentence
        finally:
            self.order.append("brain closed")


class Speaker:
    """Speaks each sentence as `chunks` chunks of 0.1 s (the first empty if `first_empty`); `gate`,
    if given, holds it after the first chunk."""

    def __init__(self, rate=OUT_RATE, chunks=2, gate=None, first_empty=False, order=None):
        self.rate, self.chunks, self.gate, self.first_empty = rate, chunks, gate, first_empty
        self.order = order if order is not None else []
        self.calls = []
        self.closed = 0
        self.yielded = 0
        self.spoke_once = threading.Event()

    def synthesize(self, sentence, language, voice):
        self.calls.append((sentence, language, voice))
        try:
            for i in range(self.chunks):
                if i == 1 and self.gate is not None:
                    self.spoke_once.set()
                    assert self.gate.wait(WAIT)
                self.yielded += 1
                size = 0 if i == 0 and self.first_empty else int(0.1 * self.rate)
                yield np.full(size, 0.25, np.float32), self.rate
        finally:
            self.closed += 1
            self.order.append("speaker closed")


class Client:
    def __init__(self):
        self.events = []

    def __call__(self, event, data=None):
        self.events.append((event, data))

    def names(self):
        return [e for e, _ in self.events]

    def of(self, name):
        return [d for e, d in self.events if e == name]


def make(config=None, *, transcriber=None, brain=None, speaker=None, missing=None, emit=None):
    clock = Clock()
    client = Client()
    session = Session("sid-0123456789", config or VitaConfig(), vad_model=ProbabilityIsTheSignal(),
                      brain=brain or Brain(), transcriber=transcriber or Transcriber(), speaker=speaker or Speaker(),
                      emit=emit or client, missing=missing, clock=clock)
    return session, client, clock


def packet(samples: np.ndarray) -> str:
    pcm = np.clip(np.round(samples * 32768), -32768, 32767).astype("<i2")
    return json.dumps({"sample_rate": RATE, "audio": list(pcm.tobytes())})


def send(session, clock, samples, step=RATE // 2):
    """Real time: the clock moves by each packet's length before it is sent."""
    for i in range(0, samples.size, step):
        part = samples[i:i + step]
        clock.now += part.size / RATE
        session.feed_audio(packet(part))


def speech(seconds=1.28):
    """Speech for `seconds` then 640 ms of silence: one utterance (the VAD ends it after 500 ms)."""
    return track((0.9, round(seconds * RATE / WINDOW)), (0.1, 20))


def reply_done(session):
    assert session.last_reply is not None and session.last_reply.done.wait(WAIT)
    return session.last_reply


def test_an_utterance_gets_a_transcript_sentences_speech_and_the_end(tmp_path):
    brain, speaker, transcriber = Brain(), Speaker(), Transcriber("  ¿Cómo estás?  ")
    session, client, clock = make(VitaConfig(voice="ana"), brain=brain, speaker=speaker, transcriber=transcriber)
    send(session, clock, speech())
    reply = reply_done(session)
    assert client.names() == ["transcript", "response_text", "audio", "audio", "response_text", "audio", "audio",
                              "response_done"]
    assert client.of("transcript") == [{"text": "¿Cómo estás?", "language": "es", "language_probability": None,
                                        "switched": False}]
    assert client.of("response_text") == [{"text": "Hola."}, {"text": "¿Qué tal?"}]
    chunk = (np.full(2400, 0.25, np.float32) * 32767).astype("<i2").tobytes()
    assert client.of("audio") == [chunk] * 4  # 24 kHz Int16: sent as the speaker made it
    assert client.of("response_done") == [{"text": "Hola. ¿Qué tal?", "interrupted": False}]
    assert speaker.calls == [("Hola.", "es", "ana"), ("¿Qué tal?", "es", "ana")] and speaker.closed == 2
    # the utterance handed on is the speech itself (VAD padding aside), heard in the session's language
    assert transcriber.calls[0][1] == "es" and 1.2 * RATE < transcriber.calls[0][0] < 1.6 * RATE
    assert transcriber.detections == 0  # 1.4 s: too short to detect the language
    assert session.stats == {"packets": 4, "dropped": 0, "utterances": 1, "replies": 1, "interruptions": 0}
    assert reply.first_audio_s is not None and 0 < reply.first_audio_s < WAIT and not session.responding
    assert list(session.history) == [Turn("¿Cómo estás?", "Hola. ¿Qué tal?")]


def test_the_next_reply_sees_the_history_and_it_is_bounded():
    brain = Brain(sentences=("Sí.",))
    session, client, clock = make(VitaConfig(history_turns=2), brain=brain)
    for _ in range(3):
        send(session, clock, speech())
        reply_done(session)
    assert [len(c["history"]) for c in brain.calls] == [0, 1, 2] and session.stats["replies"] == 3
    assert brain.calls[1]["history"] == [Turn("hola", "Sí.")] and brain.calls[1]["text"] == "hola"
    assert len(session.history) == 2
    session.reset_state()
    assert list(session.history) == []
    assert make(VitaConfig(history_turns=-1))[0].history.maxlen == 0


def test_other_tts_rates_are_resampled_to_24khz_and_flushed():
    speaker = Speaker(rate=16000, chunks=5)
    session, client, clock = make(brain=Brain(sentences=("Uno.",)), speaker=speaker)
    send(session, clock, speech())
    reply_done(session)
    sent = b"".join(client.of("audio"))
    assert len(sent) // 2 == 12000  # 0.5 s at 16 kHz, all of it: the resampler's tail is flushed
    assert set(client.names()) == {"transcript", "response_text", "audio", "response_done"}
    assert client.names()[-1] == "response_done"


def test_a_long_utterance_in_another_confident_language_switches_the_session():
    transcriber = Transcriber("hello there", probabilities={"en": 0.9, "es": 0.05})
    brain = Brain(sentences=("Hi.",))
    session, client, clock = make(brain=brain, transcriber=transcriber)
    send(session, clock, speech(2.5))
    reply_done(session)
    assert transcriber.detections == 1 and transcriber.calls[0][1] == "en"
    assert transcriber.detected_on == transcriber.calls[0][0] > 2.5 * RATE  # detected on the utterance itself
    assert client.of("transcript")[0] == {"text": "hello there", "language": "en", "language_probability": 0.9,
                                          "switched": True}
    assert brain.calls[0]["language"] == "en" and session.language == "en"
    transcriber.probabilities = {"en": 0.5, "es": 0.45}  # not confident: the session keeps English
    send(session, clock, speech(2.5))
    reply_done(session)
    assert client.of("transcript")[1]["language"] == "en" and client.of("transcript")[1]["switched"] is False
    assert client.of("transcript")[1]["language_probability"] == 0.5


def test_nothing_recognised_is_no_reply():
    brain = Brain()
    session, client, clock = make(brain=brain, transcriber=Transcriber("   "))
    send(session, clock, speech())
    reply_done(session)
    assert client.events == [] and brain.calls == [] and session.stats["replies"] == 0
    session2, client2, clock2 = make(brain=brain, transcriber=Transcriber(None))
    send(session2, clock2, speech())
    reply_done(session2)
    assert client2.events == []


def test_silence_and_short_sounds_start_no_reply():
    session, client, clock = make()
    send(session, clock, track((0.1, 60), (0.9, 20), (0.1, 20)))  # 640 ms of sound: under the 1 s minimum
    assert session.last_reply is None and client.events == [] and session.stats["utterances"] == 0


def test_missing_services_are_named_in_the_error():
    brain = Brain()
    session, client, clock = make(brain=brain, missing=lambda: ["whisper: run prefetch", "tts: run prefetch"])
    send(session, clock, speech())
    reply_done(session)
    assert client.events == [("error", {"message": "the assistant cannot answer: whisper: run prefetch; "
                                                   "tts: run prefetch", "code": "service_unavailable", "param": None})]
    assert brain.calls == []


@pytest.mark.parametrize("error, message, code", [
    (InvalidInput("the audio is odd", code="odd"), "the audio is odd", "odd"),
    (InvalidInput("no code here"), "no code here", "reply_failed"),
    (VramError("no room on the GPU for whisper"), "no room on the GPU for whisper", "reply_failed"),
    (RuntimeError("secret internals"), "the assistant failed to answer; the server log has details", "reply_failed"),
])
def test_a_failed_reply_is_an_error_event_and_the_session_goes_on(error, message, code):
    transcriber = Transcriber(error=error)
    session, client, clock = make(transcriber=transcriber)
    send(session, clock, speech())
    reply_done(session)
    assert client.events == [("error", {"message": message, "code": code, "param": None})]
    transcriber.error = None
    send(session, clock, speech())
    reply_done(session)
    assert client.names()[-1] == "response_done"


def test_speaking_during_a_reply_stops_it_at_once():
    gate, order = threading.Event(), []
    speaker = Speaker(gate=gate, chunks=4, order=order)
    session, client, clock = make(speaker=speaker, brain=Brain(order=order))
    send(session, clock, speech())
    assert speaker.spoke_once.wait(WAIT)
    first = session.last_reply
    assert session.responding
    send(session, clock, track((0.9, 20)))  # the user starts speaking again
    assert first.cancelled.is_set() and not session.responding
    assert client.names() == ["transcript", "response_text", "audio", "stop_tts"]
    assert session.stats["interruptions"] == 1
    gate.set()
    assert first.done.wait(WAIT)
    assert client.names() == ["transcript", "response_text", "audio", "stop_tts"]  # nothing after the stop
    assert speaker.closed == 1 and len(speaker.calls) == 1  # the speech generator was closed, no next sentence
    assert speaker.yielded == 2  # its next chunk was refused and it was stopped there, not run to the end
    assert order == ["speaker closed", "brain closed"]  # the speech stops first, at once
    assert list(session.history) == [Turn("hola", "Hola.")]  # what was said before the barge-in


def test_a_new_utterance_replaces_the_reply_in_flight():
    gate = threading.Event()
    speaker = Speaker(gate=gate)
    session, client, clock = make(speaker=speaker)
    send(session, clock, speech())
    assert speaker.spoke_once.wait(WAIT)
    first = session.last_reply
    speaker.gate = None
    send(session, clock, speech())
    gate.set()
    second = reply_done(session)
    assert first.done.wait(WAIT) and first.cancelled.is_set() and second.number == first.number + 1
    assert client.names().count("stop_tts") == 1 and client.names().count("response_done") == 1
    assert session.stats["interruptions"] == 1 and session.stats["utterances"] == 2


def test_recording_restart_stops_speech_and_forgets_half_heard_speech():
    session, client, clock = make()
    send(session, clock, track((0.9, 30)))  # speech started, not ended
    assert session.segmenter.in_speech
    session.recording_changed()
    assert client.names() == ["stop_tts"]  # always told, even with no reply in flight
    assert not session.segmenter.in_speech
    send(session, clock, track((0.1, 30)))
    assert session.last_reply is None and session.stats["interruptions"] == 0


def test_interrupting_with_no_reply_in_flight_says_nothing():
    session, client, clock = make()
    assert session.interrupt("nothing to stop") is False and client.events == []
    send(session, clock, speech())
    reply_done(session)
    before = list(client.events)
    assert session.interrupt("too late") is False and client.events == before
    assert session.stats["interruptions"] == 0


def test_bad_packets_are_dropped_with_an_error_once_per_interval():
    config = VitaConfig(error_interval_s=1.0)
    session, client, clock = make(config)
    session.feed_audio("not json")
    session.feed_audio("not json")  # the same code within the interval: not repeated
    assert session.stats["dropped"] == 2 and session.stats["packets"] == 0
    assert client.of("error") == [{"message": "malformed audio packet: the audio packet is not valid JSON",
                                   "code": "malformed_audio", "param": "audio"}]
    session.feed_audio(json.dumps({"sample_rate": 8000, "audio": [0, 0]}))  # another code: sent
    assert [d["code"] for d in client.of("error")] == ["malformed_audio", "wrong_sample_rate"]
    clock.now += 0.999
    session.feed_audio("not json")
    assert len(client.of("error")) == 2
    clock.now += 0.001
    session.feed_audio("not json")
    assert len(client.of("error")) == 3
    session.report("no code, keyed by message")
    session.report("no code, keyed by message")
    session.report("another message")
    assert [d["message"] for d in client.of("error")[3:]] == ["no code, keyed by message", "another message"]
    assert client.of("error")[3] == {"message": "no code, keyed by message", "code": None, "param": None}


def test_audio_faster_than_real_time_is_throttled():
    session, client, clock = make(VitaConfig(audio_rate=2.5, audio_burst_s=1.0))
    quiet = np.zeros(RATE // 2, np.float32)
    for _ in range(2):  # 1 s at once: the whole burst
        session.feed_audio(packet(quiet))
    assert client.events == [] and session.stats["dropped"] == 0
    session.feed_audio(packet(quiet))
    session.feed_audio(packet(quiet))
    assert client.events == [("error", {"message": "audio arrives faster than real time; packets are being dropped "
                                                   "(limit 2.5x real time)", "code": "audio_throttled",
                                        "param": "audio"})]  # once: the repeat is within the error interval
    assert session.stats == {"packets": 4, "dropped": 2, "utterances": 0, "replies": 0, "interruptions": 0}
    clock.now += 0.2  # refills 0.5 s at 2.5x
    session.feed_audio(packet(quiet))
    assert session.stats["dropped"] == 2
    session.feed_audio(packet(quiet))
    assert session.stats["dropped"] == 3


def test_a_monologue_is_cut_at_the_configured_length():
    transcriber = Transcriber()
    session, client, clock = make(VitaConfig(max_utterance_s=1.5), transcriber=transcriber)
    send(session, clock, track((0.9, 60)))  # 1.9 s without a pause
    assert session.stats["utterances"] == 1  # answered without waiting for the end of speech
    reply_done(session)
    assert 1.4 * RATE < transcriber.calls[0][0] <= 1.6 * RATE


def test_each_barge_in_is_counted():
    speaker = Speaker()
    session, client, clock = make(speaker=speaker)
    for n in (1, 2):
        gate = threading.Event()
        speaker.gate = gate
        speaker.spoke_once.clear()
        send(session, clock, speech())
        assert speaker.spoke_once.wait(WAIT)
        send(session, clock, track((0.9, 10), (0.1, 20)))  # a short "hm": interrupts, too short to answer
        gate.set()
        reply_done(session)
        assert session.stats["interruptions"] == n
    assert client.names().count("stop_tts") == 2


def jpeg(color="red", size=(16, 12)):
    import base64

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def test_frames_seen_recently_go_with_the_reply():
    brain = Brain(sentences=("Veo.",))
    session, client, clock = make(VitaConfig(max_frames=3, frames_per_reply=2, frame_gap_s=1.0), brain=brain)
    for color in ("red", "green", "blue", "white"):
        session.feed_frame(jpeg(color))
        clock.now += 0.5
    assert len(session.frames) == 3
    clock.now -= 0.5
    colors = [img.getpixel((8, 6)) for img in session.current_frames()]
    assert len(colors) == 2 and colors[0][2] > 200 and min(colors[1]) > 200  # blue, then white
    clock.now += 1.0  # exactly the gap: still current
    assert len(session.current_frames()) == 2
    clock.now += 0.01  # the camera went quiet: nothing stale goes with a reply
    assert session.current_frames() == []
    send(session, clock, speech())
    reply_done(session)
    assert brain.calls[0]["frames"] == []


def test_a_frame_after_a_gap_starts_a_fresh_set():
    session, client, clock = make(VitaConfig(max_frames=4, frames_per_reply=4, frame_gap_s=1.0))
    session.feed_frame(jpeg("red"))
    clock.now += 1.0
    session.feed_frame(jpeg("green"))  # exactly the gap: same set
    assert len(session.frames) == 2
    clock.now += 1.01
    session.feed_frame(jpeg("blue"))
    assert len(session.frames) == 1 and session.current_frames()[0].getpixel((8, 6))[2] > 200


def test_frames_per_reply_zero_sends_none_and_max_frames_keeps_one():
    session, client, clock = make(VitaConfig(max_frames=0, frames_per_reply=0))
    session.feed_frame(jpeg("red"))
    session.feed_frame(jpeg("blue"))
    assert len(session.frames) == 1 and session.current_frames() == []


def test_a_bad_frame_is_an_error_and_kept_out():
    session, client, clock = make(VitaConfig(max_frame_bytes=100))
    session.feed_frame(jpeg("red", size=(64, 64)))
    session.feed_frame(12)
    assert [(d["code"], d["param"]) for d in client.of("error")] == [("frame_too_large", "video_frame"),
                                                                      ("malformed_frame", "video_frame")]
    assert client.of("error")[1]["message"] == "a video frame must be a JPEG data URL string"
    assert len(session.frames) == 0
    pixels = make(VitaConfig(max_frame_pixels=100))
    pixels[0].feed_frame(jpeg("red", size=(16, 12)))
    assert pixels[1].of("error")[0]["code"] == "image_too_large" and len(pixels[0].frames) == 0


def test_speech_start_and_frames_count_as_activity():
    session, client, clock = make()
    start = session.last_activity
    assert start == clock.now
    clock.now += 5
    send(session, clock, track((0.1, 10)))
    assert session.last_activity == start  # silence is not activity
    send(session, clock, track((0.9, 10)))
    assert session.last_activity == clock.now
    clock.now += 5
    session.touch()
    assert session.last_activity == clock.now
    clock.now += 5
    session.recording_changed()
    assert session.last_activity == clock.now
    clock.now += 5
    session.reset_state()
    assert session.last_activity == clock.now


def test_a_closed_session_takes_nothing_and_stops_its_reply():
    gate = threading.Event()
    speaker = Speaker(gate=gate)
    session, client, clock = make(speaker=speaker)
    send(session, clock, speech())
    assert speaker.spoke_once.wait(WAIT)
    reply = session.last_reply
    session.close()
    assert reply.cancelled.is_set() and session.closed
    gate.set()
    assert reply.done.wait(WAIT)
    assert "response_done" not in client.names()
    count = len(client.events)
    session.feed_audio("not json")
    session.feed_frame(12)
    assert len(client.events) == count and session.stats["dropped"] == 0
    make()[0].close()  # with no reply: nothing to cancel


def test_a_client_that_vanished_does_not_stop_the_session():
    def broken(event, data=None):
        raise ConnectionError("gone")

    session, client, clock = make(emit=broken)
    session.feed_audio("not json")  # its error cannot be sent: swallowed
    send(session, clock, speech())
    reply = reply_done(session)
    assert session.stats["replies"] == 1 and not reply.cancelled.is_set()


def test_an_emit_that_finds_the_client_gone_closes_the_session_without_hanging():
    """Engine.IO closes a connection past its ping deadline inside the emit, and the disconnect
    handler closes the session on that same thread, inside the session's own emit."""
    gate = threading.Event()
    speaker = Speaker(gate=gate)
    holder = {}

    def emit(event, data=None):
        if event == "stop_tts":
            holder["session"].close()

    session, client, clock = make(speaker=speaker, emit=emit)
    holder["session"] = session
    send(session, clock, speech())
    assert speaker.spoke_once.wait(WAIT)
    barge_in = threading.Thread(target=session.interrupt, args=("the user started speaking",), daemon=True)
    barge_in.start()
    barge_in.join(WAIT)
    assert not barge_in.is_alive(), "the barge-in hung on the session's own lock"
    assert session.closed and session.last_reply.cancelled.is_set()
    gate.set()


def test_speech_between_two_sentences_stops_the_reply_before_the_next():
    gate = threading.Event()
    brain = Brain(gate=gate)
    session, client, clock = make(brain=brain)
    send(session, clock, speech())
    assert brain.between.wait(WAIT)  # the first sentence is spoken, the second not yet written
    send(session, clock, track((0.9, 20)))
    gate.set()
    reply_done(session)
    assert client.names() == ["transcript", "response_text", "audio", "audio", "stop_tts"]
    assert list(session.history) == [Turn("hola", "Hola.")]  # what the user heard


def test_first_audio_is_timed_at_the_first_audible_chunk():
    gate = threading.Event()
    speaker = Speaker(gate=gate, first_empty=True)
    session, client, clock = make(speaker=speaker)
    send(session, clock, speech())
    assert speaker.spoke_once.wait(WAIT)  # an empty chunk went through
    assert session.last_reply.first_audio_s is None and "audio" not in client.names()
    gate.set()
    assert 0 < reply_done(session).first_audio_s < WAIT


def test_a_speaker_that_returns_a_list_is_spoken_too():
    class ListSpeaker(Speaker):
        def synthesize(self, sentence, language, voice):
            return [(np.full(2400, 0.25, np.float32), OUT_RATE)]

    session, client, clock = make(speaker=ListSpeaker(), brain=Brain(sentences=("Sí.",)))
    send(session, clock, speech())
    reply_done(session)
    assert client.names() == ["transcript", "response_text", "audio", "response_done"]


def test_a_reply_in_flight_never_keeps_the_server_from_exiting():
    gate = threading.Event()
    speaker = Speaker(gate=gate)
    session, client, clock = make(speaker=speaker)
    send(session, clock, speech())
    assert speaker.spoke_once.wait(WAIT)
    try:
        replies = [t for t in threading.enumerate() if t.name == "vita-reply-sid-0123"]
        assert len(replies) == 1 and replies[0].daemon
    finally:
        gate.set()
        reply_done(session)
