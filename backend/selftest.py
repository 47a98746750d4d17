"""A self-test of each family through the public API, as a client would call it.

One real request per family against a running server (HTTP, and Socket.IO for the realtime
assistant), reporting what a user of this GPU wants to know: did it work, how long the model took
to load, how much VRAM it took, and its speed (real-time factor for audio, seconds per image, reply
latency for the assistant). Used by the notebook's diagnostics cell (and its CI mode) and by
`python -m backend.selftest URL KEY`.

A family the server does not offer (no /v1/models entry) is reported "not installed"; one whose
models are missing answers 503, reported "models missing" with the server's message (the prefetch
command).
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests

FAMILIES = ("tts", "whisper", "image", "pose", "face", "restore", "vita", "animate")  # tts first: its speech feeds the others
# Checks of a feature inside a family: run when the server offers that family's models (Real-ESRGAN is listed
# under image).
PART_OF = {"pose": "image", "restore": "image"}
SPEECH_TEXT = "Hola, esta es una prueba del servidor. ¿Me escuchas bien?"
VITA_PACKET = 128  # samples per `audio` packet, as VITA's page sends (one AudioWorklet block)
VITA_RATE = 16000
GB = 1024**3


@dataclass
class FamilyResult:
    family: str
    status: str  # ok | failed | not installed | models missing
    seconds: float | None = None  # wall time of the request (load included)
    load_seconds: float | None = None  # what the offloader measured for models loaded meanwhile
    vram_delta_gb: float | None = None  # allocated memory after - before
    speed: str = ""
    detail: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class SelfTestError(Exception):
    pass


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_results(results: list[FamilyResult]) -> str:
    rows = [(r.family, r.status, _fmt(r.seconds, ".2f"), _fmt(r.load_seconds, ".2f"),
             _fmt(r.vram_delta_gb, "+.2f"), r.speed or "-", r.detail) for r in results]
    headers = ("FAMILY", "STATUS", "REQUEST S", "LOAD S", "VRAM GB", "SPEED", "DETAIL")
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
             for cells in [headers, tuple("-" * w for w in widths), *rows]]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- test media

def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.asarray(samples, np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def read_audio(data: bytes) -> tuple[np.ndarray, int]:
    import soundfile as sf

    samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    if samples.ndim > 1:
        samples = samples.mean(axis=1)
    return samples, rate


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target or len(samples) == 0:
        return samples.astype(np.float32)
    n = int(round(len(samples) * target / rate))
    return np.interp(np.linspace(0, len(samples) - 1, n), np.arange(len(samples)), samples).astype(np.float32)


def espeak_speech(text: str = SPEECH_TEXT) -> tuple[np.ndarray, int] | None:
    """Spanish speech from espeak-ng when it is installed (CI has it), else None."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        try:
            subprocess.run([exe, "-v", "es", "-s", "150", "-w", str(path), text], check=True,
                           capture_output=True, timeout=30)
        except Exception:
            return None
        return read_audio(path.read_bytes())


def tone(seconds: float = 3.0, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.2 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2).astype(np.float32)


def face_images(profile: str) -> tuple[bytes, bytes, str]:
    """(source, target, what): a real group photo that ships with insightface for real models;
    for the smoke profile's tiny detector, the white 96x96 squares it is built to find."""
    if profile != "smoke":
        try:
            import insightface

            photo = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
            data = photo.read_bytes()
            return data, data, "insightface's t1.jpg"
        except Exception:
            pass
    from PIL import Image

    img = np.zeros((256, 256, 3), np.uint8)
    img[:] = (40, 80, 120)
    img[16:112, 16:112] = 255
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue(), buf.getvalue(), "a synthetic 256x256 picture"


def pose_photo(profile: str) -> tuple[bytes, str]:
    """A photo with people: insightface's group photo for real models; for the smoke profile's tiny
    detector, the white upright rectangle it is built to see as a person."""
    if profile != "smoke":
        source, _, what = face_images(profile)
        if what != "a synthetic 256x256 picture":
            return source, what
    from PIL import Image

    from services.pose.smoke import person_rect

    img = np.full((320, 320, 3), 40, np.uint8)
    x1, y1, x2, y2 = person_rect(320)
    img[y1:y2, x1:x2] = 255
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue(), "a synthetic 320x320 picture"


