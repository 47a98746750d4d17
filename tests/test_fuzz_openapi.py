"""Schemathesis fuzzes every operation of the smoke server's own /openapi.json: no request, however
odd, may get a 5xx. The one 503 allowed is "model not installed", and only when the request named
that model. Seeded (derandomized) and bounded, so the same cases run on every machine.

Run it alone: `HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_fuzz_openapi.py`;
`-s` also prints, per operation, how many generated requests passed validation (answers other
than 400) and how many were refused with 400.
"""
from __future__ import annotations

import collections
import os
import time

import numpy as np
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests import face_media
from tests.conftest import API_KEY

HEADERS = {"Authorization": f"Bearer {API_KEY}"}
# Video operations take seconds per case on 2 cores; their parsing is covered by the JSON/form corpus
# (test_malformed_requests.py) and their logic by test_face_video.py / test_whisper_video.py / test_animate.py.
SLOW_OPERATIONS = r"^/(face-swap/video|subtitle-video|animate|talking-head)$"
# Per operation; ENFOADS_FUZZ_EXAMPLES=200 for a deeper run by hand.
MAX_EXAMPLES = int(os.environ.get("ENFOADS_FUZZ_EXAMPLES", "15"))

# Per operation: how many requests ended in each class of answer (printed at the end of the module).
STATS: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
# Per operation: why requests the schema allows were refused (a 400 there means the document is wrong).
REFUSED: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
SECONDS: collections.Counter = collections.Counter()


def _wav(seconds: float, rate: int = 16000) -> bytes:
    from services.media import encode_audio

    t = np.arange(int(seconds * rate)) / rate
    return encode_audio((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate, "wav")


def _media_strategies() -> None:
    """Real files for the documented upload types (a 'face', a tone long enough to clone), mixed with junk,
    so that generated requests reach decoding and the models, not only the parsers."""
    junk = st.binary(min_size=1, max_size=64)
    images = st.sampled_from([face_media.png(faces=[(16, 16)]), face_media.png(128, 128),
                              face_media.encode(face_media.canvas(96, 64), "JPEG")]) | junk
    audio = st.sampled_from([_wav(6.0), _wav(1.0)]) | junk
    for media_type in ("image/png", "image/jpeg", "image/webp"):
        schemathesis.openapi.media_type(media_type, images)
    for media_type in ("audio/wav", "audio/mpeg", "video/mp4"):
        schemathesis.openapi.media_type(media_type, audio)


@pytest.fixture(scope="module")
def fuzz_server(smoke_models, tmp_path_factory):
    from backend.server import Server
    from backend.settings import load_settings

    models = smoke_models("image", "face", "whisper", "tts", "animate")
    settings = load_settings(
        profile="smoke", data_dir=tmp_path_factory.mktemp("fuzz") / "data", models_dir=models, api_key=API_KEY,
        device="cpu", port=0, job_wait_seconds=60, whisper_beam_size=1, whisper_max_seconds=60,
        image_max_width=128, image_max_height=128, image_default_width=64, image_default_height=64,
        image_max_n=2, tts_max_chars=60, tts_kyutai_max_seconds=1.0,
        restore_max_output_pixels=70_000)  # upscales of the small pictures run (x2 of 128x128); larger: 413 at once
    server = Server(settings).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def unavailable_models(fuzz_server) -> set[str]:
    data = requests.get(f"{fuzz_server.url}/v1/models", headers=HEADERS, timeout=10).json()["data"]
    return {m["id"] for m in data if not m["available"]}


@pytest.fixture(scope="module")
def api_schema(fuzz_server, request):
    _media_strategies()
    request.addfinalizer(_report)
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json", headers=HEADERS,
                                         timeout=10).exclude(path_regex=SLOW_OPERATIONS)


def _report():
    """Per operation, how many generated requests passed validation (any answer but 400); shown with -s."""
    from schemathesis.core.media_types import MEDIA_TYPE_STRATEGIES

    MEDIA_TYPE_STRATEGIES.clear()
    print("\nfuzzer, per operation: requests that passed validation (any answer but 400) / generated, "
          "for requests the schema allows (positive) and requests it does not (negative)")
    for label, counts in sorted(STATS.items()):
        line = []
        for mode in ("positive", "negative"):
            total = sum(n for (m, _), n in counts.items() if m == mode)
            passed = total - counts[mode, "400"]
            detail = ", ".join(f"{cls}: {n}" for (m, cls), n in sorted(counts.items()) if m == mode)
            line.append(f"{mode} {passed:2d}/{total:<2d} ({detail})")
        print(f"  {label:36s} {SECONDS[label]:5.1f} s  " + "  ".join(line))
        for message, n in REFUSED[label].most_common(3):
            print(f"      refused {n}x: {message}")


def _named_values(case) -> set[str]:
    """Every string the request set explicitly: body fields, query and path parameters."""
    values: set[str] = set()
    for part in (case.body, case.query, case.path_parameters):
        if isinstance(part, dict):
            values |= {str(v) for v in part.values() if isinstance(v, (str, int))}
    return values


def _curl(case) -> str:
    command = case.as_curl_command()
    return command if len(command) < 2000 else command[:2000] + "... (body cut)"


def _message(response) -> str:
    error = response.json()["error"]
    return error if isinstance(error, str) else error["message"]  # /kyutai/*: a plain-string contract


def _check(case, mode: str, unavailable_models: set[str]) -> None:
    response = case.call(headers=HEADERS, timeout=120)
    status = response.status_code
    STATS[case.operation.label][mode, str(status) if status in (400, 503) else f"{status // 100}xx"] += 1
    if status == 400 and mode == "positive":
        REFUSED[case.operation.label][_message(response)[:100]] += 1
    if status == 503:
        message = _message(response)
        named = {m for m in unavailable_models if m in message}
        # Requests name models by id or by alias: "large-v3-turbo" (whisper-large-v3-turbo), steps=8.
        asked = {m for m in named for v in _named_values(case) if m in (v, f"whisper-{v}") or m.endswith(f"-{v}step")}
        assert asked, f"503 for a model the request did not name: {message!r}\n{_curl(case)}"
        return
    try:
        case.validate_response(response, checks=[not_a_server_error])
    except AssertionError as exc:  # schemathesis' failure groups say what, the curl line says how
        raise AssertionError(f"{str(exc)[:3000]}\n{_curl(case)}") from None


def _fuzz(operation, unavailable_models: set[str]) -> None:
    cases = st.one_of(*(operation.as_strategy(mode).map(lambda case, mode=mode: (mode.value, case))
                        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)))

    # Seeded and without shrinking: the same cases everywhere, and a failure costs no extra minutes.
    @settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(generated=cases)
    def run(generated):
        mode, case = generated
        _check(case, mode, unavailable_models)

    run()


@pytest.mark.timeout(900)
def test_no_request_gets_a_server_error(api_schema, unavailable_models, subtests):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 20  # the whole document, less the video operations
    for operation in operations:
        with subtests.test(operation=operation.label):
            started = time.monotonic()
            try:
                _fuzz(operation, unavailable_models)
            finally:
                SECONDS[operation.label] += time.monotonic() - started
