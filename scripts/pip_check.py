#!/usr/bin/env python3
"""Run `pip check` in this interpreter's environment and fail on anything unexpected.

The packages in requirements/nodeps.txt are installed with --no-deps because their published
requirements conflict with current releases (see docs in that file and DESIGN.md,
"Dependencies"). `pip check` reports those pins. Each one we accept is listed in KNOWN below,
keyed by (installed package, its exact version, the requirement's project name, kind of
complaint); every other line is printed and makes the exit status 1.

Keys carry the package's exact version on purpose: bumping chatterbox-tts, moshi, ... makes their
lines show up again, to be re-checked and re-listed.

Usage:
    python scripts/pip_check.py [--baseline FILE] [--verbose]

--baseline FILE: a file holding `pip check` output taken before our install (Colab's own image
already has broken requirements of its own); lines found there are not ours and are ignored.
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, Iterable

MISSING = "missing"  # "<pkg> <ver> requires <dep>, which is not installed."
MISMATCH = "mismatch"  # "<pkg> <ver> has requirement <req>, but you have <dep> <ver>."

_MISSING_RE = re.compile(
    r"^(?P<pkg>\S+) (?P<ver>\S+) requires (?P<dep>[A-Za-z0-9][A-Za-z0-9._-]*), "
    r"which is not installed\.$"
)
_MISMATCH_RE = re.compile(
    r"^(?P<pkg>\S+) (?P<ver>\S+) has requirement (?P<req>.+), "
    r"but you have (?P<dep>\S+) (?P<have>\S+)\.$"
)


def normalize(name: str) -> str:
    """PEP 503 name normalization."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed(dist: str) -> bool:
    try:
        md.version(dist)
        return True
    except md.PackageNotFoundError:
        return False


def _onnxruntime_gpu_installed() -> bool:
    return _installed("onnxruntime-gpu")


def _always() -> bool:
    return True


@dataclass(frozen=True)
class Known:
    pkg: str
    ver: str
    dep: str
    kind: str
    why: str
    when: Callable[[], bool] = _always


_CB = ("chatterbox-tts", "0.1.7")
_MOSHI = ("moshi", "0.2.13")

KNOWN: tuple[Known, ...] = (
    # chatterbox-tts 0.1.7 pins an old stack; its code runs on the current one (DESIGN.md).
    Known(*_CB, "torch", MISMATCH, "pins torch==2.6.0; we run the torch Colab ships"),
    Known(*_CB, "torchaudio", MISMATCH, "pins torchaudio==2.6.0; we run Colab's pair"),
    Known(*_CB, "numpy", MISMATCH, "pins numpy<2 (Python<3.13); runs on numpy 2"),
    Known(*_CB, "transformers", MISMATCH, "pins transformers==5.2.0; we need a current one"),
    Known(*_CB, "diffusers", MISMATCH, "pins diffusers==0.29.0; SDXL service needs current"),
    Known(*_CB, "safetensors", MISMATCH, "pins safetensors==0.5.3; current needed"),
    Known(*_CB, "gradio", MISSING, "demo UI only, not used"),
    # moshi 0.2.13.
    Known(*_MOSHI, "torch", MISMATCH, "wants torch<2.10; runs on Colab's torch"),
    Known(*_MOSHI, "numpy", MISMATCH, "wants numpy<2.3"),
    Known(*_MOSHI, "safetensors", MISMATCH, "wants safetensors<0.8"),
    Known(*_MOSHI, "huggingface-hub", MISMATCH, "wants huggingface-hub<1; transformers 5 needs >=1"),
    Known(*_MOSHI, "bitsandbytes", MISSING, "8-bit quantization only, not used"),
    Known(*_MOSHI, "sounddevice", MISSING, "moshi's local mic client only, not used"),
    Known(*_MOSHI, "aiohttp", MISSING, "moshi's own web server/client only, not used"),
    Known(*_MOSHI, "aiohttp", MISMATCH, "wants aiohttp<3.12 for its own web server/client, not used; "
                                        "Kaggle's image ships a newer one (datasets, fsspec)"),
    # s3tokenizer 0.3.0 lists its dev tool as a runtime requirement.
    Known("s3tokenizer", "0.3.0", "pre-commit", MISSING, "a git-hook tool, not a runtime dep"),
    # insightface 0.7.3: build-time / CLI-only requirements.
    Known("insightface", "0.7.3", "cython", MISSING, "build-time only (extension is prebuilt)"),
    Known("insightface", "0.7.3", "easydict", MISSING, "imported nowhere in 0.7.3's package"),
    Known("insightface", "0.7.3", "prettytable", MISSING, "imported nowhere in 0.7.3's package"),
    # Colab: onnxruntime-gpu provides the `onnxruntime` module, but pip only knows the
    # distribution name `onnxruntime`, which must not be installed beside it.
    Known("faster-whisper", "1.2.1", "onnxruntime", MISSING,
          "onnxruntime-gpu provides the module", when=_onnxruntime_gpu_installed),
)


def parse(line: str) -> tuple[str, str, str, str] | None:
    """(pkg, ver, dep, kind) for a missing/mismatch line, else None."""
    m = _MISSING_RE.match(line)
    if m:
        return normalize(m["pkg"]), m["ver"], normalize(m["dep"]), MISSING
    m = _MISMATCH_RE.match(line)
    if m:
        return normalize(m["pkg"]), m["ver"], normalize(m["dep"]), MISMATCH
    return None


def known_reason(line: str, known: Iterable[Known] = KNOWN) -> str | None:
    """The reason a `pip check` line is accepted, or None if it is not."""
    key = parse(line)
    if key is None:
        return None
    for k in known:
        if (normalize(k.pkg), k.ver, normalize(k.dep), k.kind) == key and k.when():
            return k.why
    return None


def classify(lines: Iterable[str], baseline: Iterable[str] = ()) -> tuple[list, list, list]:
    """Split pip-check output lines into (accepted [(line, why)], pre-existing, unexpected)."""
    base = {b.strip() for b in baseline if b.strip()}
    accepted, preexisting, unexpected = [], [], []
    for raw in lines:
        line = raw.strip()
        if not line or line == "No broken requirements found.":
            continue
        why = known_reason(line)
        if why is not None:
            accepted.append((line, why))
        elif line in base:
            preexisting.append(line)
        else:
            unexpected.append(line)
    return accepted, preexisting, unexpected


def run_pip_check(python: str = sys.executable) -> list[str]:
    proc = subprocess.run(
        [python, "-m", "pip", "check"], capture_output=True, text=True, check=False
    )
    # pip prints the findings on stdout; stderr holds only warnings (e.g. about index config).
    return proc.stdout.splitlines()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", help="pip check output from before the install, to ignore")
    ap.add_argument("-v", "--verbose", action="store_true", help="also list accepted lines")
    args = ap.parse_args(argv)

    baseline: list[str] = []
    if args.baseline:
        try:
            with open(args.baseline, encoding="utf-8") as fh:
                baseline = fh.read().splitlines()
        except FileNotFoundError:
            pass

    accepted, preexisting, unexpected = classify(run_pip_check(), baseline)
    if args.verbose:
        for line, why in accepted:
            print(f"pip check: known: {line}  [{why}]")
        for line in preexisting:
            print(f"pip check: pre-existing: {line}")
    for line in unexpected:
        print(f"pip check: UNEXPECTED: {line}")
    summary = (
        f"pip check: {len(accepted)} known --no-deps line(s) accepted, "
        f"{len(preexisting)} pre-existing, {len(unexpected)} unexpected"
    )
    print(summary)
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