# ------------------------------------------------------------------------------------ the client

class SelfTest:
    def __init__(self, url: str, api_key: str, *, timeout: float = 600.0, image_size: str | None = None,
                 log=print):
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.log = log
        self.http = requests.Session()
        self.http.headers.update({"Authorization": f"Bearer {api_key}", "ngrok-skip-browser-warning": "1"})
        health = self.http.get(f"{self.url}/health", timeout=30)
        health.raise_for_status()
        self.profile = health.json().get("profile", "local")
        self.image_size = image_size or ("64x64" if self.profile == "smoke" else "1024x1024")
        self.speech: tuple[np.ndarray, int] | None = None  # (samples, rate): real speech when we have it
        self._tts_audio: tuple[np.ndarray, int] | None = None

    # -------------------------------------------------------------------------- bookkeeping
    def _models(self) -> dict[str, list[dict]]:
        r = self.http.get(f"{self.url}/v1/models", timeout=30)
        r.raise_for_status()
        out: dict[str, list[dict]] = {}
        for m in r.json()["data"]:
            out.setdefault(m.get("family") or "", []).append(m)
        return out

    def _vram(self) -> dict:
        r = self.http.get(f"{self.url}/vram-monitor", timeout=30)
        r.raise_for_status()
        return r.json()

    @staticmethod
    def _loads(snap: dict) -> dict[str, tuple[int, float | None]]:
        return {m["name"]: (m["loads"], m["load_seconds"]) for m in snap["offloader"]["models"]}

    def _error_text(self, r: requests.Response) -> str:
        try:
            err = r.json()["error"]
            return f"HTTP {r.status_code}: {err.get('message')}"
        except Exception:
            return f"HTTP {r.status_code}: {r.text[:200]}"

    def _check(self, r: requests.Response) -> requests.Response:
        if r.status_code == 503:
            raise _Unavailable(self._error_text(r))
        if r.status_code != 200:
            raise SelfTestError(self._error_text(r))
        return r

    # -------------------------------------------------------------------------- running
    def run(self, families=FAMILIES) -> list[FamilyResult]:
        offered = self._models()
        results = []
        for family in families:
            if PART_OF.get(family, family) not in offered:
                results.append(FamilyResult(family, "not installed",
                                            detail="this server has no routes for it (not merged/installed)"))
                continue
            results.append(self.run_one(family))
            r = results[-1]
            self.log(f"{family}: {r.status}" + (f" ({r.detail})" if r.detail else ""))
        return results

    def run_one(self, family: str) -> FamilyResult:
        before = self._vram()
        start = time.monotonic()
        try:
            speed_of, detail = getattr(self, f"_test_{family}")()
        except _Unavailable as exc:
            return FamilyResult(family, "models missing", time.monotonic() - start, detail=str(exc))
        except Exception as exc:
            return FamilyResult(family, "failed", time.monotonic() - start,
                                detail=f"{type(exc).__name__}: {exc}"[:400])
        seconds = time.monotonic() - start
        after = self._vram()
        old, new = self._loads(before), self._loads(after)
        loaded = [secs for name, (n, secs) in new.items() if n > old.get(name, (0, None))[0] and secs is not None]
        load = sum(loaded) if loaded else None
        result = FamilyResult(family, "ok", seconds, load,
                              round(after["allocated_gb"] - before["allocated_gb"], 3), detail=detail)
        result.speed = speed_of(max(seconds - (load or 0.0), 1e-6))
        return result

    # -------------------------------------------------------------------------- families
    def _test_tts(self):
        r = self._check(self.http.post(f"{self.url}/tts", json={"text": SPEECH_TEXT, "language": "es",
                                                                 "output_format": "wav"}, timeout=self.timeout))
        samples, rate = read_audio(r.content)
        if len(samples) == 0:
            raise SelfTestError("the speech came back empty")
        self._tts_audio = (samples, rate)
        duration = len(samples) / rate
        engine = r.headers.get("X-TTS-Engine", "?")
        return (lambda s: f"RTF {s / duration:.2f}"), f"{duration:.1f} s of audio at {rate} Hz by {engine}"

    def speech_sample(self) -> tuple[np.ndarray, int, str]:
        """Spanish speech to send: the TTS output on real models, espeak-ng, else a tone."""
        if self._tts_audio is not None and self.profile != "smoke":
            return (*self._tts_audio, "the TTS output")
        spoken = espeak_speech()
        if spoken is not None:
            return (*spoken, "espeak-ng speech")
        if self._tts_audio is not None:
            return (*self._tts_audio, "the TTS output")
        return tone(), 16000, "a tone"

    def _test_whisper(self):
        samples, rate, what = self.speech_sample()
        files = {"file": ("prueba.wav", wav_bytes(samples, rate), "audio/wav")}
        data = {"model": "whisper-1", "language": "es", "response_format": "verbose_json"}
        r = self._check(self.http.post(f"{self.url}/v1/audio/transcriptions", files=files, data=data,
                                       timeout=self.timeout))
        body = r.json()
        duration = float(body.get("duration") or len(samples) / rate)
        text = (body.get("text") or "").strip()
        return (lambda s: f"RTF {s / duration:.2f}"), f"{what}, {duration:.1f} s -> {text[:60]!r}"

    def _test_image(self):
        body = {"prompt": "un faro junto al mar al atardecer, acuarela", "size": self.image_size,
                "response_format": "b64_json", "seed": 7}
        r = self._check(self.http.post(f"{self.url}/v1/images/generations", json=body, timeout=self.timeout))
        from PIL import Image

        items = r.json()["data"]
        img = Image.open(io.BytesIO(base64.b64decode(items[0]["b64_json"])))
        want = tuple(int(v) for v in self.image_size.lower().split("x"))
        if img.size != want:
            raise SelfTestError(f"asked for {self.image_size}, got {img.size[0]}x{img.size[1]}")
        return (lambda s: f"{s / len(items):.2f} s/image"), f"{img.size[0]}x{img.size[1]} {img.format}"

    def _test_pose(self):
        """DWPose on a photo (/pose), then an image that follows the skeleton (the ControlNet)."""
        photo, what = pose_photo(self.profile)
        r = self._check(self.http.post(f"{self.url}/pose", files={"image": ("pose.png", photo)},
                                       data={"response_format": "url"}, timeout=self.timeout))
        found = r.json()
        if not found["count"]:
            raise SelfTestError(f"DWPose found nobody in {what}")
        body = {"prompt": "una bailarina en un escenario, foto", "size": self.image_size, "seed": 7,
                "response_format": "b64_json", "pose_image_asset": found["skeleton"]["asset"]}
        r = self._check(self.http.post(f"{self.url}/v1/images/generations", json=body, timeout=self.timeout))
        from PIL import Image

        img = Image.open(io.BytesIO(base64.b64decode(r.json()["data"][0]["b64_json"])))
        want = tuple(int(v) for v in self.image_size.lower().split("x"))
        if img.size != want:
            raise SelfTestError(f"asked for {self.image_size}, got {img.size[0]}x{img.size[1]}")
        return (lambda s: f"{s:.2f} s/pose+image"), (f"{what}: {found['count']} person(s), "
                                                      f"{img.size[0]}x{img.size[1]} image following the pose")

    def _test_face(self):
        source, target, what = face_images(self.profile)
        files = {"source": ("source.png", source), "target": ("target.png", target)}
        r = self._check(self.http.post(f"{self.url}/face-swap", files=files, data={"output_format": "png"},
                                       timeout=self.timeout))
        from PIL import Image

        out = Image.open(io.BytesIO(r.content))
        want = Image.open(io.BytesIO(target)).size
        if out.size != want:
            raise SelfTestError(f"the swapped image is {out.size}, the target {want}")
        found, swapped = r.headers.get("X-Faces-Found", "?"), r.headers.get("X-Faces-Swapped", "?")
        providers = r.headers.get("X-Onnx-Providers", "?")
        return (lambda s: f"{s:.2f} s/image"), f"{what}: {found} face(s) found, index(es) {swapped or '-'} swapped, on {providers}"

    def _test_restore(self):
        from PIL import Image

        if self.profile == "smoke":
            # half the face pictures' scale: the tiny detector (at 256) sees its 96 px square on its grid, and
            # x4 of 128x128 keeps the tiny Real-ESRGAN quick on a CPU
            img = Image.new("RGB", (128, 128), (40, 80, 120))
            img.paste((255, 255, 255), (8, 8, 56, 56))
            what = "a synthetic 128x128 picture"
        else:
            _, photo, what = face_images(self.profile)
            img = Image.open(io.BytesIO(photo)).convert("RGB")
            img.thumbnail((384, 384))  # x4 of a small picture: a quick check, and the faces stay findable
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        r = self._check(self.http.post(f"{self.url}/upscale", files={"image": ("photo.png", buf.getvalue())},
                                       data={"scale": "4", "face_enhance": "true"}, timeout=self.timeout))
        out = Image.open(io.BytesIO(r.content))
        if out.size != (img.width * 4, img.height * 4):
            raise SelfTestError(f"x4 of {img.width}x{img.height} came back {out.size[0]}x{out.size[1]}")
        faces = r.headers.get("X-Faces-Restored", "?")
        return (lambda s: f"{s:.2f} s/image"), (f"{what}: {img.width}x{img.height} -> {out.size[0]}x{out.size[1]}, "
                                                f"{faces} face(s) restored")

    def _test_animate(self):
        source, _, what = face_images(self.profile)
        samples, rate, said = self.speech_sample()
        samples = samples[:int(2.0 * rate)]  # two seconds of talking head: 50 frames
        files = {"source": ("source.png", source), "audio": ("speech.wav", wav_bytes(samples, rate), "audio/wav")}
        r = self._check(self.http.post(f"{self.url}/talking-head", files=files, timeout=self.timeout))
        body = r.json()
        if body["frames"] != round(len(samples) / rate * body["fps"]):
            raise SelfTestError(f"{body['frames']} frames for {len(samples) / rate:.2f} s of speech at {body['fps']} fps")
        frames = body["frames"]
        return ((lambda s: f"{frames / s:.1f} frames/s"),
                f"{what} speaking {said}: {frames} frames {body['width']}x{body['height']}")

    def _test_vita(self):
        exchange = VitaExchange(self.url, self.api_key, timeout=min(self.timeout, 180))
        samples, rate, what = self.speech_sample()
        outcome = exchange.run(resample(samples, rate, VITA_RATE))
        latency = outcome["latency"]
        detail = (f"{what}: heard {outcome['transcript'][:40]!r}, said {outcome['response'][:40]!r}, "
                  f"{outcome['audio_seconds']:.1f} s of reply audio; {self._magic_prompt_llm()}")
        return (lambda s: f"reply after {latency:.2f} s"), detail

    def _magic_prompt_llm(self) -> str:
        """The magic prompt's llm engine runs the assistant's model: check it writes a prompt too."""
        start = time.monotonic()
        r = self._check(self.http.post(f"{self.url}/magic-prompt", json={"idea": "un faro junto al mar",
                                                                          "engine": "llm"}, timeout=self.timeout))
        body = r.json()
        if body["engine"] != "llm":
            raise SelfTestError(f"the magic prompt's llm engine did not answer: {'; '.join(body['warnings'])}")
        return f"magic prompt by the llm in {time.monotonic() - start:.2f} s ({body['tokens']} CLIP tokens)"


