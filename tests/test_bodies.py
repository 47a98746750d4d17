"""Request bodies over real sockets: chunked bodies past the limit, slow bodies, too many form parts,
concurrent large uploads. Each refusal is an error envelope, and a refused body closes the connection."""
import json
import select
import socket
import time

import requests

from tests.conftest import API_KEY

HEADERS = f"Authorization: Bearer {API_KEY}\r\nHost: test\r\n"


def _connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return sock


def _read_response(sock: socket.socket) -> tuple[int, dict, dict, bool]:
    """(status, headers, JSON body, closed after it) of the one response on `sock`."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed without a response: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers["content-length"])
    while len(rest) < length:
        rest += sock.recv(65536)
    body = json.loads(rest[:length])
    try:
        closed = sock.recv(1) == b""
    except (ConnectionResetError, socket.timeout):
        closed = True
    return status, headers, body, closed


def _send_quietly(sock: socket.socket, data: bytes) -> bool:
    try:
        sock.sendall(data)
        return True
    except (BrokenPipeError, ConnectionResetError):
        return False  # the server answered and closed: what the test reads next


def test_chunked_body_past_the_limit_is_413_at_once_and_closes(live_server, make_settings):
    import threading

    server = live_server(make_settings(max_upload_mb=0.05))  # 52 KB
    sock = _connect(server)
    sock.sendall(f"POST /transcribe HTTP/1.1\r\n{HEADERS}Content-Type: application/json\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n".encode())
    got = []
    reader = threading.Thread(target=lambda: got.append(_read_response(sock)))
    reader.start()
    piece = b'{"file": "' + b"A" * 65536
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    sent = 0
    while sent < 64 * 1024**2 and _send_quietly(sock, chunk):  # a client that never stops
        sent += len(chunk)
    reader.join(30)
    status, headers, body, closed = got[0]
    assert status == 413
    assert body["error"]["code"] == "body_too_large" and "0.05 MB" in body["error"]["message"]
    assert headers["connection"].lower() == "close" and closed
    assert sent < 64 * 1024**2  # the server stopped reading: it did not drain the rest


def test_chunked_body_within_the_limit_is_read(live_server, make_settings):
    server = live_server(make_settings(max_upload_mb=0.05))

    def chunks():
        yield b'{"response_format": '
        yield b'"json", "file": ""}'

    r = requests.post(f"{server.url}/transcribe", data=chunks(), timeout=10,
                      headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    # read whole and parsed: the empty file is what is wrong with it
    assert r.status_code == 400 and r.json()["error"]["code"] == "empty_file"


def test_a_stalled_body_is_408_and_closes(live_server, make_settings):
    server = live_server(make_settings(body_timeout_seconds=0.5))
    sock = _connect(server)
    sock.sendall(f"POST /transcribe HTTP/1.1\r\n{HEADERS}Content-Type: application/json\r\n"
                 "Content-Length: 1000\r\n\r\n{".encode())
    status, headers, body, closed = _read_response(sock)
    assert status == 408 and body["error"]["code"] == "body_timeout"
    assert headers["connection"].lower() == "close" and closed


def test_a_trickled_body_is_408_once_its_rate_stays_too_low(live_server, make_settings):
    # no pause is long enough to time out: only the average rate gives it away
    server = live_server(make_settings(body_timeout_seconds=0.5, body_min_kb_per_second=1))
    sock = _connect(server)
    sock.sendall(f"POST /v1/audio/transcriptions HTTP/1.1\r\n{HEADERS}"
                 "Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 100000\r\n\r\n".encode())
    started = time.monotonic()
    sock.settimeout(0.1)
    response = b""
    while time.monotonic() - started < 20:
        if not _send_quietly(sock, b"-"):
            break
        try:
            response = sock.recv(65536)
            break
        except socket.timeout:
            continue
    assert response.startswith(b"HTTP/1.1 408"), response[:200]


def test_too_many_form_parts_says_so(live_server, make_settings, auth_headers):
    server = live_server(make_settings())
    fields = {f"f{i}": "x" for i in range(1100)}  # werkzeug's limit is 1000 parts
    r = requests.post(f"{server.url}/v1/audio/transcriptions", files={"file": ("a.wav", b"RIFF")}, data=fields,
                      headers=auth_headers, timeout=30)
    assert r.status_code == 413
    err = r.json()["error"]
    assert err["code"] == "form_too_large" and "more than 1000 parts" in err["message"]
    assert "MB limit" not in err["message"]


def test_large_uploads_beyond_the_concurrency_bound_get_429(live_server, make_settings, monkeypatch):
    import backend.bodies

    monkeypatch.setattr(backend.bodies, "UPLOAD_SLOT_WAIT_S", 0.2)
    server = live_server(make_settings(max_concurrent_uploads=1))
    head = (f"POST /transcribe HTTP/1.1\r\n{HEADERS}Content-Type: application/json\r\n"
            f"Content-Length: {9 * 1024**2}\r\n\r\n").encode()
    first = _connect(server)
    first.sendall(head + b'{"file": "')
    second = _connect(server)
    second.sendall(head + b'{"file": "')
    # The server's threads may take the two requests in either order: whichever gets the only
    # slot holds it while its body is (slowly) coming, and the other is answered 429.
    answered, _, _ = select.select([first, second], [], [], 10)
    assert len(answered) == 1, "exactly one of the two uploads is refused at once"
    status, headers, body, closed = _read_response(answered[0])
    assert status == 429 and body["error"]["code"] == "uploads_busy" and headers["retry-after"] == "10"
    waiting = second if answered[0] is first else first
    assert select.select([waiting], [], [], 0.5)[0] == [], "the upload holding the slot is still being received"
    first.close()
    second.close()
