"""The installed environment (scripts/install.sh) has every service library, importable.

Each check runs in its own interpreter (the imports are heavy: torch, transformers, ...), so a
failure names the library and memory is given back between checks. No network: the hub is
forced offline, and everything loaded here ships inside its package.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 300

# id -> Python code run in a fresh interpreter; it must exit 0.
CHECKS: dict[str, str] = {
    # The torch/torchaudio pair: a torchaudio whose native extension doesn't match torch fails
    # at import or at the first kernel; Chatterbox uses kaldi fbank and resampling.
    "torch+torchaudio": """
        import torch, torchaudio
        import torchaudio.compliance.kaldi as kaldi
        import torchaudio.functional as AF
        wav = torch.randn(1, 16000)
        assert AF.resample(wav, 16000, 24000).shape[-1] == 24000
        assert kaldi.fbank(wav, num_mel_bins=80).shape[-1] == 80
    """,
    "diffusers": """
        from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel, EulerDiscreteScheduler
    """,
    "faster_whisper": "from faster_whisper import WhisperModel",
    "ctranslate2": "import ctranslate2; assert ctranslate2.get_cuda_device_count() >= 0",
    "insightface.app": "from insightface.app import FaceAnalysis",
    "insightface.model_zoo": "from insightface.model_zoo import get_model",
    # Exactly one ONNX Runtime build, and a usable one (insightface and whisper's VAD run on it).
    "onnxruntime": """
        import importlib.metadata as md
        import onnxruntime
        have = []
        for d in ("onnxruntime", "onnxruntime-gpu"):
            try:
                md.version(d)
                have.append(d)
            except md.PackageNotFoundError:
                pass
        assert len(have) == 1, f"expected exactly one ONNX Runtime build, found {have}"
        assert "CPUExecutionProvider" in onnxruntime.get_available_providers()
    """,
    "chatterbox.tts": "from chatterbox.tts import ChatterboxTTS",
    "chatterbox.mtl_tts": "from chatterbox.mtl_tts import ChatterboxMultilingualTTS",
    # Chatterbox watermarks every output with Perth. perth swallows ImportError and sets
    # PerthImplicitWatermarker = None (Chatterbox then fails at load): check it is real, and that
    # it loads its bundled checkpoint (needs pkg_resources, i.e. setuptools<81).
    "perth": """
        import perth
        assert perth.PerthImplicitWatermarker is not None, "perth's implicit watermarker failed to import"
        perth.PerthImplicitWatermarker(device="cpu")
    """,
    "moshi.loaders": "from moshi.models.loaders import CheckpointInfo",
    "moshi.tts": "from moshi.models.tts import TTSModel",
    # Kyutai Pocket TTS: its own configs ship in the package (the engine reads spanish.yaml).
    "pocket_tts": """
        from pocket_tts import TTSModel, export_model_state
        from pocket_tts.utils.config import CONFIGS_DIR, load_config
        assert load_config(CONFIGS_DIR / "spanish.yaml").mimi.sample_rate == 24000
    """,
    "flask_socketio": """
        import flask_socketio, flask, flask_cors, simple_websocket
        import pydantic, pydantic_settings, yaml, apispec
    """,
    "pyngrok": "import pyngrok; from pyngrok import ngrok, conf",
    # The VAD model ships inside the package: it loads and runs with no network.
    "silero_vad": """
        import torch
        from silero_vad import load_silero_vad
        model = load_silero_vad()
        p = float(model(torch.zeros(512), 16000))
        assert 0.0 <= p <= 1.0
    """,
    "av": """
        import av
        assert av.codec.Codec("aac", "w") and av.codec.Codec("mp3", "r")
    """,
    "imageio_ffmpeg": """
        import os, subprocess, imageio_ffmpeg
        exe = imageio_ffmpeg.get_ffmpeg_exe()
        assert os.path.isfile(exe) and os.access(exe, os.X_OK), exe
        out = subprocess.run([exe, "-version"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "ffmpeg version" in out.stdout, out.stderr
    """,
    "media": "import PIL, cv2, soundfile, pysubs2, librosa, numpy, scipy, skimage",
    # Real-ESRGAN and GFPGAN: both architectures there, the loader's registry API as we use it.
    "spandrel": """
        from spandrel import ArchRegistry, ArchSupport, ImageModelDescriptor, ModelLoader, SizeRequirements
        from spandrel.architectures.ESRGAN import ESRGAN, ESRGANArch
        from spandrel.architectures.GFPGAN import GFPGAN, GFPGANArch
    """,
    "hub": "import transformers, accelerate, safetensors, huggingface_hub, tokenizers, sentencepiece",
}


def _run(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


@pytest.mark.parametrize("code", list(CHECKS.values()), ids=list(CHECKS))
def test_library_imports(code: str) -> None:
    proc = _run(code)
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\n--- stderr (tail) ---\n{proc.stderr[-4000:]}"
        f"\n--- stdout (tail) ---\n{proc.stdout[-1000:]}"
    )


def _load_pip_check():
    spec = importlib.util.spec_from_file_location("pip_check", ROOT / "scripts" / "pip_check.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules.setdefault("pip_check", mod)
    spec.loader.exec_module(mod)
    return mod


def test_pip_check_reports_nothing_unexpected() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "pip_check.py"), "--verbose"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_pip_check_filter_is_precise() -> None:
    pc = _load_pip_check()
    known = [
        "moshi 0.2.13 has requirement huggingface-hub<1.0.0,>=0.24, but you have huggingface-hub 2.4.0.",
        "chatterbox-tts 0.1.7 has requirement numpy<2.0.0,>=1.24.0; python_version < \"3.13\", "
        "but you have numpy 2.4.6.",
        "s3tokenizer 0.3.0 requires pre-commit, which is not installed.",
        "chatterbox-tts 0.1.7 requires gradio, which is not installed.",
        # Kaggle's image has a newer aiohttp (datasets/fsspec); moshi's own server is not used
        "moshi 0.2.13 has requirement aiohttp<3.12,>=3.10.5, but you have aiohttp 3.14.5.",
    ]
    unknown = [
        # same complaint, another release of the package: must be looked at again
        "moshi 0.3.0 has requirement huggingface-hub<1.0.0,>=0.24, but you have huggingface-hub 2.4.0.",
        # a dependency we do install must never be missing
        "chatterbox-tts 0.1.7 requires librosa, which is not installed.",
        # a pin of ours, not theirs
        "chatterbox-tts 0.1.7 has requirement librosa==0.11.0, but you have librosa 0.12.0.",
        # anyone else's conflict
        "flask-socketio 5.7.0 has requirement python-socketio>=5.12, but you have python-socketio 5.0.",
        "somepkg 1.0 is not supported on this platform",
    ]
    accepted, pre, unexpected = pc.classify(known + unknown)
    assert [line for line, _ in accepted] == known
    assert pre == []
    assert unexpected == unknown
    # Colab's own broken requirements, recorded before the install, are not ours.
    accepted, pre, unexpected = pc.classify(unknown[-1:], baseline=unknown[-1:])
    assert (accepted, pre, unexpected) == ([], unknown[-1:], [])


def test_runtime_holds_are_exact_constraints_for_what_the_runtime_ships() -> None:
    """`install.sh --colab` (Colab and Kaggle) holds these, so the runtime's CUDA torch and the
    packages its other libraries pin (Kaggle forces protobuf 5.29.x) are never moved."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "runtime_holds.py")], capture_output=True,
                          text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    held = {}
    for line in proc.stdout.split():
        req = Requirement(line)  # pip reads constraints the same way: no `name @ url` lines
        (spec,) = req.specifier
        assert spec.operator == "==" and not req.url, line
        held[req.name] = spec.version
    assert held == {name: md.version(name) for name in ("torch", "torchaudio", "torchvision", "numpy", "protobuf")}
