#!/usr/bin/env bash
# Install the EnfoadsIA backend's Python dependencies. The one script README, CI and the Colab
# notebook call.
#
#   scripts/install.sh            CPU machine / CI: a venv at ${ENFOADS_VENV:-.venv} (repo root)
#   scripts/install.sh --dev      ... plus test tools (requirements/dev.txt) and the Debian
#                                 packages the tests use (espeak-ng, sox, chromium, chromium-driver)
#   scripts/install.sh --colab    Google Colab or Kaggle: into the kernel's own Python, no venv; its
#                                 torch, torchaudio, torchvision, numpy and protobuf are held, never
#                                 reinstalled (scripts/runtime_holds.py)
#   --clean                       (CPU mode) delete the venv first
#   --force                       ignore the up-to-date stamp
#
# Environment: ENFOADS_VENV (venv path, default .venv under the repo root), PYTHON (interpreter
# to build the venv with, or to install into with --colab), ENFOADS_INSTALL_VERBOSE=1 (pip output).
#
# Strategy (DESIGN.md, "Dependencies"): torch/torchaudio are held by a constraints file;
# requirements/nodeps.txt goes in with --no-deps and its real runtime deps are in
# requirements.txt; ONNX Runtime is `onnxruntime` on CPU machines, `onnxruntime-gpu` in Colab,
# never both; scripts/pip_check.py fails on any `pip check` line not known to come from the
# --no-deps pins. (pip itself may print "ERROR: pip's dependency resolver does not currently take
# into account all the packages that are installed..." followed by those same pins when it
# installs into an env that already has them: expected, not a failure; pip_check.py decides.)
# Colab: the notebook's setup cell runs `!bash scripts/install.sh --colab` (a no-op second run takes
# seconds); --colab --dev adds the test tools.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

MODE=cpu
DEV=0
CLEAN=0
FORCE=0
for arg in "$@"; do
    case "$arg" in
        --dev) DEV=1 ;;
        --colab) MODE=colab ;;
        --clean) CLEAN=1 ;;
        --force) FORCE=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | cut -c3-; exit 0 ;;
        *) echo "install.sh: unknown option: $arg (try --help)" >&2; exit 2 ;;
    esac
done

log() { echo "[install] $*" >&2; }
die() { echo "[install] ERROR: $*" >&2; exit 1; }

PIP_OPTS=(--progress-bar off)
[ "${ENFOADS_INSTALL_VERBOSE:-0}" = 1 ] || PIP_OPTS+=(-q)

# pip through the chosen interpreter. Drops the harmless "Location 'file:///...' is ignored"
# lines that a machine-wide pip config (extra local indexes) prints by the dozen; pipefail keeps
# pip's own exit status.
run_pip() {
    "$PY" -m pip "$@" 2>&1 | { grep -v -E "^WARNING: Location '[^']*' is ignored" || true; }
}

python_ok() {  # $1: interpreter; true if it is CPython 3.11-3.13
    "$1" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] <= (3, 13)))' 2>/dev/null
}

# ---------------------------------------------------------------------------------------------
# Debian packages the tests need (--dev, CPU mode). Tolerant: never fails the install.
# ---------------------------------------------------------------------------------------------
# redis-server: the cluster tests start their own on a free loopback port (never a system one).
APT_PACKAGES=(espeak-ng sox chromium chromium-driver fonts-liberation redis-server)

