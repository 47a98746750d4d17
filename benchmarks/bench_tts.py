"""TTS: time to first audio vs full synthesis for an 8-sentence Spanish text, HTTP vs direct call,
and (on a GPU with the real checkpoints) the real-time factor of each engine, Kyutai included
(English and French; Spanish is Chatterbox's).

Run by hand: `.venv/bin/python -m benchmarks.bench_tts [--real] [--runs 3]`.
Without --real it builds the tiny smoke models (CPU, random weights: the ratios are what it
measures, not the speech). With --real it uses the prefetched checkpoints (`python -m prefetch tts`)
on the GPU. Goals: first audio / full <= 0.25; HTTP / direct <= 1.10.

Kyutai Pocket TTS (Spanish, on the CPU whatever the machine) is measured in the same run: time to
first audio over HTTP (chunk-level streaming, what a client gets), the first frame of pocket_tts'
own frame-level stream (what the model can give), and the real-time factor. Goals on 2 cores with
the real weights: RTF <= 0.5, first audio <= 300 ms. With the tiny model the figures measure the
pipeline around a 70k-parameter network, not the real model's speed.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import requests

from backend.server import Server
from backend.settings import load_settings

TEXT = ("Hola, bienvenidos a nuestra demostración. Hoy vamos a hablar de inteligencia artificial. "
        "El sistema convierte texto en voz en español latinoamericano. Cada frase se genera por separado. "
        "Así el primer audio llega antes. La calidad depende del modelo y de la voz. "
        "También se puede clonar una voz con un clip corto. Gracias por escuchar.")


TEXTS = {
    "es": TEXT,
    "en": "Hello and welcome. This is a short test of speech synthesis. Every sentence is generated in turn.",
    "fr": "Bonjour et bienvenue. Ceci est un court essai de synthèse vocale. Chaque phrase est générée à son tour.",
}
CLAIMS = {
    "chatterbox-turbo": "seeds' claim on a T4: RTF 0.335 fp32, 0.535 bf16",
    "chatterbox-multilingual": "seeds' claim: Chatterbox on a T4 runs fp32",
    "kyutai-tts-1.6b-en_fr": "no claim in the seeds; < 1 is faster than real time",
}
POCKET = "kyutai-pocket-tts"
POCKET_SENTENCE = "Hola, bienvenidos a nuestra demostración de voz en español."


def bench_pocket(server, svc, runs: int) -> None:
    """Pocket TTS: first audio (HTTP stream; pocket_tts' own frame stream) and RTF, medians."""
    import torch

    from services.tts.service import SpeechRequest

    engine = svc.engines[POCKET]
    if not engine.available():
        print(f"{POCKET}: not prefetched (python -m prefetch tts)")
        return
    H = {"Authorization": "Bearer bench"}
    plan = svc.plan(SpeechRequest(text=TEXT, model=POCKET, language="es", chunk_size=120, seed=1))
    svc.synthesize(plan)  # warm-up: loads the Spanish model and the default voice
    first_http, first_native, rtf, seconds = [], [], [], 0.0
    for _ in range(runs):
        t0 = time.perf_counter()
        r = requests.post(f"{server.url}/v1/audio/speech", headers=H, stream=True, timeout=600,
                          json={"input": TEXT, "model": POCKET, "response_format": "pcm", "chunk_size": 50,
                                "stream_format": "audio"})
        next(r.iter_content(chunk_size=None))
        first_http.append(time.perf_counter() - t0)
        for _ in r.iter_content(chunk_size=None):
            pass

        def first_frame(models):
            tts = models.model("es")
            state = tts.get_state_for_audio_prompt(engine.env.locate("kyutai-pocket-tts-voices") / "languages"
                                                   / "spanish" / "embeddings" / "lola.safetensors")
            t = time.perf_counter()
            stream = tts.generate_audio_stream(state, POCKET_SENTENCE)
            next(stream)
            took = time.perf_counter() - t
            for _ in stream:
                pass
            return took

        first_native.append(svc.env.vram.run(POCKET, first_frame))
        t0 = time.perf_counter()
        samples = svc.synthesize(plan)
        took = time.perf_counter() - t0
        seconds = samples.size / engine.sample_rate
        rtf.append(took / seconds)
    med = statistics.median
    device = engine.device_for(svc.env.vram.device)
    print(f"{POCKET} [es, {device}, {torch.get_num_threads()} torch threads, {len(plan.chunks)} chunks, "
          f"{seconds:.2f} s of audio]:")
    print(f"  first audio over HTTP (first sentence chunk) {med(first_http) * 1000:.0f} ms, pocket_tts' own "
          f"frame stream {med(first_native) * 1000:.0f} ms (goal <= 300 ms)")
    print(f"  RTF {med(rtf):.3f} (goal <= 0.5 on 2 cores with the real weights)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--real", action="store_true", help="prefetched checkpoints instead of tiny smoke models")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-tts-"))
    if args.real:
        settings = load_settings(profile="colab", data_dir=tmp / "data", api_key="bench", port=0, job_wait_seconds=600)
    else:
        import torch

        from services.tts import smoke

        torch.set_num_threads(1)
        smoke.build(tmp / "models")
        settings = load_settings(profile="smoke", data_dir=tmp / "data", api_key="bench", device="cpu", port=0,
                                 job_wait_seconds=600, models_dir=tmp / "models")
    server = Server(settings).start()
    svc = server.app.extensions["enfoads.tts"]
    H = {"Authorization": "Bearer bench"}
    body = {"input": TEXT, "model": "chatterbox-multilingual", "language": "es", "response_format": "pcm",
            "chunk_size": 50, "seed": 1}
    from services.tts.service import SpeechRequest

    req = SpeechRequest(text=TEXT, chunk_size=50, seed=1)
    list(svc.stream(svc.plan(req)))  # warm-up: load the model

    first, full, direct, http = [], [], [], []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        r = requests.post(f"{server.url}/v1/audio/speech", json={**body, "stream_format": "audio"}, headers=H,
                          stream=True, timeout=600)
        it = r.iter_content(chunk_size=None)
        next(it)
        first.append(time.perf_counter() - t0)
        for _ in it:
            pass
        full.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        samples = svc.synthesize(svc.plan(req))
        direct.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        requests.post(f"{server.url}/v1/audio/speech", json=body, headers=H, timeout=600).raise_for_status()
        http.append(time.perf_counter() - t0)
    seconds = samples.size / svc.engines["chatterbox-multilingual"].sample_rate
    med = statistics.median
    print(f"chunks: {len(svc.plan(req).chunks)}  audio: {seconds:.2f} s  runs: {args.runs}  device: {settings.resolved_device}")
    print(f"stream: first audio {med(first):.3f} s, full {med(full):.3f} s, ratio {med(first) / med(full):.3f} (goal <= 0.25)")
    print(f"whole:  direct {med(direct):.3f} s, HTTP {med(http):.3f} s, ratio {med(http) / med(direct):.3f} (goal <= 1.10)")
    bench_pocket(server, svc, args.runs)
    if args.real:
        for name, engine in svc.engines.items():
            if name == POCKET:
                continue  # measured above
            if not engine.available():
                print(f"RTF {name}: not prefetched")
                continue
            for lang in [lang for lang in ("es", "en", "fr") if lang in engine.languages][:2]:
                plan = svc.plan(SpeechRequest(text=TEXTS[lang], model=name, language=lang, chunk_size=300))
                svc.synthesize(plan)  # warm-up (moshi also compiles on the first GPU run)
                t0 = time.perf_counter()
                out = svc.synthesize(plan)
                took = time.perf_counter() - t0
                print(f"RTF {name} [{lang}, {settings.dtype_name}]: {took / (out.size / engine.sample_rate):.3f}"
                      f"  ({CLAIMS.get(name, 'no claim in the seeds')})")
    server.stop()


if __name__ == "__main__":
    main()
