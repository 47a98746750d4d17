"""The numpy stream state under the VAD (services/vita/vad.py `SileroStream`) hears exactly what the
silero-vad package's own wrapper hears: same probabilities window by window, on real speech."""
import copy

import numpy as np
import pytest
import torch

from tests.vita_helpers import silence, spanish_speech


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return spanish_speech(tmp_path_factory.mktemp("vad-stream"))


def test_stream_probabilities_match_the_package_wrapper(speech):
    from services.vita.vad import WINDOW, SileroStream, load_vad_model

    model = load_vad_model()
    package = copy.copy(model)
    package.reset_states()
    ours = SileroStream(model.session)
    audio = np.concatenate([silence(0.5), speech, silence(1.0), speech])
    theirs, mine = [], []
    for i in range(0, audio.size // WINDOW * WINDOW, WINDOW):
        window = torch.from_numpy(audio[i:i + WINDOW].copy())
        theirs.append(package(window, 16000).item())
        mine.append(ours(window, 16000).item())
        if i == 40 * WINDOW:  # a reset mid-stream starts both afresh
            package.reset_states()
            ours.reset_states()
    theirs, mine = np.array(theirs), np.array(mine)
    assert theirs.max() > 0.9 and theirs.min() < 0.1  # speech and silence both present
    np.testing.assert_allclose(mine, theirs, atol=1e-6)


def test_stream_refuses_windows_the_network_does_not_take():
    from services.vita.vad import SileroStream, load_vad_model

    ours = SileroStream(load_vad_model().session)
    with pytest.raises(ValueError, match="^Silero VAD takes 512-sample windows at 16000 Hz$"):
        ours(np.zeros(256, np.float32), 16000)
    with pytest.raises(ValueError, match="^Silero VAD takes 512-sample windows at 16000 Hz$"):
        ours(np.zeros(512, np.float32), 8000)


def test_stream_takes_a_window_of_any_float_type(speech):
    from services.vita.vad import WINDOW, SileroStream, load_vad_model

    session = load_vad_model().session
    as32, as64 = SileroStream(session), SileroStream(session)
    window = speech[WINDOW * 20:WINDOW * 21]
    p32 = as32(window.astype(np.float32), 16000).item()
    assert as64(window.astype(np.float64), 16000).item() == pytest.approx(p32, abs=1e-6)


def test_utterances_are_cut_where_the_package_iterator_cuts(speech):
    """The segmenter decides as silero-vad's own VADIterator (VITA's settings) over the package's
    wrapper: the same speech starts and ends, so each utterance is exactly those samples."""
    from silero_vad import VADIterator

    from services.vita.vad import END_SILENCE_MS, START_THRESHOLD, WINDOW, SpeechSegmenter, load_vad_model

    model = load_vad_model()
    package = copy.copy(model)
    package.reset_states()
    iterator = VADIterator(package, threshold=START_THRESHOLD, sampling_rate=16000,
                           min_silence_duration_ms=END_SILENCE_MS, speech_pad_ms=100)
    audio = np.concatenate([silence(0.7), speech, silence(0.8), speech[: speech.size // 3], silence(1.0), speech,
                            silence(0.7)])
    expected, start = [], None
    for i in range(0, audio.size // WINDOW * WINDOW, WINDOW):
        decision = iterator(torch.from_numpy(audio[i:i + WINDOW].copy()))
        if decision and "start" in decision:
            start = decision["start"]
        elif decision and "end" in decision:
            expected.append(audio[start:decision["end"]])
    assert len(expected) >= 3

    seg = SpeechSegmenter(model, min_utterance_s=0.0)
    got = []
    for i in range(0, audio.size, 128):  # VITA's packet size: windows straddle packets
        got += [e.audio for e in seg.push(audio[i:i + 128]) if e.kind == "utterance"]
    assert [g.size for g in got] == [e.size for e in expected]
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)