apt_install() {
    local missing=() p
    command -v dpkg-query >/dev/null 2>&1 || { log "no dpkg: install ${APT_PACKAGES[*]} by hand"; return 0; }
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ "${#missing[@]}" -eq 0 ]; then return 0; fi
    if [ "$(id -u)" != 0 ]; then
        log "not root: for the tests, please run: sudo apt-get install -y ${missing[*]}"
        return 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    # Wait for another apt/dpkg run to finish rather than failing on its lock.
    local apt=(apt-get -o DPkg::Lock::Timeout=600)
    # Refresh the package lists only when needed: a package without a candidate, or an install
    # that fails (stale lists point at files the mirror no longer has).
    local need_update=0
    for p in "${missing[@]}"; do
        apt-cache policy "$p" 2>/dev/null | grep -q 'Candidate: [^(]' || need_update=1
    done
    if [ "$need_update" = 1 ]; then log "apt-get update"; "${apt[@]}" update -qq || true; fi
    log "apt-get install ${missing[*]}"
    if ! "${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
        log "apt-get install failed; updating package lists and retrying"
        "${apt[@]}" update -qq || true
        "${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
            || log "WARNING: could not install ${missing[*]}; tests that need them will skip or fail"
    fi
}

# ---------------------------------------------------------------------------------------------
# Colab and Kaggle (its GPU image is built on Colab's): the kernel's own Python, its torch,
# torchaudio, torchvision, numpy and protobuf held.
# ---------------------------------------------------------------------------------------------
install_colab() {
    PY="${PYTHON:-python3}"
    local work="${ENFOADS_INSTALL_TMP:-/tmp/enfoads-install}"
    mkdir -p "$work"
    local cons="$work/colab-constraints.txt" base="$work/pip-check-before.txt"

    # Exact versions of what the runtime ships, held (scripts/runtime_holds.py says which and why).
    "$PY" scripts/runtime_holds.py >"$cons"
    grep -q '^torch==' "$cons" || die "no torch in this Python: --colab expects Colab's runtime"
    log "holding the runtime's: $(tr '\n' ' ' <"$cons")"

    # Colab's image has broken requirements of its own: remember them, so pip_check.py only
    # judges what this install changed.
    "$PY" -m pip check >"$base" 2>/dev/null || true

    # The CPU build and the GPU build of ONNX Runtime share the `onnxruntime` module directory:
    # remove the CPU one *before* installing the GPU one (removing it afterwards would delete
    # files the GPU build owns).
    if "$PY" -m pip show onnxruntime >/dev/null 2>&1; then
        log "uninstalling CPU onnxruntime"
        run_pip uninstall -y onnxruntime
    fi

    log "requirements.txt + requirements/colab.txt"
    run_pip install "${PIP_OPTS[@]}" -r requirements.txt -r requirements/colab.txt -c "$cons"
    log "--no-deps: $(grep -v -E '^\s*(#|$)' requirements/nodeps.txt | tr '\n' ' ')"
    run_pip install "${PIP_OPTS[@]}" --no-deps -r requirements/nodeps.txt -c "$cons"
    if [ "$DEV" = 1 ]; then
        log "requirements/dev.txt"
        run_pip install "${PIP_OPTS[@]}" -r requirements/dev.txt -c "$cons"
    fi

    # Belt and braces: if anything still pulled the CPU build, put the GPU build back whole.
    if "$PY" -m pip show onnxruntime >/dev/null 2>&1; then
        log "CPU onnxruntime came back; removing it and reinstalling onnxruntime-gpu"
        run_pip uninstall -y onnxruntime
        run_pip install "${PIP_OPTS[@]}" --force-reinstall --no-deps -r requirements/colab.txt
    fi

    "$PY" scripts/pip_check.py --baseline "$base"
    report_versions
}

# ---------------------------------------------------------------------------------------------
# CPU machine / CI: a venv.
# ---------------------------------------------------------------------------------------------
find_python() {
    local c
    if [ -n "${PYTHON:-}" ]; then
        python_ok "$PYTHON" || die "PYTHON=$PYTHON is not Python 3.11-3.13"
        echo "$PYTHON"; return
    fi
    for c in python3 python3.12 python3.11 python3.13; do
        if command -v "$c" >/dev/null 2>&1 && python_ok "$c"; then echo "$c"; return; fi
    done
    die "need Python 3.11-3.13 (set PYTHON=/path/to/python)"
}

