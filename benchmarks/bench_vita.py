"""Benchmarks of the VITA realtime assistant (run by hand: ``python -m benchmarks.bench_vita``).

1. Sessions sustained: N sessions at once, each streaming real-time audio (128-sample packets,
   125 per second, as VITA's page sends) through the real packet parsing, throttle and Silero
   VAD; the models stay idle (the transcriber double hears nothing, so no reply starts). Prints
   p50/p99/max chunk handling time per N and whether the packets kept pace. Goal: >= 20 sessions
   with p99 < 16 ms on 2 cores.
2. The same through Socket.IO (a live server; the clients run in a child process so their CPU
   shows up as it would on another machine): server-side handling time of each `audio` event,
   the server's CPU per packet, and the 1-minute load average (the machine may be shared). Over
   WebSocket, the server as it is (one thread reads every WebSocket: backend/ws_hub.py) and with
   Engine.IO's own reader threads, alternated, with the p99 ratio.
3. End of speech -> first audio byte with tiny models (pipeline overhead): the tiny random
   Qwen2-VL, an instant transcriber and an instant tone speaker. Prints the time from the VAD's
   end-of-speech decision to the first `audio` event (server side), and from the last spoken
   sample to the client receiving audio (includes VITA's 500 ms end-of-speech silence).
4. On a GPU with the real VLM present (`python -m prefetch vita`): the same as 3 with
   Qwen2-VL-2B in fp16, against VITA-1.5's 1.5 s claim. Skipped otherwise.

Options: --sessions 1,5,10,20,30  --seconds 4  --skip-socketio  --skip-reply  --readers hub,threads
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RATE = 16000
PACKET = 128


def percentile(values, q):
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def speech_track(seconds: float) -> np.ndarray:
    """Spanish speech (espeak-ng) with pauses, looped to `seconds`."""
    from tests.vita_helpers import spanish_speech

    with tempfile.TemporaryDirectory() as tmp:
        speech = spanish_speech(Path(tmp))
    one = np.concatenate([speech, np.zeros(int(1.2 * RATE), np.float32)])
    reps = int(np.ceil(seconds * RATE / one.size))
    return np.tile(one, reps)[: int(seconds * RATE)]


def packet_strings(audio: np.ndarray) -> list[str]:
    from tests.vita_helpers import packets

    return list(packets(audio))


class Deaf:
    """A transcriber that hears nothing: utterances end there, the models stay idle."""

    def transcribe(self, audio, language):
        return "", "es"

    def language_probabilities(self, audio):
        return [("es", 1.0)]


# ------------------------------------------------------------------------------ 1. in-process


def bench_sessions(counts, seconds: float) -> list[tuple]:
    from services.vita.session import Session, VitaConfig
    from services.vita.vad import load_vad_model

    vad = load_vad_model()
    pkts = packet_strings(speech_track(seconds))
    rows = []
    for n in counts:
        sessions = [Session(f"s{i}", VitaConfig(), vad_model=vad, brain=None, transcriber=Deaf(), speaker=None,
                            emit=lambda *a: None) for i in range(n)]
        timings: list[list[float]] = [[] for _ in range(n)]
        lag = [0.0] * n
        start = time.monotonic() + 0.2

        def run(i):
            s, out = sessions[i], timings[i]
            offset = i * (PACKET / RATE) / n  # sessions' packets interleave, as real clients' do
            for k, pkt in enumerate(pkts):
                due = start + offset + k * PACKET / RATE
                now = time.monotonic()
                if due > now:
                    time.sleep(due - now)
                t0 = time.perf_counter()
                s.feed_audio(pkt)
                out.append(time.perf_counter() - t0)
            lag[i] = time.monotonic() - (start + offset + len(pkts) * PACKET / RATE)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        flat = [x * 1000 for ts in timings for x in ts]
        dropped = sum(s.stats["dropped"] for s in sessions)
        rows.append((n, percentile(flat, 50), percentile(flat, 99), max(flat), max(lag) * 1000, dropped,
                     sum(s.stats["utterances"] for s in sessions)))
    return rows


# ------------------------------------------------------------------------------ 2. Socket.IO


def _client_proc(url, token, n, pkts, ready, go, transport, client_cpu):
    from tests.vita_helpers import VitaClient

    clients = [VitaClient(url, token=token, transports=(transport,)) for _ in range(n)]
    ready.set()
    go.wait()
    start = time.monotonic()

    def run(i):
        c = clients[i]
        offset = i * (PACKET / RATE) / n
        for k, pkt in enumerate(pkts):
            due = start + offset + k * PACKET / RATE
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            c.sio.emit("audio", pkt, namespace="/vita")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(0.5)
    for c in clients:
        c.close()
    client_cpu.value = time.process_time() * 1e6 / (n * len(pkts))


def bench_socketio(counts, seconds: float, transport: str = "websocket", reader: str = "hub") -> list[tuple]:
    """`reader`: "hub" (the server as it is: one thread reads every WebSocket and handles the audio),
    or "threads" (Engine.IO's own: two threads per WebSocket), for the side-by-side figures."""
    from backend.server import Server
    from backend.settings import load_settings
    from services.vita import session as session_mod
    from services.vita.manager import VAD_NAME

    timings: list[float] = []
    lock = threading.Lock()
    original = session_mod.Session.feed_audio

    def timed(self, data):
        t0 = time.perf_counter()
        original(self, data)
        dt = time.perf_counter() - t0
        with lock:
            timings.append(dt)

    session_mod.Session.feed_audio = timed
    pkts = packet_strings(speech_track(seconds))
    rows = []
    try:
        for n in counts:
            with tempfile.TemporaryDirectory() as tmp:
                settings = load_settings(profile="smoke", data_dir=tmp, api_key="bench", device="cpu", port=0,
                                         vita_max_sessions=n, vita_preload=False, log_level="WARNING",
                                         # every bench client comes from one address
                                         socket_max_per_client=max(16, 2 * n))
                server = Server(settings)
                if reader == "threads":
                    from engineio.async_drivers._websocket_wsgi import SimpleWebSocketWSGI

                    eio = server.app.extensions["enfoads"].socketio.server.eio
                    eio._async = dict(eio._async, websocket=SimpleWebSocketWSGI)
                server.start()
                server.app.extensions["vita"].transcriber = Deaf()
                # load the VAD (and torch) now: a first connect that waits for it times the clients out
                with server.app.extensions["enfoads"].vram.acquire(VAD_NAME):
                    pass
                ctx = mp.get_context("spawn")
                ready, go, client_cpu = ctx.Event(), ctx.Event(), ctx.Value("d", float("nan"))
                proc = ctx.Process(target=_client_proc, args=(server.url, "bench", n, pkts, ready, go, transport,
                                                              client_cpu))
                proc.start()
                ready.wait(120)
                timings.clear()
                t0 = time.monotonic()
                cpu0 = time.process_time()
                go.set()
                proc.join()
                wall = time.monotonic() - t0
                # the server's own CPU per packet: on a shared machine latencies follow the
                # neighbours' load, this much less
                cpu = time.process_time() - cpu0
                handled = len(timings)
                flat = [x * 1000 for x in timings]
                rows.append((n, percentile(flat, 50), percentile(flat, 99), max(flat) if flat else float("nan"),
                             handled / (n * len(pkts)), wall, cpu / max(1, handled) * 1e6, client_cpu.value,
                             os.getloadavg()[0]))
                server.stop()
    finally:
        session_mod.Session.feed_audio = original
    return rows


# ------------------------------------------------------------------------------ 3/4. reply latency


class InstantTranscriber:
    def transcribe(self, audio, language):
        return "¿Qué ves delante de ti?", "es"

    def language_probabilities(self, audio):
        return [("es", 1.0)]


class InstantSpeaker:
    def synthesize(self, text, language, voice):
        yield np.zeros(2400, np.float32), 24000


def bench_reply(models_dir: Path, device: str, runs: int = 5, max_new_tokens: int = 24) -> dict:
    from backend.server import Server
    from backend.settings import load_settings
    from tests.vita_helpers import VitaClient

    from tests.vita_helpers import spanish_speech

    with tempfile.TemporaryDirectory() as tmp:
        speech = spanish_speech(Path(tmp))
        settings = load_settings(profile="smoke" if device == "cpu" else "colab", data_dir=tmp, api_key="bench",
                                 device=device, port=0, models_dir=models_dir, vita_max_new_tokens=max_new_tokens,
                                 vita_audio_rate_limit=20, vita_audio_burst_s=30, log_level="WARNING")
        server = Server(settings).start()
        manager = server.app.extensions["vita"]
        manager.transcriber, manager.speaker = InstantTranscriber(), InstantSpeaker()
        client = VitaClient(server.url, token="bench")
        server_side, client_side = [], []
        pkts = packet_strings(np.concatenate([speech, np.zeros(int(1.5 * RATE), np.float32)]))
        # the clip's last voiced sample (espeak-ng pads its WAVs with silence)
        speech_packets = int(np.nonzero(np.abs(speech) > 0.02)[0][-1]) // PACKET
        for run in range(runs + 1):  # the first run loads the model: not counted
            before = len(client.of("audio"))
            done = len(client.of("response_done"))
            start = time.monotonic()
            speech_end = None
            for k, pkt in enumerate(pkts):
                due = start + k * PACKET / RATE
                now = time.monotonic()
                if due > now:
                    time.sleep(due - now)
                client.sio.emit("audio", pkt, namespace="/vita")
                if k == speech_packets:
                    speech_end = time.monotonic()
            client.wait(lambda: len(client.of("audio")) > before, timeout=120)
            client.wait(lambda: len(client.of("response_done")) > done, timeout=120)
            audio_times = [t for (name, _), t in zip(client.events, client.stamps) if name == "audio"]
            arrived = audio_times[before]
            reply = manager.get(client.sid).last_reply
            if run and reply is not None and reply.first_audio_s is not None:
                server_side.append(reply.first_audio_s)
                client_side.append(arrived - speech_end)
        client.close()
        server.stop()
    return {"server": server_side, "client": client_side}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", default="1,5,10,20,30")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--skip-socketio", action="store_true")
    ap.add_argument("--transports", default="websocket,polling", help="Socket.IO transports for section 2")
    ap.add_argument("--readers", default="hub,threads", help="WebSocket readers for section 2 (hub: the server's)")
    ap.add_argument("--skip-in-process", action="store_true")
    ap.add_argument("--skip-reply", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # with Engine.IO's own readers (`--readers threads`) the dev server logs every closed WebSocket
    # as a bad request; the assistant's warnings about missing whisper/TTS are expected here
    # (doubles stand in)
    logging.getLogger("werkzeug").setLevel(logging.CRITICAL)
    logging.getLogger("enfoads").setLevel(logging.ERROR)
    counts = [int(x) for x in args.sessions.split(",")]
    print(f"CPU cores: {os.cpu_count()}; {args.seconds:g} s of real-time Spanish speech per session\n")

    if not args.skip_in_process:
        print("1. Sessions, in process (parse + throttle + Silero VAD per 128-sample packet)")
        print(f"{'sessions':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'late ms':>8} {'dropped':>8} {'utter.':>7}")
        for n, p50, p99, mx, late, dropped, utt in bench_sessions(counts, args.seconds):
            mark = "ok" if p99 < 16 and dropped == 0 else "OVER"
            print(f"{n:>8} {p50:>8.3f} {p99:>8.3f} {mx:>8.2f} {late:>8.1f} {dropped:>8} {utt:>7}  {mark}")

    if not args.skip_socketio:
        print("\n2. Sessions through Socket.IO (server-side handling of each `audio` event; clients in a child process"
              "\n   on the same cores: CPU per packet of the server, and of the clients)")
        print("   WebSocket readers: `hub` (the server: one thread reads every WebSocket and handles the audio)"
              "\n   and `threads` (Engine.IO's own: a reader and a handler thread per WebSocket), alternated")
        print(f"{'transport':>9} {'reader':>7} {'sessions':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'handled':>8}"
              f" {'wall s':>7} {'cpu us/pkt':>10} {'clients':>8} {'load':>5}")
        for transport in args.transports.split(","):
            readers = args.readers.split(",") if transport == "websocket" else ["-"]
            p99s = {}
            for n in counts:
                for reader in readers:
                    for _, p50, p99, mx, handled, wall, cpu, client, load in bench_socketio(
                            [n], args.seconds, transport, reader if reader != "-" else "hub"):
                        mark = "ok" if p99 < 16 and handled >= 0.9999 else "OVER"
                        p99s[(n, reader)] = p99
                        print(f"{transport:>9} {reader:>7} {n:>8} {p50:>8.3f} {p99:>8.3f} {mx:>8.2f} {handled:>8.1%}"
                              f" {wall:>7.1f} {cpu:>10.0f} {client:>8.0f} {load:>5.1f}  {mark}", flush=True)
            if {"hub", "threads"} <= set(readers):
                print("   p99 threads / hub: " + ", ".join(f"{n} sessions {p99s[(n, 'threads')] / p99s[(n, 'hub')]:.1f}x"
                                                        for n in counts))

    if not args.skip_reply:
        from prefetch.manifest import discover_smoke_builders, SMOKE_BUILDERS

        with tempfile.TemporaryDirectory() as tmp:
            discover_smoke_builders(families=["vita"])
            SMOKE_BUILDERS["vita"](Path(tmp))
            r = bench_reply(Path(tmp), "cpu")
        print("\n3. End of speech -> first audio byte, tiny models on CPU (pipeline overhead), 5 runs")
        print(f"   VAD end decision -> first audio emitted: median {statistics.median(r['server']) * 1000:.0f} ms"
              f" (max {max(r['server']) * 1000:.0f} ms)")
        print(f"   last spoken sample -> audio at the client (incl. the 500 ms VAD silence): median "
              f"{statistics.median(r['client']) * 1000:.0f} ms (max {max(r['client']) * 1000:.0f} ms)")

        from services.device import cuda_available

        print("\n4. Real Qwen2-VL-2B on the GPU vs VITA-1.5's 1.5 s claim")
        if not cuda_available():
            print("   skipped: no CUDA GPU here")
        else:
            from prefetch.locate import is_present
            from prefetch.manifest import VLM_KEY
            from backend.settings import load_settings

            models_dir = load_settings().models_dir
            if not is_present(VLM_KEY, models_dir, "colab"):
                print(f"   skipped: {VLM_KEY} is not on this machine (python -m prefetch vita)")
            else:
                r = bench_reply(models_dir, "cuda", max_new_tokens=64)
                med = statistics.median(r["client"])
                print(f"   VAD end -> first audio: median {statistics.median(r['server']) * 1000:.0f} ms; last spoken "
                      f"sample -> audio at the client: median {med * 1000:.0f} ms "
                      f"({'within' if med <= 1.5 else 'over'} 1.5 s; instant whisper/TTS doubles)")


if __name__ == "__main__":
    main()
