"""Uploads as a route sees them: a multipart file or base64 (plain or a data: URL) in a JSON field,
stored byte for byte under a random name, refused with the field named, and gone when the request
ends unless a job took them."""
import base64
import io
import re

import pytest
from flask import Blueprint, request

from backend.api import json_object
from backend.uploads import input_file, save_upload, take_uploads
from tests.conftest import API_KEY

H = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from backend.app import create_app, shutdown_app
    from backend.settings import load_settings

    bp = Blueprint("upload_probe", __name__)

    @bp.post("/test/save")
    def save():
        body = json_object() if request.is_json else None
        if request.args.get("required") == "0":
            path = save_upload("file", json_body=body, required=False)
        else:
            path = save_upload("file", json_body=body)
        kept = take_uploads() if request.args.get("keep") else []
        if path is None:
            return {"saved": None, "kept": kept}
        return {"saved": str(path), "name": path.name, "data": base64.b64encode(path.read_bytes()).decode(),
                "kept": kept}

    @bp.post("/test/input")
    def take_input():
        body = json_object() if request.is_json else None
        asset = request.args.get("asset")
        if request.args.get("required") is None:  # the default: required
            path = input_file("file", asset, json_body=body)
        else:
            path = input_file("file", asset, json_body=body, required=request.args.get("required") != "0")
        return {"path": None if path is None else str(path),
                "data": None if path is None else base64.b64encode(path.read_bytes()).decode()}

    settings = load_settings(profile="smoke", data_dir=tmp_path_factory.mktemp("up") / "data", api_key=API_KEY,
                             device="cpu", port=0)
    app = create_app(settings)
    app.register_blueprint(bp)
    yield app
    shutdown_app(app)


@pytest.fixture
def client(app):
    folder = app.extensions["enfoads"].settings.data_dir / "uploads"
    yield app.test_client()
    for path in folder.glob("*"):
        path.unlink()


def uploads(app):
    folder = app.extensions["enfoads"].settings.data_dir / "uploads"
    return sorted(p.name for p in folder.glob("*")) if folder.exists() else []


def multipart(client, filename, data=b"\x00\x01audio\xff", **query):
    return client.post("/test/save", query_string=query, headers=H,
                       data={"file": (io.BytesIO(data), filename)}, content_type="multipart/form-data")


def as_json(client, value, **query):
    return client.post("/test/save", query_string=query, headers=H, json={"file": value})


def error(response):
    err = response.get_json()["error"]
    return response.status_code, err["code"], err.get("param"), err["message"]


PAYLOAD = bytes(range(256)) * 3


@pytest.mark.parametrize("filename, suffix", [
    ("voz.WAV", ".wav"), ("clip.tar.gz", ".gz"), ("archivo", ""), ("a.p$p", ""), ("a.abcdefghi", ""),
    ("../../etc/passwd.mp3", ".mp3"), ("a.12345678", ".12345678")])
def test_a_multipart_file_is_stored_as_sent_under_a_random_name(app, client, filename, suffix):
    r = multipart(client, filename, PAYLOAD)
    assert r.status_code == 200, r.get_data(as_text=True)
    body = r.get_json()
    assert base64.b64decode(body["data"]) == PAYLOAD
    assert re.fullmatch(r"[0-9a-f]{32}" + re.escape(suffix), body["name"]), body["name"]
    assert uploads(app) == []  # the request ended: its upload went with it


@pytest.mark.parametrize("value", [
    base64.b64encode(PAYLOAD).decode(),
    "  \n" + base64.b64encode(PAYLOAD).decode() + "\n",
    "data:audio/wav;base64," + base64.b64encode(PAYLOAD).decode(),
    " \n data:audio/wav;base64," + base64.b64encode(PAYLOAD).decode() + " \n",
    "DATA:image/svg+xml;charset=utf-8;base64," + base64.b64encode(PAYLOAD).decode(),
    "data:;base64," + base64.b64encode(PAYLOAD).decode()])
def test_base64_in_json_is_stored_byte_for_byte(app, client, value):
    r = as_json(client, value)
    assert r.status_code == 200, r.get_data(as_text=True)
    body = r.get_json()
    assert base64.b64decode(body["data"]) == PAYLOAD
    assert re.fullmatch(r"[0-9a-f]{32}", body["name"])  # no client name: no suffix
    assert uploads(app) == []


