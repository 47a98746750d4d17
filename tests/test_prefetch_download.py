"""The downloader: planning against a fake hub cache, the disk check, `--check`, exit codes, the
url download (Range resume, sha256, unzip into the face layout), failures that say what to do."""
import hashlib
import http.server
import io
import threading
import zipfile
from pathlib import Path

import pytest

from prefetch import __main__ as cli
from prefetch import download as dl
from prefetch import manifest as mf

GB = mf.GB


def fake_snapshot(cache: Path, spec: mf.ModelSpec, files: dict[str, bytes], *, blob_names: dict | None = None,
                  commit: str | None = None) -> Path:
    """The hub cache layout huggingface_hub writes: blobs/<etag>, snapshots/<commit>/<file> -> blob,
    refs/<branch> for unpinned revisions."""
    repo = dl.repo_folder(cache, spec.repo_id)
    commit = commit or (spec.revision if spec.pinned else "a" * 40)
    if not spec.pinned:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / spec.revision).write_text(commit)
    snap = repo / "snapshots" / commit
    for name, data in files.items():
        blob_name = (blob_names or {}).get(name) or hashlib.sha256(data).hexdigest()
        blob = repo / "blobs" / blob_name
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../" * (name.count("/") + 2)) / "blobs" / blob_name)
    return snap


def whisper_files() -> dict[str, bytes]:
    return {"config.json": b"{}", "preprocessor_config.json": b"{}", "model.bin": b"x" * 1000,
            "tokenizer.json": b"{}", "vocabulary.json": b"[]"}


@pytest.fixture
def dirs(tmp_path):
    return tmp_path / "models", tmp_path / "hub"


# ------------------------------------------------------------------------------------ planning

def test_plan_sees_a_complete_snapshot_a_partial_one_and_a_missing_one(dirs):
    models, cache = dirs
    base, small, turbo = mf.get("whisper-base"), mf.get("whisper-small"), mf.get("whisper-large-v3-turbo")
    fake_snapshot(cache, base, whisper_files())
    partial = whisper_files()
    del partial["model.bin"]
    fake_snapshot(cache, small, partial)
    items = {it.key: it for it in dl.plan([base, small, turbo], models_dir=models, cache_dir=cache)}

    assert items["whisper-base"].status == "present" and items["whisper-base"].need_bytes == 0
    assert items["whisper-small"].status == "partial" and items["whisper-small"].missing == ["model.bin"]
    assert 0 < items["whisper-small"].need_bytes < small.size_bytes
    assert items["whisper-large-v3-turbo"].status == "missing"
    assert items["whisper-large-v3-turbo"].need_bytes == turbo.size_bytes


def test_a_resumable_incomplete_blob_lowers_what_is_left(dirs):
    models, cache = dirs
    spec = mf.get("whisper-base")
    blobs = dl.repo_folder(cache, spec.repo_id) / "blobs"
    blobs.mkdir(parents=True)
    (blobs / ("f" * 64 + ".incomplete")).write_bytes(b"\0" * 5000)
    it = dl.plan([spec], models_dir=models, cache_dir=cache)[0]
    assert it.status == "partial" and it.have_bytes == 5000 and it.need_bytes == spec.size_bytes - 5000


def test_unpinned_revision_is_read_from_refs_and_glob_patterns_match(dirs):
    models, cache = dirs
    swapper = mf.get("inswapper_128")  # revision "main"
    voices = mf.get("kyutai-tts-voices")  # "*.1e68beda@240.safetensors" crosses folders
    fake_snapshot(cache, swapper, {"inswapper_128.onnx": b"w" * 10})
    fake_snapshot(cache, voices, {"expresso/a.wav.1e68beda@240.safetensors": b"v"})
    items = dl.plan([swapper, voices], models_dir=models, cache_dir=cache)
    assert [it.status for it in items] == ["present", "present"]


def test_a_local_copy_counts_as_present_like_locate_does(dirs):
    models, cache = dirs
    (models / "whisper-base").mkdir(parents=True)
    (models / "whisper-base" / "model.bin").write_bytes(b"x")
    it = dl.plan([mf.get("whisper-base")], models_dir=models, cache_dir=cache)[0]
    assert it.status == "present" and it.where == str(models / "whisper-base")