class _Unavailable(Exception):
    pass


def _fatal_error(event) -> bool:
    """An `error` event that ends the exchange. `audio_throttled` does not: packets dropped when a
    stalled machine delivers a burst still leave a question the assistant can answer."""
    name, data = event[0], event[1]
    return name == "error" and not (isinstance(data, dict) and data.get("code") == "audio_throttled")


class VitaExchange:
    """One spoken question on Socket.IO /vita, VITA-1.5's protocol: `audio` packets of 128 int16
    samples as JSON strings; the reply comes as `transcript`, `response_text`, `audio` (int16 PCM,
    24 kHz) and `response_done`, or `error`."""

    def __init__(self, url: str, api_key: str, *, timeout: float = 120.0, speed: float = 1.0):
        self.url, self.api_key, self.timeout = url, api_key, timeout
        # x real time, a microphone's pace: a busy machine that stalls the sender (or the server)
        # for a moment then delivers a burst stays inside the server's audio rate limit and burst
        self.speed = speed

    def run(self, speech16k: np.ndarray) -> dict:
        import socketio

        events: list[tuple[str, object, float]] = []
        cond = threading.Condition()
        sio = socketio.Client(reconnection=False)

        def recorder(name):
            def record(*args):
                with cond:
                    events.append((name, args[0] if args else None, time.monotonic()))
                    cond.notify_all()
            return record

        for name in ("transcript", "response_text", "audio", "response_done", "error", "too_many_users",
                     "out_time", "stop_tts"):
            sio.on(name, recorder(name), namespace="/vita")
        try:
            sio.connect(self.url, namespaces=["/vita"], auth={"token": self.api_key},
                        headers={"ngrok-skip-browser-warning": "1"}, wait_timeout=20)
        except Exception as exc:
            raise SelfTestError(f"could not connect to /vita: {exc}") from None
        try:
            audio = np.concatenate([np.zeros(int(0.3 * VITA_RATE), np.float32), speech16k,
                                    np.zeros(int(1.2 * VITA_RATE), np.float32)])
            pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
            interval = VITA_PACKET / VITA_RATE / self.speed
            start = time.monotonic()
            for i in range(0, len(pcm), VITA_PACKET):
                sio.emit("audio", json.dumps({"sample_rate": VITA_RATE,
                                              "audio": list(pcm[i:i + VITA_PACKET].tobytes())}), namespace="/vita")
                ahead = start + (i // VITA_PACKET + 1) * interval - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            sent = time.monotonic()
            deadline = sent + self.timeout
            with cond:
                while not any(e[0] in ("response_done", "too_many_users", "out_time") or _fatal_error(e)
                              for e in events):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        names = [e[0] for e in events] or ["nothing"]
                        raise SelfTestError(f"no reply within {self.timeout:.0f} s (received: {', '.join(names)})")
                    cond.wait(min(left, 0.2))
                got = list(events)
        finally:
            try:
                sio.disconnect()
            except Exception:
                pass
        for name, data, _ in got:
            if _fatal_error((name, data)):
                msg = data.get("message") if isinstance(data, dict) else data
                code = data.get("code") if isinstance(data, dict) else None
                if code in ("service_unavailable", "model_unavailable"):
                    raise _Unavailable(msg)  # one wording for every family: "models missing"
                raise SelfTestError(f"the assistant answered with an error: {msg}")
            if name in ("too_many_users", "out_time"):
                raise SelfTestError(f"the assistant refused the session: {name}")
        audio_chunks = [d for n, d, _ in got if n == "audio"]
        if not audio_chunks:
            raise SelfTestError("the reply had no audio")
        first_audio = min(t for n, _, t in got if n == "audio")

        def text_of(name):
            parts = []
            for n, d, _ in got:
                if n == name:
                    parts.append(d.get("text", "") if isinstance(d, dict) else str(d))
            return " ".join(p for p in parts if p).strip()

        nbytes = sum(len(bytes(c)) if isinstance(c, (bytes, bytearray, list)) else 0 for c in audio_chunks)
        return {"latency": max(first_audio - sent, 0.0), "transcript": text_of("transcript"),
                "response": text_of("response_text"), "audio_seconds": nbytes / 2 / 24000}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m backend.selftest",
                                description="One real request per family against a running server.")
    p.add_argument("url")
    p.add_argument("api_key")
    p.add_argument("families", nargs="*", default=list(FAMILIES), metavar="FAMILY")
    args = p.parse_args(argv)
    results = SelfTest(args.url, args.api_key).run(args.families)
    print(format_results(results))
    return 0 if all(r.ok or r.status == "not installed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
