"""What the notebook's cells call, so that the cells stay a few lines each.

Works in four places: Colab (GPU runtime, secrets, Drive, tunnel), Kaggle (two T4s, secrets,
/kaggle/working), a plain Jupyter kernel, and the notebook's CI mode under nbmake (neither: smoke
models, no Drive, no tunnel).
"""
from __future__ import annotations

import collections
import logging
import os
import threading
import time
from pathlib import Path

from services import diagnostics

from . import runtime
from .server import Server
from .settings import Settings, load_settings

log = logging.getLogger("enfoads.notebook")

_lock = threading.Lock()
_server: Server | None = None  # one server per kernel: rerunning the server cell reuses it
_log_view: "LogView | None" = None


def in_colab() -> bool:
    return runtime.detect() == runtime.COLAB


def in_notebook_runtime() -> bool:
    """Colab or Kaggle: a GPU runtime with secrets, where the server is published."""
    return runtime.detect() in (runtime.COLAB, runtime.KAGGLE)


def find_repo_root(start: str | Path | None = None) -> Path:
    """The checkout holding backend/ (the notebook runs from notebooks/, or from the repo root)."""
    here = Path(start or Path.cwd()).resolve()
    for cand in (here, *here.parents):
        if (cand / "backend" / "app.py").is_file() and (cand / "prefetch").is_dir():
            return cand
    raise FileNotFoundError(f"no EnfoadsIA checkout (backend/app.py) in {here} or above")


# ------------------------------------------------------------------------------------------- GPU

def gpu_check() -> tuple[str, str | None]:
    """(report, warning): GPU name, VRAM, compute capability and the dtype it implies; a warning
    when the runtime has no GPU (the server still runs, on CPU, slowly)."""
    from services import device as device_policy

    info = diagnostics.gpu_info()
    if info.get("torch") is None:
        return "torch is not installed", "torch does not import: run the setup cell first"
    if not info.get("cuda_available"):
        warning = ("NO GPU: this runtime has none. The server will run on the CPU, where image "
                   "generation and speech take minutes instead of seconds. In Colab: Runtime > Change "
                   "runtime type > T4 GPU, then Run all again.")
        return f"torch {info['torch']}, CUDA not available; dtype float32", warning
    dtype = device_policy.dtype_name("cuda", "auto")
    report = (f"GPU: {info['gpu_name']}, {info['vram_total_gb']:.1f} GB VRAM "
              f"({info['vram_free_gb']:.1f} GB free), compute capability {info['compute_capability']} "
              f"-> dtype {dtype}; torch {info['torch']}, CUDA {info['cuda_version']}")
    warning = None
    if info["vram_total_gb"] < 14:
        warning = (f"this GPU has {info['vram_total_gb']:.1f} GB: the offloader will swap models more "
                   "often than on a 15 GB T4")
    ort = diagnostics.onnxruntime_providers()
    report += "\n" + ort_line(ort)
    if not ort.get("cuda_ok") and "CUDAExecutionProvider" in (ort.get("built_with") or []):
        # the build has CUDA but it does not start: face routes would answer 503 cuda_provider_failed
        warning = ("ONNX Runtime's CUDA provider does not start: " + (ort.get("reason") or "")
                   + (f". Fix: {ort['fix']}" if ort.get("fix") else "")) + (f"\n{warning}" if warning else "")
    return report, warning


# --------------------------------------------------------------------------------------- storage

def mount_drive(folder: str = "EnfoadsIA") -> Path | None:
    """Mount Google Drive and return <My Drive>/<folder> for the data dir, or None (not in Colab,
    or the mount was refused: the data dir then stays on the runtime's disk)."""
    if not in_colab():
        return None
    try:
        from google.colab import drive  # type: ignore[import-not-found]

        drive.mount("/content/drive")
    except Exception as exc:
        print(f"Google Drive not mounted ({type(exc).__name__}: {exc}); data stays on this runtime's disk "
              "and is lost when the runtime resets.")
        return None
    path = Path("/content/drive/MyDrive") / folder
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------------------------- server

