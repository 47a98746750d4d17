"""Server memory and threads under the inputs of issue #13 items 1-4, before and after (run by hand:
``python -m benchmarks.bench_bounds [--before REF] [--cases opus,raw,chunked,base64,slow]``).

Each case starts a real server (smoke profile, CPU) in a subprocess twice, once from a checkout of
`--before` (default `main`, exported with `git archive`) and once from this tree, sends the same
input to both, and samples the server's RSS and thread count every 0.1 s. It prints per case the
peak RSS over the idle server, the answer, and the ratio after/before.

1. opus: `--hours` (default 3) of silence as Opus (~1.3 MB/h) to /transcribe (async); peak RSS while
   it runs, and how long `DELETE /jobs/<id>` takes to stop it (sent `--cancel-after` s in).
2. raw: a raw H.264 stream (`--raw-seconds`, 64x64, 25 fps, no container) to /face-swap/video.
3. chunked: `--chunked-mb` (default 250) sent with Transfer-Encoding: chunked to /transcribe.
4. base64: a JSON body of `--base64-mb` (default 190) with a base64 file to /transcribe (zeros: stored,
   then refused as not media, so only the upload's cost is measured).
5. slow: `--slow-conns` (default 300) connections trickling a multipart body one byte every 5 s;
   threads and RSS after `--slow-seconds` (default 45).
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key"
H = {"Authorization": f"Bearer {KEY}"}

SERVER = """
import logging, sys
from backend.server import Server
from backend.settings import load_settings
logging.basicConfig(level=logging.WARNING)
s = Server(load_settings(profile="smoke", data_dir=sys.argv[1], models_dir=sys.argv[2], api_key="%s", port=0,
                         device="cpu", job_wait_seconds=0, whisper_beam_size=1))
