"""Where a model's files are on this machine, offline: a local folder under <data>/models/<key>
(smoke models, pre-placed copies, url/zip downloads) or the Hugging Face cache at the pinned
revision. Never downloads: a missing model is a clear `ModelUnavailable` naming the command."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from services.errors import ModelUnavailable

from .manifest import ModelSpec, get


def prefetch_command(*models: ModelSpec | str, profile: str, models_dir: Path | None = None) -> str:
    """The command that gets exactly these models (and what they require), not their whole family,
    into the folder the running server reads; in a notebook kernel, a line to paste into a cell."""
    if profile == "smoke":
        command = "python -m prefetch --smoke"
    else:
        keys = " ".join(m.key if isinstance(m, ModelSpec) else m for m in models)
        command = f"python -m prefetch {keys}"
    if models_dir is not None:
        command += f" --models-dir {shlex.quote(str(Path(models_dir).resolve()))}"
    # the server runs inside the notebook's kernel: a shell line there needs the `!`
    return ("!" + command) if "ipykernel" in sys.modules else command


def _has_files(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def locate(key: str, models_dir: Path, profile: str) -> Path:
    spec = get(key)
    local = Path(models_dir) / key
    if _has_files(local):
        return local
    if profile != "smoke" and spec.repo_id:
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(spec.repo_id, revision=spec.revision, allow_patterns=list(spec.files) or None,
                                          local_files_only=True))
        except Exception:  # LocalEntryNotFoundError and friends: not in the cache
            pass
    raise ModelUnavailable(
        f"model '{key}' ({spec.family}) is not on this machine; run `{prefetch_command(spec, profile=profile, models_dir=models_dir)}` "
        f"(looked in {local}{' and the Hugging Face cache' if profile != 'smoke' and spec.repo_id else ''})",
        code="model_unavailable")


def is_present(key: str, models_dir: Path, profile: str) -> bool:
    try:
        locate(key, models_dir, profile)
    except ModelUnavailable:
        return False
    return True
