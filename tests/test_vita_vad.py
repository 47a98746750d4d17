"""VITA's VAD thresholds pinned on synthetic probabilities: speech starts at p >= 0.7, ends after
500 ms below 0.55, utterances under 1 s are dropped (services/vita/vad.py).

The stand-in model reads the probability off the audio itself: each 512-sample window is filled
with the value the model should answer for it, so a test writes its probability track as audio and
gets the same samples back in the utterance.
"""
import numpy as np

from services.vita.vad import END_THRESHOLD, WINDOW, SileroStream, SpeechSegmenter

MS_PER_WINDOW = WINDOW / 16  # 32 ms at 16 kHz


class ProbabilityIsTheSignal:
    """Stands in for Silero's ONNX session (`SpeechSegmenter` runs it through `SileroStream`): the
    probability it answers for a window is the window's first sample."""

    def __init__(self):
        self.session = self

    def run(self, outputs, feeds):
        window, context = feeds["input"], SileroStream.CONTEXT
        # what Silero's ONNX takes: float32, 64 samples of context + one 512-sample window, 16 kHz
        assert window.dtype == np.float32 and window.shape == (1, context + WINDOW) and int(feeds["sr"]) == 16000
        return np.array([[window[0, context]]], np.float32), feeds["state"]


def track(*parts: tuple[float, int]) -> np.ndarray:
    """(probability, number of 32-ms windows) pairs as 16 kHz samples."""
    return np.concatenate([np.full(n * WINDOW, p, np.float32) for p, n in parts])


def kinds(events):
    return [e.kind for e in events]


def segmenter(**kw):
    return SpeechSegmenter(ProbabilityIsTheSignal(), **kw)


def test_speech_starts_at_0_7_not_below():
    # probabilities are float32 (as the real model's): 0.7 itself is 0.69999999, so step around it
    seg = segmenter()
    assert seg.push(track((0.1, 10), (0.699, 100), (0.6, 50), (0.5, 50))) == []
    assert not seg.in_speech
    assert kinds(seg.push(track((0.701, 1)))) == ["start"] and seg.in_speech


class ExactProbability(ProbabilityIsTheSignal):
    """Answers the window's first sample rounded to 4 decimals as a float64 (0.7 is exactly 0.7),
    and 0.55 as the end threshold itself (0.7 - 0.15 in floating point, as VADIterator has it)."""

    def run(self, outputs, feeds):
        out, state = super().run(outputs, feeds)
        p = round(float(out[0, 0]), 4)
        return np.array([[END_THRESHOLD if p == 0.55 else p]]), state


def test_a_probability_of_exactly_a_threshold_starts_speech_and_does_not_end_it():
    seg = SpeechSegmenter(ExactProbability())
    assert kinds(seg.push(track((0.1, 10), (0.7, 1)))) == ["start"]
    assert seg.push(track((0.55, 100))) == [] and seg.in_speech  # 3.2 s at the end threshold: not below it
    assert kinds(seg.push(track((0.5499, 17)))) == ["utterance"]


def test_speech_goes_on_above_0_55_and_ends_below_it():
    seg = segmenter()
    assert kinds(seg.push(track((0.9, 40)))) == ["start"]
    assert seg.push(track((0.56, 100), (0.55, 100))) == []  # 6.4 s at 0.55..0.56: still speaking
    assert seg.in_speech
    events = seg.push(track((0.54, 20)))
    assert kinds(events) == ["utterance"] and not seg.in_speech


def test_speech_ends_after_500_ms_below_the_end_threshold():
    seg = segmenter()
    seg.push(track((0.9, 40)))
    # the silence clock starts at the first quiet window: 16 more windows (512 ms) reach 500 ms
    assert seg.push(track((0.1, 16))) == [] and seg.in_speech
    assert kinds(seg.push(track((0.1, 1)))) == ["utterance"]


def test_a_window_back_above_0_7_restarts_the_silence_clock():
    seg = segmenter()
    seg.push(track((0.9, 40)))
    assert seg.push(track((0.1, 15), (0.701, 1), (0.1, 16))) == [] and seg.in_speech
    assert kinds(seg.push(track((0.1, 1)))) == ["utterance"]


def test_utterances_under_one_second_are_dropped():
    # an utterance is the speech plus 100 ms of padding each side: 24 windows + 0.2 s = 0.968 s
    seg = segmenter()
    events = seg.push(track((0.1, 10), (0.9, 24), (0.1, 17)))
    assert kinds(events) == ["start", "dropped"]
    assert abs(events[1].seconds - (24 * WINDOW + 3200) / 16000) < 1e-9 and events[1].audio is None
    events = seg.push(track((0.1, 10), (0.9, 25), (0.1, 17)))  # 25 windows + 0.2 s = exactly 1 s
    assert kinds(events) == ["start", "utterance"] and events[1].seconds == 1.0