print(s.port, flush=True)
s.serve_forever()
""" % KEY


def ffmpeg(*args: str) -> None:
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


class Sampler:
    def __init__(self, pid: int):
        self.proc = psutil.Process(pid)
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self.threads = self.proc.num_threads()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.1):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
                self.threads = max(self.threads, self.proc.num_threads())
            except psutil.Error:
                return

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {"peak_mb": (self.peak - self.base) / 2**20, "max_threads": self.threads}


class Server:
    def __init__(self, src: Path, models: Path):
        self.data = Path(tempfile.mkdtemp(prefix="bench-bounds-data-"))
        env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, str(self.data), str(models)], cwd=src, env=env,
                                     stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self):
        self.proc.terminate()
        self.proc.wait(30)


# ------------------------------------------------------------------ cases

def case_opus(server: Server, files: dict, args) -> dict:
    with open(files["opus"], "rb") as f:
        r = requests.post(f"{server.url}/transcribe", headers={**H, "Prefer": "respond-async"},
                          files={"file": ("silence.opus", f)}, data={"temperature": "0"}, timeout=600)
    if r.status_code != 202:
        return {"answer": f"{r.status_code} {r.text[:120]}"}
    job = r.json()["job_id"]
    time.sleep(args.cancel_after)
    t0 = time.monotonic()
    requests.delete(f"{server.url}/jobs/{job}", headers=H, timeout=30)
    while True:
        status = requests.get(f"{server.url}/jobs/{job}", headers=H, timeout=30).json()["status"]
        if status in ("cancelled", "failed", "succeeded"):
            break
        time.sleep(0.2)
    return {"answer": status, "cancel_s": time.monotonic() - t0}


def case_raw(server: Server, files: dict, args) -> dict:
    with open(files["raw"], "rb") as f, open(files["face"], "rb") as src:
        r = requests.post(f"{server.url}/face-swap/video", headers={**H, "Prefer": "respond-async"},
                          files={"source": ("s.png", src), "target": ("t.h264", f)}, timeout=600)
    if r.status_code != 202:
        return {"answer": f"{r.status_code} {r.json()['error'].get('code')}"}
    job = r.json()["job_id"]
    t0 = time.monotonic()
    while True:
        body = requests.get(f"{server.url}/jobs/{job}", headers=H, timeout=30).json()
        if body["status"] in ("cancelled", "failed", "succeeded"):
            break
        time.sleep(0.5)
    frames = (body.get("result") or {}).get("frames")
    return {"answer": f"job {body['status']}, {frames} frames in {time.monotonic() - t0:.0f} s"}


def _raw_post(server: Server, head: str, body_iter) -> str:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=300)
    sock.sendall(head.encode())
    try:
        for piece in body_iter:
            sock.sendall(piece)
    except (BrokenPipeError, ConnectionResetError):
        pass
    sock.settimeout(300)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            got = sock.recv(65536)
            if not got:
                break
            data += got
        data += sock.recv(65536)
    except (ConnectionResetError, socket.timeout):
        pass
    sock.close()
    status = data.split(b"\r\n", 1)[0].decode(errors="replace")
    body = data.partition(b"\r\n\r\n")[2]
    try:
        code = json.loads(body)["error"]["code"]
    except Exception:
        code = body[:80]
    return f"{status[9:12]} {code}"


def case_chunked(server: Server, files: dict, args) -> dict:
    head = (f"POST /transcribe HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {KEY}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    piece = b"A" * 2**20

    def chunks():
        yield b"b\r\n{\"file\": \"A\r\n"
        for _ in range(args.chunked_mb):
            yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        yield b"2\r\n\"}\r\n0\r\n\r\n"

    t0 = time.monotonic()
    answer = _raw_post(server, head, chunks())
    return {"answer": answer, "answer_s": time.monotonic() - t0}


def case_base64(server: Server, files: dict, args) -> dict:
    # not media: the server parses, decodes and stores it, then refuses it (415) without transcribing
    blob = b"\0" * int(args.base64_mb * 2**20 * 3 / 4)
    body = json.dumps({"file": base64.b64encode(blob).decode(), "response_format": "json"}).encode()
    head = (f"POST /transcribe HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {KEY}\r\nPrefer: respond-async\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    view = memoryview(body)
    answer = _raw_post(server, head, (view[i:i + 2**20] for i in range(0, len(body), 2**20)))
    return {"answer": answer, "body_mb": len(body) / 2**20}


def case_slow(server: Server, files: dict, args) -> dict:
    head = (f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {KEY}\r\n"
            "Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 102400\r\n\r\n").encode()
    socks = []
    for _ in range(args.slow_conns):
        try:
            s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            s.sendall(head)
            socks.append(s)
        except OSError:
            break
    t0 = time.monotonic()
    while time.monotonic() - t0 < args.slow_seconds:
        for s in socks:
            try:
                s.sendall(b"-")
            except OSError:
                pass
        time.sleep(5)
    threads_now = psutil.Process(server.proc.pid).num_threads()
    for s in socks:
        s.close()
    return {"answer": f"{len(socks)} connections; server threads after {args.slow_seconds:.0f} s: {threads_now}"}


CASES = {"opus": case_opus, "raw": case_raw, "chunked": case_chunked, "base64": case_base64, "slow": case_slow}


def make_files(tmp: Path, args) -> dict:
    from services.media import encode_audio
    import numpy as np

    files = {"opus": tmp / "silence.opus", "raw": tmp / "t.h264", "wav": tmp / "one.wav", "face": tmp / "face.png"}
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", str(int(args.hours * 3600)), "-c:a", "libopus",
           "-b:a", "6k", str(files["opus"]))
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x64:rate=25", "-t", str(args.raw_seconds), "-c:v", "libx264",
           "-f", "h264", str(files["raw"]))
    files["wav"].write_bytes(encode_audio(np.zeros(16000, np.float32), 16000, "wav"))
    from tests.face_media import png

    files["face"].write_bytes(png(faces=[(16, 16)]))
    return files


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--before", default="main", help="git ref of the code to compare against")
    p.add_argument("--cases", default="opus,raw,chunked,base64,slow")
    p.add_argument("--hours", type=float, default=3.0)
    p.add_argument("--cancel-after", type=float, default=20.0)
    p.add_argument("--raw-seconds", type=int, default=200)
    p.add_argument("--chunked-mb", type=int, default=250)
    p.add_argument("--base64-mb", type=float, default=190)
    p.add_argument("--slow-conns", type=int, default=300)
    p.add_argument("--slow-seconds", type=float, default=45)
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-bounds-"))
    before = tmp / "before"
    before.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
    models = tmp / "models"
    from prefetch import manifest

    manifest.discover_smoke_builders(families=("whisper", "face"))
    for family in ("whisper", "face"):
        manifest.SMOKE_BUILDERS[family](models)
    files = make_files(tmp, args)
    print(f"inputs: opus {files['opus'].stat().st_size / 2**20:.1f} MB ({args.hours:g} h), raw h264 "
          f"{files['raw'].stat().st_size / 2**10:.0f} KB ({args.raw_seconds} s)")

    for name in args.cases.split(","):
        results = {}
        for label, src in (("before", before), ("after", ROOT)):
            server = Server(src, models)
            try:
                sampler = Sampler(server.proc.pid)
                out = CASES[name](server, files, args)
                out.update(sampler.stop())
            finally:
                server.close()
            results[label] = out
            extra = "".join(f", {k} {v:.1f}" for k, v in out.items() if k in ("cancel_s", "answer_s", "body_mb"))
            print(f"{name:8s} {label:6s}: peak RSS +{out['peak_mb']:.0f} MB, max threads {out['max_threads']}"
                  f"{extra}; {out['answer']}", flush=True)
        b, a = results["before"]["peak_mb"], results["after"]["peak_mb"]
        print(f"{name:8s} ratio : peak RSS after/before = {a / b if b > 0 else float('nan'):.3f}\n", flush=True)


if __name__ == "__main__":
    main()