class LogView:
    """The server log, live, in the output of the cell that started the server.

    The server logs from its own threads, long after the cell finished: one display updated in
    place (IPython display_id) keeps the last lines where the user looks, instead of scattering
    them into whichever cell runs next. Outside IPython, a plain stdout handler."""

    def __init__(self, lines: int = 30, interval: float = 1.0, level: int = logging.INFO):
        self.buffer: collections.deque[str] = collections.deque(maxlen=lines)
        self.interval = interval
        self.handler = logging.Handler(level)
        self.handler.emit = self._emit  # type: ignore[method-assign]
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                                                    "%H:%M:%S"))
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._display = None
        try:
            from IPython import get_ipython
            from IPython.display import display

            if get_ipython() is not None:
                self._display = display(self._text(), display_id=True)
        except Exception:
            self._display = None
        if self._display is not None:
            threading.Thread(target=self._refresh_loop, name="enfoads-log-view", daemon=True).start()

    def _text(self):
        from IPython.display import Pretty

        return Pretty("server log (latest lines):\n" + ("\n".join(self.buffer) or "(nothing yet)"))

    def _emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.handler.format(record)
        except Exception:
            line = record.getMessage()
        if self._display is None:
            print(line, flush=True)
            return
        self.buffer.append(line)
        self._dirty.set()

    def _refresh_loop(self) -> None:
        while not self._stop.is_set():
            if self._dirty.wait(self.interval) and not self._stop.is_set():
                self._dirty.clear()
                try:
                    self._display.update(self._text())
                except Exception:
                    pass
                time.sleep(self.interval)

    def attach(self) -> "LogView":
        root = logging.getLogger()
        if self._display is not None:
            # A library's logging.basicConfig() sends every record to stderr, i.e. into whichever
            # cell runs at the time: the view replaces it while it is attached.
            self._muted = [h for h in root.handlers if type(h) is logging.StreamHandler]
            for h in self._muted:
                root.removeHandler(h)
        root.addHandler(self.handler)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
        return self

    def detach(self) -> None:
        self._stop.set()
        root = logging.getLogger()
        root.removeHandler(self.handler)
        for h in getattr(self, "_muted", []):
            root.addHandler(h)


def running_server() -> Server | None:
    with _lock:
        return _server if _server is not None and not getattr(_server, "_stopped", False) else None


def _port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server's own socket
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def start_server(settings: Settings, *, show_log: bool = True) -> Server:
    """Start the app in a background thread of this kernel, once.

    A second call while it runs returns the running server (and says so) instead of starting
    another on the same port. A port held by something else is explained, not a traceback."""
    global _server, _log_view
    with _lock:
        if _server is not None and not getattr(_server, "_stopped", False):
            print(f"The server is already running at {_server.url} (started by an earlier run of this "
                  "cell); not starting a second one. Restart the runtime to start afresh.")
            changed = settings_changes(_server.settings, settings)
            if changed:
                print("NOT APPLIED: " + "; ".join(changed) + ". The running server keeps its settings; "
                      "to apply the new ones, restart the session (Runtime > Restart session), then run all cells.")
            return _server
        # Checked before building the app: werkzeug answers a taken port with sys.exit(1).
        if settings.port and not _port_free(settings.host, settings.port):
            raise RuntimeError(
                f"port {settings.port} is already in use by another process (a server started outside "
                "this notebook?). Stop it, or set ENFOADS_PORT to another port.")
        if show_log:
            if _log_view is not None:
                _log_view.detach()
            _log_view = LogView().attach()
        _server = Server(settings).start()
        return _server


def settings_changes(running: Settings, wanted: Settings) -> list[str]:
    """What the cell asked for that the running server does not have (it cannot change live)."""
    out = []
    for name in ("data_dir", "models_dir", "profile", "port"):
        have, want = getattr(running, name), getattr(wanted, name)
        if name != "port" and have is not None and want is not None and Path(have).resolve() != Path(want).resolve():
            out.append(f"{name} is {have}, not {want}")
        elif name == "port" and want and have != want:
            out.append(f"port is {have}, not {want}")
    return out


def stop_server() -> None:
    global _server, _log_view
    with _lock:
        server, _server = _server, None
        view, _log_view = _log_view, None
    if server is not None:
        server.stop()
    if view is not None:
        view.detach()


QUIET_UNLESS_SET = {"redis_url", "worker_key"}


def settings_for(*, ci: bool, data_dir: Path, **overrides) -> Settings:
    """The notebook's settings: Colab or Kaggle (GPU), or CI mode (smoke models on the CPU, a free port)."""
    if ci:
        # face_det_size 256: the smoke detector's grid (services/face/smoke.py)
        values = dict(profile="smoke", device="cpu", port=0, data_dir=data_dir, face_det_size=256)
    else:
        hosted = in_notebook_runtime()
        # Only defaults: ENFOADS_* variables the user set still win (explicit values would beat them).
        values = {name: value for name, value in (("profile", "colab" if hosted else "local"),
                                                  ("host", "0.0.0.0" if hosted else "127.0.0.1"))
                  if f"ENFOADS_{name.upper()}" not in os.environ}
        values["data_dir"] = data_dir
        # Notebook secrets are not in the environment: a fixed key or domain set as a secret is read here.
        for setting, name in (("api_key", "ENFOADS_API_KEY"), ("ngrok_domain", "NGROK_DOMAIN"),
                              ("redis_url", "ENFOADS_REDIS_URL"), ("worker_key", "ENFOADS_WORKER_KEY")):
            if name in os.environ or f"ENFOADS_{setting.upper()}" in os.environ:
                continue
            value, _source, problem = runtime.secret(name)
            if value:
                values[setting] = value
            elif problem and "does not exist" not in problem and setting in QUIET_UNLESS_SET:
                pass  # optional (distributed mode): a missing secret is the normal case, said nothing about
            elif problem and "does not exist" not in problem:
                print(f"{name}: {problem}; " + ("a generated key is used instead." if setting == "api_key"
                                                else "the tunnel gets a new random URL."))
    values.update(overrides)
    return load_settings(**values)


