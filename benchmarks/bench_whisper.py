"""Benchmarks of the whisper service (run by hand: ``python -m benchmarks.bench_whisper``).

1. Our path (`WhisperService.transcribe_file`: probe + PyAV decode + offloader + clamped timeline)
   vs a direct faster-whisper call (`WhisperModel.transcribe(path)`) on the same file, model and
   options, both with the model loaded, measured alternately in one run (goal: <= 1.05x).
2. Real-time factor (seconds of compute per second of audio) on CPU int8.
3. On a GPU, with `--model large-v3-turbo` present (python -m prefetch whisper): the RTF on ten
   minutes of Spanish speech.

Without --model-dir the tiny smoke model is built in a temp dir (CPU, random weights: the figures
say what our code costs around the model, not what a real model does). Speech: espeak-ng, Spanish.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEXT = ("Buenos días a todos. Hoy vamos a hablar de la inteligencia artificial en América Latina, "
        "de cómo los modelos de voz entienden el español y de lo que todavía nos falta por hacer. ")


def speech(path: Path, seconds: float) -> Path:
    """Spanish speech of about `seconds`, from espeak-ng (repeated text, one WAV)."""
    from services.media import decode_audio, encode_audio

    one = path.with_suffix(".one.wav")
    subprocess.run(["espeak-ng", "-v", "es", "-w", str(one), TEXT], check=True, capture_output=True)
    import numpy as np

    clip = decode_audio(one)
    reps = max(1, int(np.ceil(seconds * 16000 / clip.size)))
    path.write_bytes(encode_audio(np.tile(clip, reps)[: int(seconds * 16000)], 16000, "wav"))
    return path


def make_service(models_dir: Path, size: str, device: str, beam_size: int):
    from services.model_env import ModelEnv
    from services.vram import GB, VramOffloader
    from services.whisper import WhisperService

    vram = VramOffloader(device=device, budget_bytes=None if device.startswith("cuda") else 15 * GB)
    env = ModelEnv(models_dir=models_dir, profile="local", device=device, dtype="float16", vram=vram,
                   data_dir=models_dir.parent)
    return WhisperService(env, default_model=size, beam_size=beam_size)


def direct_decode(path: Path):
    """faster-whisper's own `decode_audio` (PyAV, s16 mono 16 kHz); its 1.2.1 release passes an
    argument PyAV >= 15 removed, so where that fails the same steps are done here."""
    import numpy as np
    from faster_whisper.audio import decode_audio

    try:
        return decode_audio(str(path))
    except TypeError:
        import av

        resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
        with av.open(str(path)) as container:
            chunks = [f.to_ndarray() for frame in container.decode(audio=0) for f in resampler.resample(frame)]
        chunks += [f.to_ndarray() for f in resampler.resample(None)]
        return np.concatenate(chunks, axis=1).reshape(-1).astype(np.float32) / 32768.0


def overhead(service, audio: Path, rounds: int, temperature: float) -> None:
    opts = service.options(temperature=temperature)
    key = service.default_key
    with service.env.vram.acquire(service.vram_name(key)) as model:  # the same loaded model for both
        def direct():
            segments, _ = model.transcribe(direct_decode(audio), language=opts.language, beam_size=opts.beam_size,
                                           temperature=temperature, vad_filter=True)
            return list(segments)

        ours, theirs = [], []
        direct()
        service.transcribe_file(audio, opts)  # warm-up
        for _ in range(rounds):
            t0 = time.perf_counter()
            direct()
            theirs.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            service.transcribe_file(audio, opts)
            ours.append(time.perf_counter() - t0)
    d, o = statistics.median(theirs), statistics.median(ours)
    print(f"direct faster-whisper   median {d * 1000:8.1f} ms  ({rounds} rounds)")
    print(f"our service path        median {o * 1000:8.1f} ms")
    print(f"ratio ours/direct       {o / d:.3f}x  (goal <= 1.05x)")


def rtf(service, audio: Path, seconds: float, temperature: float | None, label: str) -> None:
    opts = service.options(temperature=temperature)
    t0 = time.perf_counter()
    result = service.transcribe_file(audio, opts)
    dt = time.perf_counter() - t0
    print(f"{label}: {seconds:.0f} s of audio in {dt:.2f} s -> RTF {dt / seconds:.3f} "
          f"({seconds / dt:.1f}x real time; {len(result['segments'])} segments)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models-dir", type=Path, help="folder with <key>/ model dirs (default: build the smoke model)")
    p.add_argument("--model", default="base", help="size: base, small, large-v3-turbo")
    p.add_argument("--seconds", type=float, default=60.0, help="length of the CPU test audio")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from services.device import cuda_available

    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        models_dir = args.models_dir
        tiny = models_dir is None
        if tiny:
            from services.whisper.smoke import build_smoke

            models_dir = tmp_dir / "models"
            build_smoke(models_dir)
            args.model = "base"
        audio = speech(tmp_dir / "speech.wav", args.seconds)
        temperature = 0.0 if tiny else None  # a random model would walk the whole fallback schedule
        beam = 1 if tiny else 5
        print(f"model: {'tiny random smoke model' if tiny else args.model}, beam {beam}, audio {args.seconds:.0f} s")

        cpu = make_service(models_dir, args.model, "cpu", beam)
        print(f"compute type on cpu: {cpu.compute_type}")
        overhead(cpu, audio, args.rounds, temperature if temperature is not None else 0.0)
        rtf(cpu, audio, args.seconds, temperature, "CPU int8 RTF")

        if not cuda_available():
            print("GPU: none here; skipped the large-v3-turbo RTF on 10 min of speech")
            return
        gpu = make_service(models_dir, "large-v3-turbo", "cuda", 5)
        if not gpu.env.present(gpu.default_key):
            print("GPU: large-v3-turbo not on this machine (python -m prefetch whisper); skipped")
            return
        long_audio = speech(tmp_dir / "ten-minutes.wav", 600)
        gpu.transcribe_file(audio, gpu.options())  # load + warm-up
        print(f"compute type on GPU: {gpu.compute_type}")
        rtf(gpu, long_audio, 600, None, "GPU large-v3-turbo RTF")


if __name__ == "__main__":
    main()