def test_url_model_is_present_only_in_the_face_layout(dirs):
    from services.face.models import check_pack

    models, cache = dirs
    spec = mf.get("buffalo_l")
    assert dl.plan([spec], models_dir=models, cache_dir=cache)[0].status == "missing"
    target = models / "buffalo_l" / dl.URL_LAYOUT["buffalo_l"]
    target.mkdir(parents=True)
    for name in spec.files:
        (target / name).write_bytes(b"onnx")
    assert dl.plan([spec], models_dir=models, cache_dir=cache)[0].status == "present"
    assert check_pack(models / "buffalo_l") == target  # where the face service reads it


def test_package_models_need_no_download(dirs):
    it = dl.plan([mf.get("silero-vad")], models_dir=dirs[0], cache_dir=dirs[1])[0]
    assert it.status == "present" and it.need_bytes == 0


def test_selecting_families_and_model_keys():
    assert [s.key for s in dl.select(["whisper-base", "face"])] == ["whisper-base", "buffalo_l", "inswapper_128",
                                                                "gfpgan-v1.4"]
    assert len(dl.select([], everything=True)) == len(mf.MANIFEST)
    assert "whisper" in dl.shared_families_hint(dl.select(["vita"]))
    assert dl.shared_families_hint(dl.select(["vita", "whisper", "tts"])) is None


# ---------------------------------------------------------------------------------- disk check

def test_disk_check_refuses_when_the_chosen_models_do_not_fit(dirs):
    models, cache = dirs
    items = dl.plan(dl.select(["tts"]), models_dir=models, cache_dir=cache)
    need = sum(it.need_bytes for it in items)
    problems = dl.disk_shortfalls(items, models_dir=models, cache_dir=cache, margin_bytes=GB,
                                  free_bytes=lambda p: need)  # fits without the margin only
    assert len(problems) == 1 and "not enough disk space" in problems[0] and f"{need / GB:.1f} GB" in problems[0]
    assert dl.disk_shortfalls(items, models_dir=models, cache_dir=cache, margin_bytes=GB,
                              free_bytes=lambda p: need + GB) == []


def test_cli_refuses_before_downloading_when_the_disk_is_too_small(dirs, monkeypatch, capsys):
    models, cache = dirs
    called = []
    monkeypatch.setattr(dl, "fetch_hub", lambda *a, **k: called.append(a))
    code = cli.main(["whisper", "--models-dir", str(models), "--cache-dir", str(cache), "--min-free-gb", "1e9"])
    assert code == cli.EXIT_NO_DISK == 3
    assert called == [] and "nothing was downloaded" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ --check

def test_check_lists_present_and_missing_and_exits_4_until_everything_is_there(dirs, capsys):
    models, cache = dirs
    fake_snapshot(cache, mf.get("whisper-base"), whisper_files())
    args = ["--check", "whisper", "--models-dir", str(models), "--cache-dir", str(cache)]
    assert cli.main(args) == cli.EXIT_MISSING == 4
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("whisper-")}
    assert "present" in lines["whisper-base"] and "missing" in lines["whisper-small"]
    assert "2 of 3 models missing" in out
    assert cli.main(["--check", "whisper-base", "--models-dir", str(models), "--cache-dir", str(cache)]) == 0
    assert "all 1 models present" in capsys.readouterr().out


# ---------------------------------------------------------------------------------- hub fetch