def connection_help(server: Server, public_url: str | None, provider: str | None) -> str:
    url = public_url or server.url
    lines = [
        "=" * 72,
        f"  URL (Servidor):  {url}",
        f"  API key (Clave): {server.key_for_display}",
        "=" * 72,
        "In the EnfoadsIA frontend: Settings (Ajustes) > Backend: paste the URL into 'Server URL' and the",
        "key into 'API key', then press 'Test connection'. The frontend sends the key as",
        "'Authorization: Bearer <key>' and, for Socket.IO, as auth: {token}.",
    ]
    if provider == "ngrok":
        lines.append("Clients must also send 'ngrok-skip-browser-warning: 1' (the frontend does).")
    elif provider == "colab-proxy":
        lines.append("This is Colab's proxy URL: it works only in this browser, signed in to Colab.")
    else:
        lines.append("This URL is local to this machine (no tunnel).")
    lines.append(f"Check it: curl {url}/health")
    b = server.app.extensions["enfoads"] if hasattr(server, "app") else None
    if b is not None and b.worker_key is not None:  # distributed mode: what each GPU worker needs (README "Several GPUs")
        lines += ["", "Distributed mode: jobs go to GPU workers through Redis. On each worker notebook, choose",
                  f"MODE = worker, FRONT_URL = {url}, and set the secrets ENFOADS_REDIS_URL (the same",
                  "Redis) and ENFOADS_WORKER_KEY:", f"  {b.worker_key}",
                  "(the worker key: never give it to a client; it is not an API key)."]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- worker

_worker = None  # one worker per kernel, like the server


def start_worker(settings: Settings):
    """Worker mode: this runtime's GPU runs jobs for a front elsewhere (no server, no tunnel)."""
    global _worker
    from .worker import FrontRefused, Worker

    with _lock:
        if _worker is not None:
            print(f"The worker {_worker.name} is already running (started by an earlier run of this cell).")
            return _worker
        try:
            worker = Worker(settings)
            worker.check_front()
        except SystemExit as exc:  # a missing setting: the message says which
            raise RuntimeError(str(exc)) from None
        except FrontRefused as exc:
            raise RuntimeError(f"the front refused this worker: {exc}. Copy the worker key the front's "
                               "server cell printed into the ENFOADS_WORKER_KEY secret.") from None
        worker.start()
        _worker = worker
    print(f"Worker {worker.name} is running jobs of {', '.join(settings.worker_families)} for "
          f"{settings.front_url}. Keep this runtime open; it serves nothing itself.")
    return worker


def stop_worker() -> None:
    global _worker
    with _lock:
        if _worker is not None:
            _worker.stop()
            _worker = None


# ----------------------------------------------------------------------------------- diagnostics

def ort_line(ort: dict) -> str:
    """ONNX Runtime as a person needs it: the providers a real session got, and why CUDA is not one."""
    line = f"ONNX Runtime {ort.get('version') or '-'}: usable {', '.join(ort.get('available') or []) or 'none'}"
    if not ort.get("cuda_ok") and ort.get("reason"):
        line += f"; CUDA: {ort['reason']}"
        if ort.get("fix"):
            line += f". Fix: {ort['fix']}"
    return line


def diagnostics_text(settings: Settings) -> str:
    r = diagnostics.report(settings.data_dir, device=settings.resolved_device, dtype=settings.dtype_name)
    gpu = r["gpu"]
    ort = r["onnxruntime"]
    pkgs = ", ".join(f"{k} {v}" for k, v in r["packages"].items() if v)
    absent = ", ".join(k for k, v in r["packages"].items()
                       if not v and not r["packages"].get(diagnostics.ALTERNATIVES.get(k, "")))
    lines = [
        f"Python {r['python']} on {r['platform']}",
        f"device {r['device']}, dtype {r['dtype']}",
        ("GPU: " + (f"{gpu.get('gpu_name')}, {gpu.get('vram_total_gb')} GB, compute {gpu.get('compute_capability')}, "
                    f"CUDA {gpu.get('cuda_version')}" if gpu.get("cuda_available") else "none (CPU only)")),
        ort_line(ort),
        f"data dir: {r['disk']['path']} ({r['disk']['free_gb']} GB free of {r['disk']['total_gb']} GB)",
        f"packages: {pkgs}",
    ]
    if absent:
        lines.append(f"not installed: {absent}")
    return "\n".join(lines)


