"""A bounded on-disk cache of generated images.

Lightning is deterministic for a given model, size, step count, prompt and seed, so asking again
returns the stored file without loading anything onto the GPU. Entries are plain files named by
the hash of what produced them; the least recently used go first when the folder outgrows its
budget (a hit refreshes the file's mtime).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from pathlib import Path

log = logging.getLogger("enfoads.image.cache")


class ImageCache:
    def __init__(self, root: Path, max_bytes: int):
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @staticmethod
    def key(parts: dict) -> str:
        blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def _path(self, key: str, fmt: str) -> Path:
        return self.root / f"{key}.{fmt}"

    def get(self, key: str, fmt: str) -> bytes | None:
        if not self.enabled:
            return None
        path = self._path(key, fmt)
        with self._lock:
            try:
                data = path.read_bytes()
                os.utime(path)
            except FileNotFoundError:
                return None
        return data

    def put(self, key: str, fmt: str, data: bytes) -> None:
        if not self.enabled or len(data) > self.max_bytes:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        # Written aside and renamed: a reader never sees half a file, even after a crash.
        fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            with self._lock:
                os.replace(tmp, self._path(key, fmt))
                self._trim()
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self._entries())

    def _entries(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [p for p in self.root.iterdir() if p.is_file() and not p.name.endswith(".part")]

    def _trim(self) -> None:
        entries = []
        for p in self._entries():
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            entries.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries, key=lambda e: e[0]):
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size
            log.debug("image cache over budget: dropped %s", path.name)
