"""Malformed bodies on every route that reads one: always a 400 in the error envelope, never a 500.

The routes come from the app's own OpenAPI document (built from the routes' declarations), so a
new JSON or form route is covered without touching this file.
"""
import pytest

from backend.app import create_app, shutdown_app
from tests.conftest import API_KEY

HEADERS = {"Authorization": f"Bearer {API_KEY}"}

JSON_CORPUS = {
    "deep_array": b"[" * 100_000 + b"]" * 100_000,
    "deep_object": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "huge_integer": b'{"n": ' + b"9" * 5000 + b"}",
    "nan": b'{"n": NaN}',
    "infinity": b'{"n": -Infinity}',
    "array_body": b"[]",
    "array_of_objects": b'[{"id": "x"}]',
    "string_body": b'"text"',
    "number_body": b"42",
    "not_utf8": b'{"a": "\xff\xfe"}',
    "truncated": b'{"a": ',
    "trailing_garbage": b'{"a": 1} x',
}

BOUNDARY = "fuzzboundary"
FORM_CORPUS = {
    "field_name_not_utf8": (f"multipart/form-data; boundary={BOUNDARY}",
                            b"--fuzzboundary\r\nContent-Disposition: form-data; name=\"\xff\xfe\"\r\n\r\nx\r\n"
                            b"--fuzzboundary--\r\n"),
    "file_name_not_utf8": (f"multipart/form-data; boundary={BOUNDARY}",
                           b"--fuzzboundary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"\xe9.wav\"\r\n"
                           b"Content-Type: audio/wav\r\n\r\nRIFF\r\n--fuzzboundary--\r\n"),
    "urlencoded_not_utf8": ("application/x-www-form-urlencoded", b"model=\xff\xfe&language=es"),
}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from backend.settings import load_settings

    settings = load_settings(profile="smoke", data_dir=tmp_path_factory.mktemp("malformed") / "data",
                             api_key=API_KEY, device="cpu", port=0, job_wait_seconds=5)
    app = create_app(settings)
    yield app
    shutdown_app(app)


def _documented_bodies() -> dict[str, list[tuple[str, str]]]:
    """{media type: [(method, path)]} for every operation the app's OpenAPI document gives a body."""
    import tempfile

    from backend.settings import load_settings

    with tempfile.TemporaryDirectory(prefix="enfoads-routes-") as data:
        app = create_app(load_settings(profile="smoke", data_dir=data, api_key=API_KEY, device="cpu", port=0))
        try:
            doc = app.test_client().get("/openapi.json", headers=HEADERS).get_json()
        finally:
            shutdown_app(app)
    ops: dict[str, list[tuple[str, str]]] = {}
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            for media_type in op.get("requestBody", {}).get("content", {}):
                ops.setdefault(media_type, []).append((method.upper(), path.replace("{", "").replace("}", "")))
    return ops


BODIES = _documented_bodies()
JSON_ROUTES = sorted(BODIES.get("application/json", []))
FORM_ROUTES = sorted(BODIES.get("multipart/form-data", []))


def _assert_400_envelope(r, code: str):
    assert r.status_code == 400, r.get_data(as_text=True)[:300]
    body = r.get_json()
    if isinstance(body["error"], str):  # /kyutai/*: the standalone Kyutai server's contract
        assert body["fallback"] is True and body["error"].startswith("malformed") or "must be an object" in body["error"]
        return
    err = body["error"]
    assert err["type"] == "invalid_request_error" and err["code"] == code and err["param"] == "body"
    assert "Traceback" not in err["message"]


def test_the_corpus_reaches_every_json_and_form_route():
    # The document must keep listing the body routes, or the corpus below would test nothing.
    assert {"/generate-image", "/v1/images/generations", "/magic-prompt", "/faces/detect", "/face-swap",
            "/face-swap/video", "/transcribe", "/subtitle-video", "/tts", "/v1/audio/speech",
            "/v1/audio/voices", "/v1/voices"} <= {path for _, path in JSON_ROUTES}
    assert {"/v1/audio/transcriptions", "/v1/audio/translations", "/transcribe", "/faces/detect",
            "/v1/audio/voices"} <= {path for _, path in FORM_ROUTES}


@pytest.mark.parametrize("payload", sorted(JSON_CORPUS))
@pytest.mark.parametrize("method,path", JSON_ROUTES)
def test_malformed_json_is_400(app, method, path, payload):
    r = app.test_client().open(path, method=method, data=JSON_CORPUS[payload],
                               headers={**HEADERS, "Content-Type": "application/json"})
    _assert_400_envelope(r, "invalid_json")


@pytest.mark.parametrize("payload", sorted(FORM_CORPUS))
@pytest.mark.parametrize("method,path", FORM_ROUTES)
def test_undecodable_form_is_400(app, method, path, payload):
    content_type, body = FORM_CORPUS[payload]
    r = app.test_client().open(path, method=method, data=body, headers={**HEADERS, "Content-Type": content_type})
    if payload == "file_name_not_utf8":
        # A file name is only a hint (uploads are stored under random names): a Latin-1 name must not break
        # the request; whatever the route says next about the (tiny, unreadable) file is a client error.
        assert 400 <= r.status_code < 500 and "error" in r.get_json()
        return
    _assert_400_envelope(r, "invalid_form")