def vram_text(server: Server) -> str:
    snap = server.app.extensions["enfoads"].vram.snapshot()
    gb = 1024**3
    lines = [f"{snap['device']}: {snap['used_bytes'] / gb:.2f} GB used of {snap['budget_bytes'] / gb:.2f} GB "
             f"budget, peak {snap['peak_bytes'] / gb:.2f} GB, swaps {snap['swaps']}"]
    devices = snap.get("devices") or []
    if len(devices) > 1:  # Kaggle's two T4s: one line each
        lines += [f"  {d['name']}: {d['used_bytes'] / gb:.2f} GB used of {d['budget_bytes'] / gb:.2f} GB"
                  for d in devices]
    for m in snap["models"]:
        lines.append(f"  {m['name']:<32} {m['family'] or '':<8} {m.get('device') or '':<7} {m['state']:<9} "
                     f"{m['bytes'] / gb:6.2f} GB" + ("  in use" if m["in_use"] else "") + ("  pinned" if m["pinned"] else ""))
    return "\n".join(lines)


def vram_view(server: Server, *, seconds: float = 3600, interval: float = 2.0):
    """A live VRAM view (ipywidgets, Colab's own: never installed here), refreshed in a background
    thread for `seconds`; without ipywidgets, one text snapshot."""
    try:
        import ipywidgets as widgets
        from IPython.display import display
    except Exception:
        print(vram_text(server))
        return None
    snap = server.app.extensions["enfoads"].vram.snapshot()
    bar = widgets.FloatProgress(min=0, max=max(snap["budget_bytes"], 1) / 1024**3, description="VRAM GB")
    text = widgets.HTML()
    box = widgets.VBox([bar, text])
    display(box)
    stop = threading.Event()

    def refresh():
        end = time.monotonic() + seconds
        while not stop.is_set() and time.monotonic() < end and running_server() is server:
            s = server.app.extensions["enfoads"].vram.snapshot()
            bar.value = s["used_bytes"] / 1024**3
            text.value = "<pre>" + vram_text(server) + "</pre>"
            stop.wait(interval)

    threading.Thread(target=refresh, name="enfoads-vram-view", daemon=True).start()
    box.stop = stop.set  # type: ignore[attr-defined]
    return box


# -------------------------------------------------------------------------------------- prefetch

# What a ticked family downloads by default: the models its default routes load. Others (the
# English and Turbo Chatterbox, Kyutai, smaller whispers) go in the form's extra-models field.
DEFAULT_MODELS: dict[str, tuple[str, ...]] = {
    # the 4-step Lightning UNet is the default; the 1/2/8-step files (5 GB each) only on request;
    # pose control (pose_image / pose_reference, POST /pose) needs the ControlNet and DWPose;
    # /upscale both Real-ESRGAN files (x4 is the default scale, x2 the other choice; 67 MB each)
    "image": ("sdxl-base", "sdxl-lightning-unet-4step", "sdxl-vae-fp16-fix", "controlnet-openpose-sdxl", "dwpose",
              "realesrgan-x4plus", "realesrgan-x2plus"),
    # the whole family: buffalo_l, inswapper and GFPGAN (restoring swapped faces is on by default on a GPU)
    "face": ("face",),
    "whisper": ("whisper-large-v3-turbo",),
    # Spanish first: Resemble's Latin-American Spanish V3 pack (it brings the shared V3 files it needs),
    # with its Chinese word segmenter (else spacy-pkuseg would fetch it into ~/.pkuseg)
    "tts": ("chatterbox-es-latam", "spacy-pkuseg-ontonotes"),
    # the assistant hears with whisper and speaks with Chatterbox
    "vita": ("vita", "whisper-large-v3-turbo", "chatterbox-es-latam", "spacy-pkuseg-ontonotes"),
    # LivePortrait finds faces with buffalo_l (prefetch adds it: the manifest says it requires it)
    "animate": ("liveportrait",),
}


def prefetch_names(choice: dict[str, bool], extra: str = "") -> list[str]:
    """`python -m prefetch` arguments (families and model keys) for the form's ticks + extras."""
    from prefetch import manifest as mf

    names: list[str] = []
    for family, ticked in choice.items():
        if family not in DEFAULT_MODELS:
            raise ValueError(f"unknown family {family!r}; known: {', '.join(DEFAULT_MODELS)}")
        if ticked:
            names += [n for n in DEFAULT_MODELS[family] if n not in names]
    for name in extra.replace(",", " ").split():
        if name not in mf.MANIFEST and name not in mf.FAMILIES:
            raise ValueError(f"unknown model {name!r} in the extra models; see `python -m prefetch --list`")
        if name not in names:
            names.append(name)
    return names