def test_base64_longer_than_one_decoding_slice(client):
    from backend.uploads import B64_CHUNK_CHARS

    data = bytes(range(256)) * (B64_CHUNK_CHARS * 3 // 4 // 256 + 7)  # a bit over one slice of text
    text = base64.b64encode(data).decode()
    assert len(text) > B64_CHUNK_CHARS
    for value in (text, "data:application/octet-stream;base64," + text, " \n" + text + "\n "):
        r = as_json(client, value)
        assert r.status_code == 200 and base64.b64decode(r.get_json()["data"]) == data


@pytest.mark.parametrize("value", ["no es base64!", "QUJD@EVG", "data:text/plain;base64,QUJ", "QQ=="[:-1],
                                   "QUJD!!!!", "data:text/plain;base64,QU*JD"])  # valid once the junk is dropped
def test_invalid_base64_is_a_400_naming_the_field(app, client, value):
    r = as_json(client, value)
    assert error(r) == (400, "invalid_base64", "file", "file: not valid base64 (or a base64 data: URL)")
    assert uploads(app) == []


@pytest.mark.parametrize("send", [
    lambda c: c.post("/test/save", headers=H),
    lambda c: c.post("/test/save", headers=H, json={"other": "QUJD"}),
    lambda c: c.post("/test/save", headers=H, json={"file": 12}),
    lambda c: c.post("/test/save", headers=H, data={"file": "QUJD"}, content_type="multipart/form-data")])
def test_a_missing_file_is_a_400_naming_the_field(client, send):
    status, code, param, message = error(send(client))
    assert (status, code, param) == (400, "missing_file", "file")
    assert message == "file: a file is required (multipart field 'file' or base64 in JSON)"


def test_an_optional_file_may_be_left_out(client):
    assert client.post("/test/save", query_string={"required": "0"}, headers=H).get_json() == {"saved": None,
                                                                                               "kept": []}
    assert as_json(client, None, required="0").get_json() == {"saved": None, "kept": []}
    # a job handed a request that saved nothing takes nothing
    assert as_json(client, None, required="0", keep="1").get_json() == {"saved": None, "kept": []}
    r = as_json(client, "QUJD", required="0")
    assert base64.b64decode(r.get_json()["data"]) == b"ABC"


def test_an_empty_file_is_a_400(app, client):
    for r in (multipart(client, "a.wav", b""), as_json(client, ""), as_json(client, "data:audio/wav;base64,")):
        assert error(r) == (400, "empty_file", "file", "file: the file is empty")
    assert uploads(app) == []


def test_a_one_byte_file_is_not_empty(client):
    assert base64.b64decode(multipart(client, "a.bin", b"x").get_json()["data"]) == b"x"
    assert base64.b64decode(as_json(client, "eA==").get_json()["data"]) == b"x"


def test_uploads_a_job_took_outlive_the_request(app, client):
    r = multipart(client, "a.wav", PAYLOAD, keep="1")
    body = r.get_json()
    assert body["kept"] == [body["saved"]]
    assert uploads(app) == [body["name"]]
    r = as_json(client, base64.b64encode(PAYLOAD).decode(), keep="1")
    assert len(uploads(app)) == 2


# ------------------------------------------------------------------ input_file / <field>_asset


def job_with_output(app, owner_key=API_KEY, name="salida.png", data=b"\x89PNG-bytes"):
    """A finished job of `owner_key`'s with one output file; returns (job id, file path)."""
    import uuid

    from backend.auth import owner_of
    from backend.jobs import SUCCEEDED, Job

    ctx = app.extensions["enfoads"]
    job = Job(id=uuid.uuid4().hex, kind="image.generate", owner=owner_of(owner_key), status=SUCCEEDED)
    ctx.jobs.store.insert(job)
    folder = ctx.settings.outputs_dir / job.id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return job.id, folder / name


def test_an_asset_is_one_of_the_callers_own_job_outputs(app, client):
    job_id, path = job_with_output(app)
    r = client.post("/test/input", query_string={"asset": f"  {job_id}/salida.png "}, headers=H)
    assert r.status_code == 200
    assert r.get_json()["path"] == str(path)
    assert base64.b64decode(r.get_json()["data"]) == b"\x89PNG-bytes"
    assert uploads(app) == []  # nothing copied: the job's file itself


def test_an_upload_wins_over_an_asset(app, client):
    job_id, _ = job_with_output(app)
    r = client.post("/test/input", query_string={"asset": f"{job_id}/salida.png"}, headers=H,
                    data={"file": (io.BytesIO(b"subido"), "a.png")}, content_type="multipart/form-data")
    assert base64.b64decode(r.get_json()["data"]) == b"subido"


@pytest.mark.parametrize("asset, status, words", [
    ("no-es-un-id/salida.png", 400, "no output 'no-es-un-id/salida.png' among your jobs"),
    ("0123456789abcdef0123456789abcdef/salida.png", 404, "among your jobs (expected `<job_id>/<file name>`)"),
    ("{job}/../{job}/salida.png", 400, "no output"),
    ("{job}/otra.png", 404, "has no file 'otra.png'"),
    ("{other}/salida.png", 404, "no output"),
])
def test_an_asset_that_is_not_the_callers_or_not_there_is_refused(app, client, asset, status, words):
    job_id, _ = job_with_output(app)
    other, _ = job_with_output(app, owner_key="enf-somebody-else")
    r = client.post("/test/input", query_string={"asset": asset.format(job=job_id, other=other)}, headers=H)
    code, err, param, message = error(r)
    assert (code, err, param) == (status, "asset_not_found", "file_asset")
    assert message.startswith("file_asset: ") and words in message
    if "{job}/otra" in asset:
        assert message == f"file_asset: job {job_id} has no file 'otra.png'"


def test_an_input_may_come_as_base64_in_json(client):
    r = client.post("/test/input", headers=H, json={"file": base64.b64encode(PAYLOAD).decode()})
    assert r.status_code == 200 and base64.b64decode(r.get_json()["data"]) == PAYLOAD


def test_a_missing_input_is_refused_naming_every_way_to_send_it(client):
    code, err, param, message = error(client.post("/test/input", headers=H, json={}))
    assert (code, err, param) == (400, "missing_file", "file")
    assert message == ("file: a file is required (multipart field 'file', base64 in JSON, or file_asset)")


def test_an_optional_input_may_be_absent(client):
    r = client.post("/test/input", query_string={"required": "0"}, headers=H, json={})
    assert r.status_code == 200 and r.get_json() == {"path": None, "data": None}