def test_hub_download_uses_the_pinned_revision_and_patterns_and_reports_a_summary(dirs, monkeypatch, capsys):
    models, cache = dirs
    calls = []

    def fake_snapshot_download(repo_id, **kw):
        calls.append((repo_id, kw))
        spec = next(s for s in mf.MANIFEST.values() if s.repo_id == repo_id)
        return str(fake_snapshot(Path(kw["cache_dir"]), spec, whisper_files()))

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    fake_snapshot(cache, mf.get("whisper-base"), whisper_files())  # already cached: not fetched
    code = cli.main(["whisper", "--models-dir", str(models), "--cache-dir", str(cache), "--min-free-gb", "0"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert [c[0] for c in calls] == ["mobiuslabsgmbh/faster-whisper-large-v3-turbo", "Systran/faster-whisper-small"]
    assert calls[0][1]["revision"] == mf.get("whisper-large-v3-turbo").revision
    assert calls[0][1]["allow_patterns"] == list(mf.get("whisper-large-v3-turbo").files)
    rows = {line.split()[0]: line.split()[-1] for line in out.splitlines() if line.startswith("whisper-")}
    assert rows == {"whisper-large-v3-turbo": "fetched", "whisper-small": "fetched", "whisper-base": "cached"}


def test_a_failed_download_names_the_model_why_and_how_to_retry(dirs, monkeypatch, capsys):
    from huggingface_hub.errors import RepositoryNotFoundError

    models, cache = dirs

    def boom(repo_id, **kw):
        if "small" in repo_id:
            err = RepositoryNotFoundError.__new__(RepositoryNotFoundError)  # its __init__ wants an HTTP response
            Exception.__init__(err, "404 Client Error: Repository Not Found")
            raise err
        raise OSError(28, "No space left on device")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", boom)
    code = cli.main(["whisper-small", "whisper-base", "--models-dir", str(models), "--cache-dir", str(cache),
                     "--min-free-gb", "0"])
    out = capsys.readouterr().out
    assert code == cli.EXIT_FAILED == 1
    assert "whisper-small (Systran/faster-whisper-small@536b066) failed: the repository" in out
    assert "whisper-base" in out and "the disk filled up" in out
    assert f"retry with `python -m prefetch whisper-small --models-dir {models.resolve()}`" in out


def test_a_file_that_is_not_the_pinned_one_is_refused(dirs):
    _, cache = dirs
    spec = mf.get("inswapper_128")  # the manifest knows its sha256
    snap = fake_snapshot(cache, spec, {"inswapper_128.onnx": b"not the real file"})
    with pytest.raises(dl.DownloadError, match="sha256"):
        dl.verify_hub_files(spec, snap)
    snap2 = fake_snapshot(cache, spec, {"inswapper_128.onnx": b"x"}, blob_names={"inswapper_128.onnx": spec.sha256},
                          commit="b" * 40)
    dl.verify_hub_files(spec, snap2)


# ---------------------------------------------------------------------------------- url fetch

class RangeHandler(http.server.BaseHTTPRequestHandler):
    payload = b""
    requests_seen: list = []
    cut_after: int | None = None  # first response stops after this many bytes (a dropped connection)

    def do_GET(self):
        rng = self.headers.get("Range")
        type(self).requests_seen.append(rng)
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        body = self.payload[start:]
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if type(self).cut_after is not None:
            body = body[:type(self).cut_after]
            type(self).cut_after = None
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def zip_server():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in mf.get("buffalo_l").files:
            zf.writestr(name, b"onnx-" + name.encode() * 2000)
    RangeHandler.payload = buf.getvalue()
    RangeHandler.requests_seen = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _url_spec(srv, sha):
    import dataclasses

    return dataclasses.replace(mf.get("buffalo_l"), url=f"http://127.0.0.1:{srv.server_port}/buffalo_l.zip",
                               sha256=sha)


def test_url_download_resumes_checks_sha256_and_unpacks_where_the_face_service_reads(zip_server, tmp_path):
    from services.face.models import check_pack

    models = tmp_path / "models"
    spec = _url_spec(zip_server, hashlib.sha256(RangeHandler.payload).hexdigest())
    RangeHandler.cut_after = 1000
    with pytest.raises(Exception):
        dl.fetch_url(spec, models_dir=models, chunk=250)  # the connection drops after 1000 bytes
    item = dl.plan([spec], models_dir=models, cache_dir=tmp_path / "hub")[0]
    assert item.status == "partial" and item.have_bytes == 1000

    dl.fetch_url(spec, models_dir=models)
    assert RangeHandler.requests_seen == [None, "bytes=1000-"]
    assert sorted(p.name for p in check_pack(models / "buffalo_l").glob("*.onnx")) == sorted(spec.files)
    assert not list((models / ".downloads").iterdir())  # the archive is gone
    assert dl.plan([spec], models_dir=models, cache_dir=tmp_path / "hub")[0].status == "present"


def test_url_download_with_a_wrong_checksum_fails_and_keeps_nothing(zip_server, tmp_path):
    models = tmp_path / "models"
    spec = _url_spec(zip_server, "0" * 64)
    outcome = dl.download(dl.plan([spec], models_dir=models, cache_dir=tmp_path / "hub"), models_dir=models,
                          log=lambda m: None)[0]
    assert outcome.result == "failed"
    assert "buffalo_l" in outcome.message and "expected " + "0" * 64 in outcome.message
    assert f"retry with `python -m prefetch buffalo_l --models-dir {models.resolve()}`" in outcome.message
    assert not (models / "buffalo_l").exists() and not list((models / ".downloads").iterdir())


def test_a_single_file_url_model_lands_where_the_restore_service_loads_it(zip_server, tmp_path):
    """Real-ESRGAN's .pth from its release URL (a file, not an archive): checked by sha256, stored as
    <models>/<key>/<file name>, and loaded from there by spandrel."""
    import dataclasses

    from services.restore import models as restore_models
    from services.restore.smoke import build_upscaler

    weights = tmp_path / "RealESRGAN_x2plus.pth"
    build_upscaler(weights, 2, seed=1)
    RangeHandler.payload = weights.read_bytes()
    spec = dataclasses.replace(mf.get("realesrgan-x2plus"),
                               url=f"http://127.0.0.1:{zip_server.server_port}/RealESRGAN_x2plus.pth",
                               sha256=hashlib.sha256(RangeHandler.payload).hexdigest())
    models = tmp_path / "models"
    item = dl.plan([spec], models_dir=models, cache_dir=tmp_path / "hub")[0]
    assert item.status == "missing" and item.need_bytes == spec.size_bytes  # no archive beside it
    dl.fetch_url(spec, models_dir=models)
    path = models / "realesrgan-x2plus" / "RealESRGAN_x2plus.pth"
    assert path.read_bytes() == RangeHandler.payload
    assert dl.plan([spec], models_dir=models, cache_dir=tmp_path / "hub")[0].status == "present"
    assert restore_models.load(path, "realesrgan-x2plus", device="cpu", dtype="float32").scale == 2


# ------------------------------------------------------------------- one model and what it needs

def test_one_model_id_downloads_that_model_and_the_models_it_requires(dirs, monkeypatch, capsys):
    """`python -m prefetch chatterbox-es-latam` (the command a 503 names) fetches the Latin-American
    Spanish pack and the shared V3 files it loads, at their pinned revisions, and nothing else."""
    models, cache = dirs
    calls = []

    def fake_snapshot_download(repo_id, **kw):
        calls.append((repo_id, kw["revision"], tuple(kw["allow_patterns"])))
        spec = next(s for s in mf.MANIFEST.values() if s.repo_id == repo_id and s.revision == kw["revision"]
                    and tuple(s.files) == tuple(kw["allow_patterns"]))
        files = {f.replace("*", "es_mx_latam"): b"x" for f in spec.files}
        return str(fake_snapshot(Path(kw["cache_dir"]), spec, files, blob_names=dict(spec.checksums)))

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    args = ["chatterbox-es-latam", "--models-dir", str(models), "--cache-dir", str(cache), "--min-free-gb", "0"]
    assert cli.main(args) == 0, capsys.readouterr()
    shared, pack = mf.get("chatterbox-v3-shared"), mf.get("chatterbox-es-latam")
    assert calls == [(shared.repo_id, shared.revision, shared.files), (pack.repo_id, pack.revision, pack.files)]
    assert "t3_*.safetensors" in pack.files and "ve.pt" in shared.files
    capsys.readouterr()
    assert cli.main(["--check", "chatterbox-es-latam", "--models-dir", str(models), "--cache-dir", str(cache)]) == 0
    assert "all 2 models present" in capsys.readouterr().out


def test_a_hint_in_a_notebook_kernel_is_a_line_to_paste_in_a_cell(monkeypatch, tmp_path):
    import sys
    import types

    from prefetch.locate import prefetch_command

    spec = mf.get("whisper-small")
    assert prefetch_command(spec, profile="colab", models_dir=tmp_path) == \
        f"python -m prefetch whisper-small --models-dir {tmp_path.resolve()}"
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    assert prefetch_command(spec, profile="colab", models_dir=tmp_path).startswith("!python -m prefetch whisper-small ")
    assert prefetch_command(spec, profile="smoke") == "!python -m prefetch --smoke"


def test_smoke_models_go_where_the_server_reads_and_the_hint_says_so(tmp_path, capsys):
    """`--smoke` builds into --models-dir (the folder a 503 names), not <data dir>/models."""
    from prefetch.__main__ import main
    from prefetch.locate import prefetch_command

    models = tmp_path / "elsewhere"
    assert main(["--smoke", "vita", "--data-dir", str(tmp_path / "data"), "--models-dir", str(models)]) == 0
    assert (models / mf.VLM_KEY / "config.json").is_file() and not (tmp_path / "data").exists()
    assert prefetch_command(mf.get(mf.VLM_KEY), profile="smoke", models_dir=models) == \
        f"python -m prefetch --smoke --models-dir {models.resolve()}"
