"""Which notebook runtime runs us (Google Colab, Kaggle, or a plain machine), its secrets and the
folders data and models go to there.

Colab: secrets from `google.colab.userdata` (the key icon, with "Notebook access" on), data in
`/content/enfoads-data` (or Drive), models on the runtime's disk. Kaggle: secrets from
`kaggle_secrets.UserSecretsClient` (Add-ons > Secrets, attached to the notebook), data in
`/kaggle/working/enfoads-data` (kept with a saved version), models on the VM's local disk
(`/kaggle/tmp`, lost with the session). Both read secrets only from the notebook's main thread.
"""
from __future__ import annotations

import os
from pathlib import Path

COLAB, KAGGLE, LOCAL = "colab", "kaggle", "local"


def detect() -> str:
    # Kaggle's kernels set these; its image also ships google-colab-like modules, so check it first.
    if os.environ.get("KAGGLE_KERNEL_RUN_TYPE") or os.environ.get("KAGGLE_URL_BASE"):
        return KAGGLE
    try:
        import google.colab  # noqa: F401  type: ignore[import-not-found]
    except Exception:
        return LOCAL
    return COLAB


def default_dirs(runtime: str) -> tuple[Path, Path]:
    """(data dir, models dir) for the runtime: data where it survives longest, models on fast disk."""
    if runtime == COLAB:
        return Path("/content/enfoads-data"), Path("/content/enfoads-models")
    if runtime == KAGGLE:
        return Path("/kaggle/working/enfoads-data"), Path("/kaggle/tmp/enfoads-models")
    return Path("data"), Path("data/models")


def _colab_secret(name: str) -> tuple[str | None, str | None]:
    try:
        from google.colab import userdata  # type: ignore[import-not-found]

        value = userdata.get(name)
    except Exception as exc:  # SecretNotFoundError, NotebookAccessError, TimeoutException, ...
        kind = type(exc).__name__
        if "NotFound" in kind:
            return None, f"the Colab secret {name} does not exist"
        if "Access" in kind:
            return None, (f"the Colab secret {name} exists but this notebook has no access to it "
                          f"(turn on 'Notebook access' next to it in the secrets panel)")
        if "Timeout" in kind:
            return None, (f"reading the Colab secret {name} timed out (read it from the notebook's main "
                          f"thread)")
        return None, f"the Colab secret {name} could not be read ({kind})"
    return _non_empty(value, f"the Colab secret {name} is empty")


def _kaggle_secret(name: str) -> tuple[str | None, str | None]:
    try:
        from kaggle_secrets import UserSecretsClient  # type: ignore[import-not-found]

        value = UserSecretsClient().get_secret(name)
    except ImportError:
        return None, "kaggle_secrets does not import (not a Kaggle notebook?)"
    except Exception as exc:  # BackendError: missing, or not attached to this notebook
        return None, (f"the Kaggle secret {name} could not be read ({type(exc).__name__}): add it under "
                      f"Add-ons > Secrets and tick it for this notebook")
    return _non_empty(value, f"the Kaggle secret {name} is empty")


def _non_empty(value, problem: str) -> tuple[str | None, str | None]:
    value = value.strip() if isinstance(value, str) else ""
    return (value, None) if value else (None, problem)


def secret(name: str, runtime: str | None = None) -> tuple[str | None, str | None, str | None]:
    """(value, source, problem): a notebook secret, where it came from ("colab-secret" |
    "kaggle-secret"), or why it could not be read (None outside a notebook runtime)."""
    runtime = runtime or detect()
    if runtime == COLAB:
        value, problem = _colab_secret(name)
        return value, "colab-secret" if value else None, problem
    if runtime == KAGGLE:
        value, problem = _kaggle_secret(name)
        return value, "kaggle-secret" if value else None, problem
    return None, None, None