def test_the_utterance_is_the_speech_with_its_padding():
    seg = segmenter()
    events = seg.push(track((0.1, 10), (0.9, 50), (0.1, 17)))
    audio = events[-1].audio
    assert audio.dtype == np.float32 and audio.size == 50 * WINDOW + 3200
    assert np.all(audio[:1600] == np.float32(0.1)) and np.all(audio[-1600:] == np.float32(0.1))
    assert np.all(audio[1600:-1600] == np.float32(0.9))


def test_packets_of_any_size_give_the_same_events():
    samples = track((0.1, 10), (0.9, 50), (0.1, 17))
    whole = segmenter().push(samples)
    seg = segmenter()
    pieces = []
    for i in range(0, samples.size, 128):  # VITA's page sends 128-sample blocks
        pieces += seg.push(samples[i:i + 128])
    assert kinds(pieces) == kinds(whole) == ["start", "utterance"]
    assert np.array_equal(pieces[-1].audio, whole[-1].audio)


def test_reset_forgets_speech_in_progress():
    seg = segmenter()
    seg.push(track((0.9, 40)))
    seg.reset()
    assert not seg.in_speech
    assert seg.push(track((0.1, 40))) == []


def test_a_long_monologue_is_cut_at_the_limit_and_goes_on():
    seg = segmenter(max_utterance_s=1.5)
    events = seg.push(track((0.1, 10), (0.9, 60)))
    # speech starts 100 ms (padding) before the first loud window, at sample 3520; the cut comes at
    # the first window end 1.5 s (24000 samples) later, 27648: 24128 samples
    assert kinds(events) == ["start", "utterance", "start"]
    assert events[1].audio.size == 24128 and events[1].seconds == 24128 / 16000
    assert seg.in_speech  # the speech that goes on is a new utterance


def test_padding_and_minimum_length_are_settings():
    events = segmenter(pad_ms=300).push(track((0.1, 20), (0.9, 40), (0.1, 17)))
    assert kinds(events) == ["start", "utterance"] and events[1].audio.size == 40 * WINDOW + 2 * 4800
    events = segmenter(min_utterance_s=0.5).push(track((0.1, 10), (0.9, 10), (0.1, 17)))
    assert kinds(events) == ["start", "utterance"] and events[1].seconds == (10 * WINDOW + 3200) / 16000


def test_speech_from_the_first_sample_keeps_its_first_sample():
    events = segmenter().push(track((0.9, 40), (0.1, 17)))
    assert kinds(events) == ["start", "utterance"] and events[1].audio.size == 40 * WINDOW + 1600
    assert events[1].audio[0] == np.float32(0.9)


def test_back_to_back_utterances_each_keep_their_padding():
    events = segmenter().push(track((0.1, 10), (0.9, 40), (0.1, 17), (0.9, 40), (0.1, 17)))
    assert kinds(events) == ["start", "utterance", "start", "utterance"]
    for e in (events[1], events[3]):
        assert e.audio.size == 40 * WINDOW + 3200 and np.all(e.audio[:1600] == np.float32(0.1))


def test_memory_before_speech_is_the_preroll_only():
    seg = segmenter()
    seg.push(track((0.1, 500)))
    assert len(seg._windows) == 6  # 100 ms of padding in 512-sample windows, plus two
    seg.push(track((0.9, 40), (0.1, 500)))
    assert len(seg._windows) <= 6
    seg.reset()
    seg.push(track((0.1, 500)))
    assert len(seg._windows) <= 6 and seg._pending.size == 0


def test_default_monologue_limit_is_twenty_seconds():
    events = segmenter().push(track((0.9, 700)))
    assert kinds(events)[:2] == ["start", "utterance"] and events[1].audio.size == 20 * 16000


def test_reset_forgets_a_part_window():
    seg = segmenter()
    seg.push(np.full(100, 0.1, np.float32))
    seg.reset()
    assert kinds(seg.push(track((0.9, 1)))) == ["start"]  # judged on its own samples only


def test_float64_samples_reach_the_model_as_float32():
    events = segmenter().push(track((0.1, 10), (0.9, 40), (0.1, 17)).astype(np.float64))
    assert kinds(events) == ["start", "utterance"] and events[1].audio.dtype == np.float32
