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
    with pytest.raises(ValueError):
        ours(np.zeros(256, np.float32), 16000)
    with pytest.raises(ValueError):
        ours(np.zeros(512, np.float32), 8000)