stamp_of() {  # hash of everything that decides the result of an install step
    {
        "$PY" -c 'import sys; print(sys.version)'
        cat "$@" scripts/install.sh scripts/pip_check.py
    } | sha256sum | cut -d' ' -f1
}

install_cpu() {
    local venv="${ENFOADS_VENV:-.venv}"
    case "$venv" in /*) ;; *) venv="$ROOT/$venv" ;; esac

    if [ "$CLEAN" = 1 ] && [ -d "$venv" ]; then
        log "removing $venv"
        rm -rf "$venv"
    fi
    if [ -x "$venv/bin/python" ] && ! python_ok "$venv/bin/python"; then
        log "$venv has a broken or unsupported Python; recreating it"
        rm -rf "$venv"
    fi
    if [ ! -x "$venv/bin/python" ]; then
        local base_py
        base_py="$(find_python)"
        log "creating venv $venv with $("$base_py" -V 2>&1)"
        "$base_py" -m venv "$venv"
    fi
    PY="$venv/bin/python"

    local base_files=(requirements.txt requirements/cpu.txt requirements/nodeps.txt)
    local base_stamp_file="$venv/.enfoads-install.stamp"
    local dev_stamp_file="$venv/.enfoads-install-dev.stamp"
    local base_stamp dev_stamp
    base_stamp="$(stamp_of "${base_files[@]}")"
    dev_stamp="$(stamp_of "${base_files[@]}" requirements/dev.txt)"

    if [ "$FORCE" = 0 ] && [ "$(cat "$base_stamp_file" 2>/dev/null)" = "$base_stamp" ]; then
        log "runtime dependencies up to date ($venv)"
    else
        rm -f "$base_stamp_file" "$dev_stamp_file"
        log "upgrading pip"
        run_pip install "${PIP_OPTS[@]}" -U pip
        log "requirements/cpu.txt (torch, torchaudio, torchvision, onnxruntime; several GB on a cold cache)"
        run_pip install "${PIP_OPTS[@]}" -r requirements/cpu.txt
        log "requirements.txt (torch held by requirements/cpu.txt)"
        run_pip install "${PIP_OPTS[@]}" -r requirements.txt -c requirements/cpu.txt
        log "--no-deps: $(grep -v -E '^\s*(#|$)' requirements/nodeps.txt | tr '\n' ' ')"
        run_pip install "${PIP_OPTS[@]}" --no-deps -r requirements/nodeps.txt -c requirements/cpu.txt
        "$PY" scripts/pip_check.py
        echo "$base_stamp" >"$base_stamp_file"
    fi

    if [ "$DEV" = 1 ]; then
        if [ "$FORCE" = 0 ] && [ "$(cat "$dev_stamp_file" 2>/dev/null)" = "$dev_stamp" ]; then
            log "dev dependencies up to date"
        else
            log "requirements/dev.txt"
            run_pip install "${PIP_OPTS[@]}" -r requirements/dev.txt -c requirements/cpu.txt
            "$PY" scripts/pip_check.py
            echo "$dev_stamp" >"$dev_stamp_file"
        fi
        apt_install
    fi
    report_versions
    log "done: activate with 'source ${venv#"$ROOT"/}/bin/activate' (or run $venv/bin/python)"
}

report_versions() {
    "$PY" - <<'EOF' >&2
import importlib.metadata as md
names = ["torch", "torchaudio", "torchvision", "numpy", "diffusers", "transformers",
         "huggingface-hub", "onnxruntime", "onnxruntime-gpu", "ctranslate2", "insightface",
         "faster-whisper", "chatterbox-tts", "moshi", "pocket-tts", "flask-socketio"]
found = []
for n in names:
    try:
        found.append(f"{n}=={md.version(n)}")
    except md.PackageNotFoundError:
        pass
print("[install] versions: " + " ".join(found))
EOF
}

if [ "$MODE" = colab ]; then
    install_colab
else
    install_cpu
fi
