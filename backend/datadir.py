"""The data dir holds the API key, uploads, outputs and cloned voices: readable by us only.

Everything the server writes (SQLite, uploads, outputs, voices, cache) is created through the
process umask, so the umask is tightened once here rather than at each of those places; the
folder itself is set to 0700 so files that predate this (or come from other tools) are shut in
too. A filesystem without modes (a Drive mount) keeps what it has.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("enfoads")

PRIVATE_DIR = 0o700
PRIVATE_UMASK = 0o077


def restrict_umask() -> None:
    """Owner-only for every file and folder this process creates from now on (the server owns it:
    `python -m backend` or the notebook kernel that runs it)."""
    current = os.umask(PRIVATE_UMASK)
    os.umask(current | PRIVATE_UMASK)


def make_private(path: Path, mode: int) -> None:
    try:
        if path.stat().st_mode & 0o777 != mode:
            os.chmod(path, mode)
    except OSError as exc:  # not ours, or a filesystem without modes
        log.warning("could not make %s private (mode %o): %s", path, mode, exc)


def prepare_data_dir(data_dir: Path) -> None:
    restrict_umask()
    data_dir.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    make_private(data_dir, PRIVATE_DIR)
