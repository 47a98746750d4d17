"""Writes notebooks/enfoads_colab.ipynb from the cell sources below (run after editing them):

    python notebooks/make_notebook.py

The notebook's logic lives in backend/notebook.py, backend/selftest.py and prefetch/, which
have unit tests; the cells only wire them together. Colab reads `# @title` / `# @param` comments
as forms.
"""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

INTRO = """\
# EnfoadsIA backend · Servidor de IA en Colab o Kaggle

**Colab**: Run all (**Entorno de ejecución > Ejecutar todas**) on a **T4 GPU** runtime (Runtime >
Change runtime type > T4 GPU). **Kaggle**: Settings > Accelerator > **GPU T4 x2**, Internet on, then
Run all. Then copy the **URL** and the **API key** printed by cell 3 into the frontend's settings
(Ajustes > Backend).

Before the first run add these secrets (Colab: the key icon on the left, with notebook access;
Kaggle: Add-ons > Secrets, ticked for this notebook):
- `NGROK_AUTHTOKEN`: a free token from https://dashboard.ngrok.com/get-started/your-authtoken
  (without it, Colab falls back to its own proxy URL, which only works in this browser; Kaggle has none);
- `NGROK_DOMAIN` (optional): your free static ngrok domain (dashboard > Domains), so the URL in the
  frontend stays the same across restarts;
- `HF_TOKEN` (optional): a Hugging Face token, only needed for gated models;
- `ENFOADS_API_KEY` (optional): a fixed API key; otherwise one is generated and kept in the data dir.

Outside Colab and Kaggle (CI, `pytest --nbmake notebooks/`) the notebook runs in CI mode: it installs
nothing, builds tiny random-weight models, starts the server, sends one real request per family, and stops.
"""

SETUP = """\
# @title 1. Setup · Preparación { display-mode: "form" }
# @markdown Where to get the code (a branch, tag or commit) and the GPU check.
REPO_URL = "https://github.com/YOUR-ACCOUNT/enfoads-backend.git"  # @param {type:"string"}
REF = "main"  # @param {type:"string"}

import collections
import os
import subprocess
import sys
from pathlib import Path

# The same test as backend/runtime.py, which cannot be imported before the install.
if os.environ.get("KAGGLE_KERNEL_RUN_TYPE") or os.environ.get("KAGGLE_URL_BASE"):
    RUNTIME = "kaggle"
else:
    try:
        import google.colab  # noqa: F401
        RUNTIME = "colab"
    except ImportError:
        RUNTIME = "ci"
CI_MODE = RUNTIME == "ci"

if not CI_MODE:
    REPO = Path("/content/enfoads-backend" if RUNTIME == "colab" else "/kaggle/working/enfoads-backend")
    if not (REPO / ".git").is_dir():
        if "YOUR-ACCOUNT" in REPO_URL:
            raise SystemExit("Set REPO_URL (the form above) to the backend's git repository, then run again.")
        subprocess.run(["git", "clone", "--quiet", REPO_URL, str(REPO)], check=True)
    # Update to the chosen ref (branch, tag or commit); local edits in the clone are discarded.
    subprocess.run(["git", "-C", str(REPO), "fetch", "--quiet", "origin", REF], check=True)
    subprocess.run(["git", "-C", str(REPO), "checkout", "--quiet", "--force", "FETCH_HEAD"], check=True)
    print(subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=code: %h %s (%cr)"],
                         capture_output=True, text=True).stdout)
    # The runtime's torch, torchaudio, torchvision and numpy are held as constraints (never reinstalled),
    # into this kernel's own interpreter; the output shows here as it comes.
    install = subprocess.Popen(["bash", "scripts/install.sh", "--colab"], cwd=REPO, text=True,
                               env={**os.environ, "PYTHON": sys.executable},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    tail = collections.deque(maxlen=40)
    for line in install.stdout:
        print(line, end="")
        tail.append(line)
    if install.wait() != 0:
        raise SystemExit(f"The install failed (exit {install.returncode}). Its last lines:\\n" + "".join(tail))
else:
    REPO = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "backend" / "app.py").is_file())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # CI has no hub: a forgotten download fails fast
    print(f"CI mode (no google.colab): installing nothing, using the checkout at {REPO}")

os.chdir(REPO)
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from backend import notebook as nb

gpu_report, gpu_warning = nb.gpu_check()
print(gpu_report)
if gpu_warning:
    print("\\n*** WARNING ***", gpu_warning)
"""

PREFETCH = """\
# @title 2. Models · Descargar modelos { display-mode: "form" }
# @markdown Families to download (resumes; skips what is already there). Extra models: keys from
# @markdown `python -m prefetch --list`, e.g. `chatterbox-turbo kyutai-tts-1.6b-en_fr whisper-small`.
# @markdown TTS and VITA speak with `chatterbox-es-latam` (Latin-American Spanish); add
# @markdown `chatterbox-multilingual-v3` for the other 22 languages.
# @markdown Image also brings Real-ESRGAN x4/x2 (`/upscale`); Face also GFPGAN v1.4 (`/restore-faces`, and
# @markdown swapped faces restored on the GPU).
IMAGE = True  # @param {type:"boolean"}
FACE = True  # @param {type:"boolean"}
WHISPER = True  # @param {type:"boolean"}
TTS = True  # @param {type:"boolean"}
VITA = True  # @param {type:"boolean"}
ANIMATE = True  # @param {type:"boolean"}
EXTRA_MODELS = ""  # @param {type:"string"}

from prefetch.__main__ import main as prefetch

if CI_MODE:
    import tempfile
    DATA_DIR = Path(tempfile.mkdtemp(prefix="enfoads-ci-"))
    MODELS_DIR = DATA_DIR / "models"
    rc = prefetch(["--smoke", "--data-dir", str(DATA_DIR)])
    if rc != 0:
        raise RuntimeError(f"building the smoke models failed (exit {rc}); see above")
else:
    from backend import runtime

    # Models stay on the runtime's fast local disk (Drive would be slow and fill its quota).
    DEFAULT_DATA_DIR, MODELS_DIR = runtime.default_dirs(RUNTIME)
    names = nb.prefetch_names({"image": IMAGE, "face": FACE, "whisper": WHISPER, "tts": TTS, "vita": VITA,
                               "animate": ANIMATE}, EXTRA_MODELS)
    if not names:
        print("Nothing ticked: no model was downloaded. Routes whose models are missing answer 503.")
    rc = prefetch([*names, "--models-dir", str(MODELS_DIR)]) if names else 0
    if rc == 3:
        raise SystemExit("Not enough disk for the chosen models (see above): untick some, then run again.")
    if rc != 0:
        print("\\nSome models failed (see above): their routes will answer 503 with the command to retry; "
              "the others work. Rerun this cell to resume.")
"""

