"""The notebook on Colab and Kaggle: runtime detection, secrets (with faked `google.colab` and
`kaggle_secrets` modules), folders, the ONNX Runtime CUDA check, settings that a running server
cannot take, and the self-test's wording."""
import logging
import os
import sys
import types

import pytest

from backend import notebook as nb
from backend import runtime
from backend.selftest import SelfTest
from services import diagnostics, ort_check
from tests.conftest import API_KEY


@pytest.fixture(autouse=True)
def plain_machine(monkeypatch):
    for name in ("KAGGLE_KERNEL_RUN_TYPE", "KAGGLE_URL_BASE", "ENFOADS_API_KEY", "ENFOADS_HOST", "ENFOADS_PROFILE",
                 "ENFOADS_PORT", "NGROK_DOMAIN", "ENFOADS_NGROK_DOMAIN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setitem(sys.modules, "google.colab", None)
    monkeypatch.setitem(sys.modules, "kaggle_secrets", None)
    ort_check.cuda_check.cache_clear()
    yield
    ort_check.cuda_check.cache_clear()


def fake_colab(monkeypatch, secrets: dict):
    """`google.colab.userdata.get` answering from `secrets`; a value that is an exception is raised."""
    google = types.ModuleType("google")
    colab = types.ModuleType("google.colab")
    userdata = types.ModuleType("google.colab.userdata")

    def get(name):
        value = secrets.get(name, SecretNotFoundError(name))
        if isinstance(value, Exception):
            raise value
        return value

    userdata.get = get
    colab.userdata = userdata
    google.colab = colab
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setitem(sys.modules, "google.colab.userdata", userdata)


class SecretNotFoundError(Exception):
    pass


class NotebookAccessError(Exception):
    pass


class BackendError(Exception):  # what kaggle_secrets raises for a secret not attached
    pass


def fake_kaggle(monkeypatch, secrets: dict):
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    module = types.ModuleType("kaggle_secrets")

    class UserSecretsClient:
        def get_secret(self, name):
            if name not in secrets:
                raise BackendError(f"Unexpected response from the service. Response: {{'errors': ['No user "
                                   f"secrets exist for kernel id 1 and label {name}']}}")
            return secrets[name]

    module.UserSecretsClient = UserSecretsClient
    monkeypatch.setitem(sys.modules, "kaggle_secrets", module)


# --------------------------------------------------------------------------------- runtimes

def test_the_runtime_is_detected(monkeypatch):
    assert runtime.detect() == runtime.LOCAL
    fake_colab(monkeypatch, {})
    assert runtime.detect() == runtime.COLAB and nb.in_colab()
    fake_kaggle(monkeypatch, {})
    assert runtime.detect() == runtime.KAGGLE and nb.in_notebook_runtime() and not nb.in_colab()


def test_each_runtime_keeps_data_where_it_lasts_and_models_on_local_disk():
    assert runtime.default_dirs(runtime.COLAB) == (runtime.Path("/content/enfoads-data"),
                                                   runtime.Path("/content/enfoads-models"))
    data, models = runtime.default_dirs(runtime.KAGGLE)
    assert str(data) == "/kaggle/working/enfoads-data" and str(models).startswith("/kaggle/tmp/")


def test_kaggle_secrets_give_the_key_and_domain(monkeypatch, tmp_path, capsys):
    fake_kaggle(monkeypatch, {"ENFOADS_API_KEY": "kaggle-key", "NGROK_DOMAIN": "mi-marca.ngrok-free.app"})
    s = nb.settings_for(ci=False, data_dir=tmp_path)
    assert s.api_key.get_secret_value() == "kaggle-key" and s.ngrok_domain == "mi-marca.ngrok-free.app"
    assert s.profile == "colab" and s.host == "0.0.0.0"  # a GPU runtime, published through the tunnel
    assert capsys.readouterr().out == ""


def test_a_kaggle_secret_not_attached_is_explained(monkeypatch, tmp_path, capsys):
    fake_kaggle(monkeypatch, {})
    s = nb.settings_for(ci=False, data_dir=tmp_path)
    assert s.api_key is None  # generated at start
    out = capsys.readouterr().out
    assert "ENFOADS_API_KEY" in out and "Add-ons > Secrets" in out and "a generated key is used" in out


@pytest.mark.parametrize("value, says", [
    (NotebookAccessError("no access"), "Notebook access"),
    ("   ", "is empty"),
])
def test_a_colab_key_secret_that_cannot_be_used_is_explained(monkeypatch, tmp_path, capsys, value, says):
    fake_colab(monkeypatch, {"ENFOADS_API_KEY": value})
    s = nb.settings_for(ci=False, data_dir=tmp_path)
    assert s.api_key is None
    out = capsys.readouterr().out
    assert "ENFOADS_API_KEY" in out and says in out and "a generated key is used instead" in out


def test_a_missing_optional_colab_secret_says_nothing(monkeypatch, tmp_path, capsys):
    fake_colab(monkeypatch, {})
    assert nb.settings_for(ci=False, data_dir=tmp_path).api_key is None
    assert capsys.readouterr().out == ""


def test_the_environment_still_wins_over_secrets(monkeypatch, tmp_path):
    fake_kaggle(monkeypatch, {"ENFOADS_API_KEY": "kaggle-key"})
    monkeypatch.setenv("ENFOADS_API_KEY", "env-key")
    assert nb.settings_for(ci=False, data_dir=tmp_path).api_key.get_secret_value() == "env-key"


# --------------------------------------------------------------------------------- server cell

def test_a_changed_data_dir_on_a_running_server_is_said_not_applied(make_settings, tmp_path, capsys):
    try:
        first = nb.start_server(make_settings(), show_log=False)
        again = nb.start_server(make_settings(data_dir=tmp_path / "drive"), show_log=False)
        assert again is first
        out = capsys.readouterr().out
        assert "NOT APPLIED" in out and str(tmp_path / "drive") in out and "Restart session" in out
        assert first.settings.data_dir != tmp_path / "drive"
        nb.start_server(make_settings(), show_log=False)
        assert "NOT APPLIED" not in capsys.readouterr().out  # the same settings: nothing to say
    finally:
        nb.stop_server()


# --------------------------------------------------------------------------------- ONNX Runtime

def test_onnxruntime_check_on_a_cpu_build_reports_what_is_usable():
    check = ort_check.cuda_check()
    assert check["usable"] == ["CPUExecutionProvider"] and not check["cuda_ok"]
    assert "no CUDA provider" in check["reason"]
    report = diagnostics.onnxruntime_providers()
    assert report["available"] == ["CPUExecutionProvider"] and report["version"]


def test_a_cuda_provider_that_does_not_start_is_caught_with_its_reason_and_fix(monkeypatch, caplog):
    import onnxruntime as ort

    class FallsBack:
        """What onnxruntime-gpu does without libcudart of its CUDA version: log to stderr, use the CPU."""

        def __init__(self, model, providers):
            assert providers[0] == "CUDAExecutionProvider" and isinstance(model, bytes)
            os.write(2, b"[E:onnxruntime:Default, provider_bridge_ort.cc:2251] Failed to load library "
                        b"libonnxruntime_providers_cuda.so with error: libcudart.so.12: cannot open shared object file\n")

        def get_providers(self):
            return ["CPUExecutionProvider"]

    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", FallsBack)
    monkeypatch.setattr(ort_check, "torch_cuda_major", lambda: "13")
    with caplog.at_level(logging.WARNING, logger="enfoads.onnxruntime"):
        check = ort_check.cuda_check()
    assert not check["cuda_ok"] and check["usable"] == ["CPUExecutionProvider"]
    assert "libcudart.so.12" in check["reason"] and "fell back to the CPU" in check["reason"]
    assert "CUDA 13" in check["fix"] and "onnxruntime-gpu>1.26" in check["fix"]
    assert any("libcudart.so.12" in r.getMessage() for r in caplog.records)  # into our log, not lost on stderr
    line = nb.ort_line(diagnostics.onnxruntime_providers())
    assert "usable CPUExecutionProvider" in line and "Tensorrt" not in line and "Fix:" in line


def test_the_setup_cell_warns_when_onnxruntime_cannot_use_the_gpu(monkeypatch):
    monkeypatch.setattr(diagnostics, "gpu_info", lambda: {
        "torch": "2.11.0", "cuda_available": True, "cuda_version": "12.8", "gpu_name": "Tesla T4",
        "compute_capability": "7.5", "vram_total_gb": 15.0, "vram_free_gb": 14.6})
    monkeypatch.setattr(diagnostics, "onnxruntime_providers", lambda: {
        "available": ["CPUExecutionProvider"], "built_with": ["CUDAExecutionProvider", "CPUExecutionProvider"],
        "cuda_ok": False, "reason": "the CUDA provider did not start", "fix": ort_check.fix_for("12"),
        "version": "1.27.0"})
    report, warning = nb.gpu_check()
    assert "Tesla T4" in report and "ONNX Runtime 1.27.0: usable CPUExecutionProvider" in report
    assert "CUDA provider does not start" in warning and "onnxruntime-gpu==1.26.*" in warning


def test_diagnostics_do_not_call_the_other_onnxruntime_build_missing(monkeypatch, make_settings):
    versions = dict.fromkeys(diagnostics.PACKAGES, "1.0")
    versions.update({"onnxruntime": None, "moshi": None})
    monkeypatch.setattr(diagnostics, "package_versions", lambda: versions)
    text = nb.diagnostics_text(make_settings())
    assert "not installed: moshi" in text and "onnxruntime," not in text.split("not installed:")[1]


# --------------------------------------------------------------------------------- self-test

def test_the_self_test_says_models_missing_for_the_assistant_too(live_server, make_settings, tmp_path):
    empty = tmp_path / "no-models"
    empty.mkdir()
    server = live_server(make_settings(models_dir=empty))
    (result,) = SelfTest(server.url, API_KEY, log=lambda m: None, timeout=60).run(["vita"])
    assert result.status == "models missing", result.detail
    assert "python -m prefetch" in result.detail
