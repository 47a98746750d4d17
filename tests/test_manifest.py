"""The model manifest (prefetch/manifest.py) and its CLI (python -m prefetch). No torch, no network."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from prefetch import __main__ as cli
from prefetch import manifest as mf

ROOT = Path(__file__).resolve().parents[1]
HEX40 = re.compile(r"^[0-9a-f]{40}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")

REQUIRED_KEYS = {
    "sdxl-base", "sdxl-lightning-unet-4step", "sdxl-vae-fp16-fix", "controlnet-openpose-sdxl", "dwpose",
    "whisper-large-v3-turbo", "whisper-small", "whisper-base",
    "buffalo_l", "inswapper_128",
    "chatterbox-multilingual", "chatterbox-en", "chatterbox-turbo",
    "chatterbox-multilingual-v3", "chatterbox-es-latam", "chatterbox-v3-shared",
    "kyutai-tts-1.6b-en_fr", "kyutai-tts-voices",
    "silero-vad", mf.VLM_KEY,
}


def run_cli(*args: str, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    paths = [str(ROOT)] + ([full_env["PYTHONPATH"]] if full_env.get("PYTHONPATH") else [])
    full_env["PYTHONPATH"] = os.pathsep.join(paths)
    return subprocess.run([sys.executable, "-m", "prefetch", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=60)


# ----------------------------------------------------------------------------- the data

def test_required_models_present():
    assert REQUIRED_KEYS <= set(mf.MANIFEST)
    for key, spec in mf.MANIFEST.items():
        assert spec.key == key


@pytest.mark.parametrize("family", mf.FAMILIES)
def test_every_family_has_models(family):
    specs = mf.by_family(family)
    assert specs and all(s.family == family for s in specs)


def test_vita_shares_whisper_and_tts():
    own = {s.key for s in mf.by_family("vita")}
    shared = {s.key for s in mf.by_family("vita", shared=True)}
    assert {mf.VLM_KEY, "silero-vad"} <= own
    assert "whisper-large-v3-turbo" in shared and "chatterbox-multilingual" in shared
    with pytest.raises(ValueError):
        mf.by_family("video")


@pytest.mark.parametrize("key", list(mf.MANIFEST))
def test_spec_is_complete(key):
    s = mf.get(key)
    assert isinstance(s.size_bytes, int) and s.size_bytes > 0
    assert s.vram_bytes and all(isinstance(v, int) and v > 0 for v in s.vram_bytes.values())
    assert s.license.strip()
    assert s.runtime in mf.RUNTIMES
    assert s.files and all(isinstance(f, str) and f for f in s.files)
    assert isinstance(s.gated, bool)
    assert s.sha256 is None or HEX64.match(s.sha256)
    assert all(HEX64.match(v) for v in s.checksums.values())


@pytest.mark.parametrize("key", list(mf.MANIFEST))
def test_revision_is_a_sha_or_main(key):
    s = mf.get(key)
    if s.source == "hub":
        assert HEX40.match(s.revision) or s.revision == "main", s.revision
    else:  # not on the hub: a direct URL (checksummed) or a pip package
        assert s.revision == ""
        assert (s.url and s.sha256) or s.pip_package


def test_every_unpinned_revision_is_marked_todo():
    source = (ROOT / "prefetch" / "manifest.py").read_text()
    unpinned = [s for s in mf.MANIFEST.values() if s.source == "hub" and s.revision == "main"]
    assert len(re.findall(r'revision="main",\s*# TODO pin', source)) == len(unpinned)


def test_inswapper_is_checksummed_and_buffalo_is_a_release_zip():
    sw = mf.get("inswapper_128")
    assert sw.files == ("inswapper_128.onnx",) and sw.runtime == "onnx"
    assert sw.sha256 == mf.INSWAPPER_SHA256 and HEX64.match(sw.sha256)
    assert mf.INSWAPPER_DEFAULT_REPO == sw.repo_id and mf.INSWAPPER_FILENAME == "inswapper_128.onnx"
    bl = mf.get("buffalo_l")
    assert bl.source == "url" and bl.url.endswith("buffalo_l.zip") and bl.sha256
    assert "det_10g.onnx" in bl.files


def test_silero_ships_in_a_package():
    s = mf.get("silero-vad")
    assert s.source == "package" and s.pip_package == "silero-vad" and not s.repo_id


def test_specs_are_frozen():
    s = mf.get("sdxl-base")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.revision = "main"  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.vram_bytes["fp16"] = 1  # type: ignore[index]
    assert hash(s) == hash(mf.get("sdxl-base"))
    assert json.loads(json.dumps(s.to_dict()))["key"] == "sdxl-base"


def test_spec_validation():
    base = dict(key="x", family="image", repo_id="a/b", revision="main", files=("f",),
                size_bytes=1, vram_bytes={"fp16": 1}, license="mit", runtime="torch")
    mf.ModelSpec(**base)
    with pytest.raises(ValueError):
        mf.ModelSpec(**{**base, "revision": "v1.0"})
    with pytest.raises(ValueError):
        mf.ModelSpec(**{**base, "family": "video"})
    with pytest.raises(ValueError):
        mf.ModelSpec(**{**base, "runtime": "tensorrt"})
    with pytest.raises(ValueError):
        mf.ModelSpec(**{**base, "sha256": "abc"})


def test_get_unknown_key():
    with pytest.raises(KeyError):
        mf.get("no-such-model")


# ----------------------------------------------------------------------------- VRAM estimates

def test_vram_estimate_exact_and_aliases():
    s = mf.get("whisper-large-v3-turbo")
    assert mf.vram_estimate(s.key, "int8_float16") == s.vram_bytes["int8_float16"]
    assert mf.vram_estimate(s.key, "float16") == s.vram_bytes["fp16"]
    assert mf.vram_estimate(s.key, "float32") == s.vram_bytes["fp32"]
    assert mf.vram_estimate(s.key) == s.vram_bytes["fp16"]


def test_vram_estimate_fallbacks():
    # bf16 -> fp16 figure (same width)
    lightning = mf.get("sdxl-lightning-unet-4step")
    assert mf.vram_estimate(lightning.key, "bfloat16") == lightning.vram_bytes["fp16"]
    # int8 compute type on a torch model -> fp16 figure (upper bound)
    assert mf.vram_estimate(lightning.key, "int8_float16") == lightning.vram_bytes["fp16"]
    # an ONNX graph runs at one precision: any dtype -> that figure
    sw = mf.get("inswapper_128")
    assert set(sw.vram_bytes) == {"fp32"}
    assert mf.vram_estimate(sw.key, "fp16") == sw.vram_bytes["fp32"]
    # an unknown dtype name -> the largest (conservative) figure
    assert mf.vram_estimate(lightning.key, "fp8") == max(lightning.vram_bytes.values())
    with pytest.raises(KeyError):
        mf.vram_estimate("no-such-model", "fp16")


def test_t4_realtime_stack_fits():
    """VLM + multilingual TTS + whisper turbo (the realtime assistant's models) fit a 15 GB T4
    with room for the reserve."""
    total = (mf.vram_estimate(mf.VLM_KEY, "fp16")
             + mf.vram_estimate("chatterbox-multilingual", "fp16")
             + mf.vram_estimate("whisper-large-v3-turbo", "int8_float16"))
    assert total < 14 * 10**9


def test_local_dir(tmp_path):
    assert mf.local_dir(tmp_path, "whisper-base") == tmp_path / "models" / "whisper-base"
    assert mf.local_dir(str(tmp_path), "buffalo_l") == tmp_path / "models" / "buffalo_l"
    with pytest.raises(KeyError):
        mf.local_dir(tmp_path, "nope")


# ----------------------------------------------------------------------------- smoke registry

@pytest.fixture
def registry(monkeypatch):
    reg: dict = {}
    monkeypatch.setattr(mf, "SMOKE_BUILDERS", reg)
    return reg


def test_smoke_builder_registers(registry):
    @mf.smoke_builder("image")
    def build(models: Path) -> None:
        pass

    assert registry == {"image": build}
    mf.smoke_builder("image")(build)  # the same function again: harmless

    def other(models: Path) -> None:
        pass

    with pytest.raises(ValueError):
        mf.smoke_builder("image")(other)
    with pytest.raises(ValueError):
        mf.smoke_builder("video")
    assert "image" not in mf.families_without_smoke_builder()


def test_discover_skips_missing_family_modules(monkeypatch):
    monkeypatch.setattr(mf, "SMOKE_MODULE_CANDIDATES",
                        {f: (f"enfoads_no_such_pkg_{f}.smoke",) for f in mf.FAMILIES})
    assert mf.discover_smoke_builders() == {}
    errors = mf.discover_smoke_builders(["enfoads_no_such_module"])
    assert list(errors) == ["enfoads_no_such_module"]


def test_smoke_in_process(registry, tmp_path, capsys):
    @mf.smoke_builder("whisper")
    def build(models: Path) -> None:
        out = models / "whisper-base"
        out.mkdir(parents=True)
        (out / "model.bin").write_bytes(b"tiny")

    code = cli.main(["--smoke", "--no-discover", "--data-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == cli.EXIT_OK
    assert (mf.local_dir(tmp_path, "whisper-base") / "model.bin").read_bytes() == b"tiny"
    assert "whisper: built" in out
    assert "no smoke builder yet" in out and "image" in out


def test_smoke_failure_exit_code(registry, tmp_path, capsys):
    @mf.smoke_builder("face")
    def build(models: Path) -> None:
        raise RuntimeError("boom")

    assert cli.main(["--smoke", "--no-discover", "--data-dir", str(tmp_path), "face"]) == 1
    assert "face: FAILED" in capsys.readouterr().err


# ----------------------------------------------------------------------------- CLI (subprocess)

def test_cli_list():
    r = run_cli("--list")
    assert r.returncode == 0, r.stderr
    for key in mf.MANIFEST:
        assert key in r.stdout
    assert "stabilityai/stable-diffusion-xl-base-1.0@4621659" in r.stdout
    assert "VRAM GB fp16" in r.stdout


def test_cli_list_family_filter():
    r = run_cli("--list", "face")
    assert r.returncode == 0
    assert "inswapper_128" in r.stdout and "sdxl-base" not in r.stdout


def test_cli_json():
    r = run_cli("--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert [m["key"] for m in data["models"]] == list(mf.MANIFEST)
    assert set(data["families"]) == set(mf.FAMILIES)
    first = data["models"][0]
    assert {"repo_id", "revision", "files", "size_bytes", "vram_bytes", "license", "runtime",
            "gated", "note", "family"} <= set(first)
    r2 = run_cli("--list", "--json", "tts")
    assert {m["family"] for m in json.loads(r2.stdout)["models"]} == {"tts"}


def test_cli_usage_errors():
    bad = run_cli("video")
    assert bad.returncode == cli.EXIT_USAGE and "unknown family" in bad.stderr
    assert run_cli("--bogus-flag").returncode == cli.EXIT_USAGE
    assert run_cli().returncode == cli.EXIT_USAGE


def _fake_builder_module(tmp_path: Path) -> Path:
    mod_dir = tmp_path / "mods"
    mod_dir.mkdir()
    (mod_dir / "enfoads_fake_smoke.py").write_text(textwrap.dedent("""
        from pathlib import Path
        from prefetch.manifest import local_dir, smoke_builder

        @smoke_builder("image")
        def build(models: Path) -> None:
            out = models / "sdxl-base"
            out.mkdir(parents=True, exist_ok=True)
            (out / "model_index.json").write_text('{"tiny": true}')
    """))
    return mod_dir


def test_cli_smoke_with_fake_builder(tmp_path):
    mods = _fake_builder_module(tmp_path)
    data = tmp_path / "data"
    r = run_cli("--smoke", "--no-discover", "--module", "enfoads_fake_smoke", "--data-dir", str(data),
                env={"PYTHONPATH": str(mods)})
    assert r.returncode == 0, r.stderr
    assert json.loads((data / "models" / "sdxl-base" / "model_index.json").read_text()) == {"tiny": True}
    assert "image: built" in r.stdout
    assert "no smoke builder yet: face, whisper, tts, vita" in r.stdout


def test_cli_smoke_data_dir_from_env(tmp_path):
    mods = _fake_builder_module(tmp_path)
    data = tmp_path / "envdata"
    r = run_cli("--smoke", "--no-discover", "--module", "enfoads_fake_smoke",
                env={"PYTHONPATH": str(mods), "ENFOADS_DATA_DIR": str(data)}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (data / "models" / "sdxl-base" / "model_index.json").is_file()


def test_cli_smoke_missing_module_fails(tmp_path):
    r = run_cli("--smoke", "--no-discover", "--module", "enfoads_no_such_module",
                "--data-dir", str(tmp_path))
    assert r.returncode == 1 and "enfoads_no_such_module" in r.stderr