SERVER = """\
# @title 3. Server · Servidor { display-mode: "form" }
# @markdown Colab: keep data (jobs, outputs, voices, the API key) in Google Drive so it survives a
# @markdown runtime reset. (Kaggle keeps it in /kaggle/working, saved with a notebook version.)
USE_DRIVE = False  # @param {type:"boolean"}
# @markdown Several GPUs (README "Several GPUs"): `server` is the front (one URL for the frontend); with
# @markdown the secret ENFOADS_REDIS_URL set it sends jobs to workers. `worker` runs jobs of the families
# @markdown below for the front at FRONT_URL (secrets ENFOADS_REDIS_URL and ENFOADS_WORKER_KEY).
MODE = "server"  # @param ["server", "worker"]
FRONT_URL = ""  # @param {type:"string"}
WORKER_FAMILIES = "image,face,whisper,tts"  # @param {type:"string"}

if CI_MODE:
    settings = nb.settings_for(ci=True, data_dir=DATA_DIR)
elif MODE == "worker":
    settings = nb.settings_for(ci=False, data_dir=DEFAULT_DATA_DIR, models_dir=MODELS_DIR, front_url=FRONT_URL,
                               worker_families=WORKER_FAMILIES)
else:
    if USE_DRIVE and RUNTIME != "colab":
        print("USE_DRIVE works in Colab only: data stays in", DEFAULT_DATA_DIR)
    drive_dir = nb.mount_drive("EnfoadsIA") if USE_DRIVE else None
    settings = nb.settings_for(ci=False, data_dir=drive_dir or DEFAULT_DATA_DIR, models_dir=MODELS_DIR)

if MODE == "worker" and not CI_MODE:
    server, worker = None, nb.start_worker(settings)  # pulls jobs; opens no port, needs no tunnel
else:
    server = nb.start_server(settings)  # a second run of this cell reuses the running server (and says what it kept)
    if CI_MODE:
        public_url, provider = None, None
        print("CI mode: no Drive, no tunnel")
    else:
        from backend.tunnel import open_tunnel

        tunnel = open_tunnel(server.port, authtoken=settings.ngrok_authtoken, domain=server.settings.ngrok_domain)
        print(tunnel.message)
        public_url, provider = tunnel.public_url, tunnel.provider
    print(nb.connection_help(server, public_url, provider))
"""

DIAGNOSTICS = """\
# @title 4. Diagnostics · Diagnóstico { display-mode: "form" }
# @markdown System, GPU, packages, ONNX Runtime providers, the data dir; one real request per family
# @markdown (load time, VRAM change, speed on this GPU); a live VRAM view.
RUN_SELF_TEST = True  # @param {type:"boolean"}

if server is None:  # worker mode: the self-test runs on the front, through its URL
    print(nb.diagnostics_text(worker.settings))
else:
    print(nb.diagnostics_text(server.settings))  # the running server's settings, not the last form values
    print()
    if RUN_SELF_TEST or CI_MODE:
        from backend.selftest import SelfTest, format_results

        results = SelfTest(server.url, server.api_key).run()
        print()
        print(format_results(results))
    vram_box = nb.vram_view(server, seconds=10 if CI_MODE else 6 * 3600)
"""

CI_CHECK = """\
# @title 5. CI only · Solo en CI
# @markdown In Colab this cell does nothing: the server keeps running for the frontend.
if CI_MODE:
    try:
        broken = [r for r in results if r.status not in ("ok", "not installed")]
        assert not broken, "self-test failed: " + "; ".join(f"{r.family}: {r.status} ({r.detail})" for r in broken)
        assert any(r.ok for r in results), "no family answered"
    finally:
        nb.stop_server()
    print("CI mode: every installed family answered; server stopped")
"""


def build() -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata.update({
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "accelerator": "GPU",
        "colab": {"provenance": [], "gpuType": "T4", "toc_visible": True},
    })
    nb.cells = [new_markdown_cell(INTRO)] + [
        new_code_cell(src, metadata={"cellView": "form"}) for src in (SETUP, PREFETCH, SERVER, DIAGNOSTICS, CI_CHECK)
    ]
    names = ("intro", "setup", "prefetch", "server", "diagnostics", "ci-check")
    for cell, name in zip(nb.cells, names):
        cell.id = name  # stable ids: regenerating gives no diff
    return nb


def main() -> None:
    out = Path(__file__).with_name("enfoads_colab.ipynb")
    notebook = build()
    nbformat.validate(notebook)
    nbformat.write(notebook, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
