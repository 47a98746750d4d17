"""The web layer: auth, errors, settings, OpenAPI, system routes."""
import json
import os
import stat

import pytest

from tests import fake_jobs
from tests.conftest import API_KEY


@pytest.fixture
def app(make_settings):
    from backend.app import create_app, shutdown_app

    app = fake_jobs.install(create_app(make_settings(max_upload_mb=0.01)))
    yield app
    shutdown_app(app)


@pytest.fixture
def client(app):
    return app.test_client()


def test_health_needs_no_key(client):
    r = client.get("/health")
    assert r.status_code == 200
    body = r.get_json()
    assert body["status"] == "ok" and body["device"] == "cpu" and "version" in body and body["uptime_s"] >= 0


def _concrete(rule):
    url = rule.rule
    for arg in rule.arguments:
        url = url.replace(f"<path:{arg}>", "x").replace(f"<{arg}>", "x")
    return url


def test_every_route_but_health_refuses_missing_or_wrong_key(app, client):
    checked = 0
    public = {r.rule for r in app.url_map.iter_rules() if getattr(app.view_functions[r.endpoint], "public", False)}
    # the only views open without the key: liveness (ours and the Kyutai client's) and the VITA test
    # page (+ its static files), which a browser opens by URL and which checks the token itself
    assert public == {"/health", "/kyutai/health", "/vita", "/vita/static/<path:name>"}
    for rule in app.url_map.iter_rules():
        if rule.rule in public or rule.rule.startswith("/static"):
            continue
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            url = _concrete(rule)
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}):
                r = client.open(url, method=method, headers=headers)
                assert r.status_code == 401, (method, url, headers)
                if url.startswith("/kyutai/"):  # that client's contract: {"error": message, "fallback": true}
                    assert r.get_json()["fallback"] is True and "API key" in r.get_json()["error"]
                else:
                    assert r.get_json()["error"]["code"] == "invalid_api_key"
            checked += 1
    assert checked >= 6


def test_bearer_and_x_api_key_both_work(client):
    assert client.get("/jobs", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    assert client.get("/jobs", headers={"X-API-Key": API_KEY}).status_code == 200


def test_cors_preflight_allows_the_ngrok_header(client):
    r = client.options("/jobs", headers={"Origin": "https://front.example", "Access-Control-Request-Method": "GET",
                                         "Access-Control-Request-Headers": "authorization,ngrok-skip-browser-warning"})
    assert r.status_code == 200
    allowed = r.headers["Access-Control-Allow-Headers"].lower()
    assert "ngrok-skip-browser-warning" in allowed and "authorization" in allowed


def test_unknown_route_and_job_are_404_envelopes(client, auth_headers):
    r = client.get("/jobs/does-not-exist", headers=auth_headers)
    assert r.status_code == 404
    assert r.get_json()["error"]["param"] == "job_id"
    r = client.get("/no/such/route", headers=auth_headers)
    assert r.status_code == 404 and r.get_json()["error"]["type"] == "not_found_error"


def test_malformed_json_is_400_naming_the_body(client, auth_headers):
    r = client.post("/test/run", data="{not json", headers={**auth_headers, "Content-Type": "application/json"})
    assert r.status_code == 400
    err = r.get_json()["error"]
    assert err["param"] == "body" and "malformed JSON" in err["message"]


def test_invalid_field_is_400_naming_the_field(client, auth_headers):
    r = client.post("/test/run", json={"kind": "echo", "value": -5}, headers=auth_headers)
    assert r.status_code == 400
    assert r.get_json()["error"]["param"] == "value"


def test_body_over_limit_is_413(client, auth_headers):
    r = client.post("/test/run", data=json.dumps({"kind": "echo", "pad": "x" * 20000}),
                    headers={**auth_headers, "Content-Type": "application/json"})
    assert r.status_code == 413
    assert "limit" in r.get_json()["error"]["message"]


def test_unexpected_error_is_500_without_traceback(app, client, auth_headers):
    @app.get("/test/boom")
    def boom():
        raise ZeroDivisionError("secret internals")

    r = client.get("/test/boom", headers=auth_headers)
    assert r.status_code == 500
    text = r.get_data(as_text=True)
    assert "Traceback" not in text and "secret internals" not in text and "ZeroDivisionError" not in text


def test_openapi_is_generated_from_the_request_models(client, auth_headers):
    doc = client.get("/openapi.json", headers=auth_headers).get_json()
    assert doc["openapi"].startswith("3.")
    assert "/jobs/{job_id}" in doc["paths"] and "delete" in doc["paths"]["/jobs/{job_id}"]
    assert "ErrorEnvelope" in doc["components"]["schemas"]
    assert doc["paths"]["/health"]["get"].get("security") is None
    assert doc["paths"]["/jobs"]["get"]["security"]


def test_system_routes(client, auth_headers):
    vram = client.get("/vram-monitor", headers=auth_headers).get_json()
    for key in ("total_gb", "allocated_gb", "reserved_gb", "free_gb", "utilization_percent", "models_loaded",
                "offloader"):
        assert key in vram
    assert vram["total_gb"] == pytest.approx(15.0)
    diag = client.get("/diagnostics", headers=auth_headers).get_json()
    assert diag["python"] and diag["device"] == "cpu" and diag["dtype"] == "float32"
    assert "available" in diag["onnxruntime"] and diag["disk"]["free_gb"] > 0
    assert "flask" in diag["packages"]
    models = client.get("/v1/models", headers=auth_headers).get_json()
    assert models["object"] == "list" and isinstance(models["data"], list)


def test_key_generated_once_with_private_mode(make_settings):
    from backend.app import create_app, shutdown_app

    settings = make_settings(api_key=None)
    app = create_app(settings)
    key = app.extensions["enfoads"].api_key
    path = settings.data_dir / "api_key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    shutdown_app(app)
    app2 = create_app(make_settings(api_key=None))
    assert app2.extensions["enfoads"].api_key == key
    shutdown_app(app2)


def test_settings_from_env_yaml_and_overrides(tmp_path, monkeypatch):
    from backend.settings import load_settings

    cfg = tmp_path / "enfoads.yaml"
    cfg.write_text("port: 9001\nqueue_max: 3\nprofile: local\ncors_origins: [https://a.example]\n")
    monkeypatch.setenv("ENFOADS_PORT", "9100")
    monkeypatch.setenv("ENFOADS_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("ENFOADS_PROFILE", "smoke")
    s = load_settings(cfg, api_key="k")
    assert s.port == 9100  # env beats the file
    assert s.queue_max == 3 and s.cors_origins == ["https://a.example"]
    assert s.profile == "smoke" and s.data_dir == (tmp_path / "d").resolve()
    assert load_settings(cfg, port=7000).port == 7000  # explicit beats env
    monkeypatch.setenv("ENFOADS_CORS_ORIGINS", "https://x.example, https://y.example")
    assert load_settings().cors_origins == ["https://x.example", "https://y.example"]
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "missing.yaml")


def test_dtype_policy_follows_compute_capability(monkeypatch):
    from services import device

    assert device.dtype_name("cpu") == "float32"
    monkeypatch.setattr(device, "compute_capability", lambda d: (7, 5))
    assert device.dtype_name("cuda") == "float16"  # T4: bf16 is only emulated
    monkeypatch.setattr(device, "compute_capability", lambda d: (8, 0))
    assert device.dtype_name("cuda") == "bfloat16"
    assert device.dtype_name("cuda", "float32") == "float32"
