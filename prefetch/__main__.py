"""python -m prefetch: the model manifest, the downloader, the tiny smoke models.

Usage:
    python -m prefetch FAMILY|MODEL ... | --all      download (resumes; skips what is there)
    python -m prefetch --check [FAMILY|MODEL ...]    offline: what is present, what is missing
    python -m prefetch --list [FAMILY ...]           the manifest as a table
    python -m prefetch --json [FAMILY ...]           the manifest as JSON (also: --list --json)
    python -m prefetch --smoke [--data-dir D | --models-dir M] [--module M ...] [--no-discover] [FAMILY ...]
                                                     build the tiny random-weight smoke models of
                                                     every family that registered a builder, into
                                                     the models dir (--models-dir, $ENFOADS_MODELS_DIR,
                                                     else <data dir>/models/; no network)

FAMILY is one of image, face, whisper, tts, vita; MODEL a manifest key (see --list). Hub models go
into the Hugging Face cache (HF_HOME / --cache-dir) at the manifest's pinned revision, with
huggingface_hub's progress bars; url models (buffalo_l) into <models dir>/<key>/. Before anything
is downloaded the free disk is checked (--min-free-gb kept free). Gated models use HF_TOKEN (env
or Colab secret). The data dir is --data-dir, else $ENFOADS_DATA_DIR, else ./data; the models dir
--models-dir, else $ENFOADS_MODELS_DIR, else <data dir>/models.

--module imports an extra module that registers builders with
`@prefetch.manifest.smoke_builder(family)`; the families' own builder modules
(services/<family>/smoke.py or services/<family>_smoke.py) are imported by themselves unless
--no-discover is given.

Exit codes:
    0   success (download: every chosen model is ready; --check: all present; --smoke: every
        registered builder ran, families without one are listed)
    1   a download or a smoke builder failed (the message says which, why, how to retry)
    3   not enough free disk for the chosen models: nothing was downloaded
    4   --check: some chosen models are missing
    64  usage error: bad arguments or an unknown family/model (argparse's own 2 is remapped)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

from prefetch import download as dl
from prefetch import manifest as mf

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_SMOKE_FAILED = EXIT_FAILED
EXIT_NO_DISK = 3
EXIT_MISSING = 4
EXIT_USAGE = 64


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's 2 would be one more code for scripts to learn
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def default_data_dir() -> Path:
    return Path(os.environ.get("ENFOADS_DATA_DIR") or "data")


def default_models_dir(data_dir: Path) -> Path:
    env = os.environ.get("ENFOADS_MODELS_DIR")
    return Path(env) if env else mf.models_dir(data_dir)


def _gb(n: float) -> str:
    return f"{n / mf.GB:.2f}"


def format_table(specs: list[mf.ModelSpec]) -> str:
    headers = ("KEY", "FAMILY", "SOURCE (repo@revision)", "SIZE GB", "VRAM GB fp16", "RUNTIME",
               "LICENSE")
    rows = []
    for s in specs:
        loc = s.location + ("" if s.source != "hub" or s.pinned else " *")
        if s.gated:
            loc += " (gated)"
        rows.append((s.key, s.family, loc, _gb(s.size_bytes), _gb(mf.vram_estimate(s.key, "fp16")),
                     s.runtime, s.license))
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    right = {3, 4}

    def line(cells) -> str:
        out = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)]
        return "  ".join(out).rstrip()

    lines = [line(headers), line(["-" * w for w in widths])]
    lines += [line(r) for r in rows]
    total = sum(s.size_bytes for s in specs)
    unpinned = [s.key for s in specs if s.source == "hub" and not s.pinned]
    lines.append("")
    lines.append(f"{len(specs)} models, {_gb(total)} GB on disk in all"
                 + (f"; * = revision not pinned yet: {', '.join(unpinned)}" if unpinned else ""))
    return "\n".join(lines)


def run_smoke(models: Path, families: list[str], modules: list[str],
              discover: bool = True) -> int:
    wanted = families or list(mf.FAMILIES)
    errors = mf.discover_smoke_builders(modules, families=wanted, discover=discover)
    for module, err in errors.items():
        print(f"error: smoke builder module {module} failed to import: {err}", file=sys.stderr)
    models.mkdir(parents=True, exist_ok=True)
    failed = bool(errors)
    missing = []
    print(f"smoke models -> {models}")
    for fam in wanted:
        builder = mf.SMOKE_BUILDERS.get(fam)
        if builder is None:
            missing.append(fam)
            continue
        start = time.monotonic()
        try:
            builder(models)
        except Exception as exc:
            failed = True
            print(f"  {fam}: FAILED ({type(exc).__name__}: {exc})", file=sys.stderr)
            traceback.print_exc(file=sys.stderr)
            continue
        print(f"  {fam}: built in {time.monotonic() - start:.1f} s")
    if missing:
        print(f"  no smoke builder yet: {', '.join(missing)}")
    return EXIT_SMOKE_FAILED if failed else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m prefetch",
                description="EnfoadsIA model manifest, downloads and smoke models.",
                epilog="exit codes: 0 ok, 1 a download or smoke build failed, 3 not enough disk "
                       "(nothing downloaded), 4 --check found missing models, 64 usage error")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--list", action="store_true", help="print the manifest as a table")
    mode.add_argument("--smoke", action="store_true",
                      help="build tiny random-weight models into the models dir")
    mode.add_argument("--all", action="store_true", help="download every family's models")
    mode.add_argument("--check", action="store_true",
                      help="offline: which of the chosen models are present, which are missing")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="data dir (default: $ENFOADS_DATA_DIR, else ./data)")
    p.add_argument("--models-dir", type=Path, default=None,
                   help="local model folders (default: $ENFOADS_MODELS_DIR, else <data dir>/models)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="Hugging Face cache (default: huggingface_hub's, i.e. $HF_HOME/hub)")
    p.add_argument("--min-free-gb", type=float, default=dl.DEFAULT_MARGIN_BYTES / mf.GB,
                   help="disk to keep free beyond the downloads (default %(default).0f GB)")
    p.add_argument("--module", action="append", default=[], metavar="MODULE",
                   help="(--smoke) import MODULE first; it registers builders (repeatable)")
    p.add_argument("--no-discover", action="store_true",
                   help="(--smoke) use only the builders of --module, not the families' own")
    p.add_argument("families", nargs="*", metavar="FAMILY|MODEL",
                   help=f"a family ({', '.join(mf.FAMILIES)}) or a model key")
    return p


def run_check(specs: list[mf.ModelSpec], models_dir: Path, cache_dir: Path | None) -> int:
    items = dl.plan(specs, models_dir=models_dir, cache_dir=cache_dir)
    print(dl.format_check(items))
    return EXIT_OK if all(it.status == "present" for it in items) else EXIT_MISSING


def run_download(specs: list[mf.ModelSpec], models_dir: Path, cache_dir: Path | None,
                 margin_bytes: int) -> int:
    items = dl.plan(specs, models_dir=models_dir, cache_dir=cache_dir)
    hint = dl.shared_families_hint(specs)
    if hint:
        print(hint)
    todo = [it for it in items if it.need_bytes]
    print(f"{len(items)} models chosen, {len(items) - len(todo)} already here, "
          f"{sum(it.need_bytes for it in todo) / mf.GB:.2f} GB to download")
    problems = dl.disk_shortfalls(items, models_dir=models_dir, cache_dir=cache_dir,
                                  margin_bytes=margin_bytes)
    if problems:
        for p in problems:
            print(f"error: {p}", file=sys.stderr)
        print("nothing was downloaded", file=sys.stderr)
        return EXIT_NO_DISK
    token, source = dl.resolve_hf_token()
    if any(it.spec.gated for it in todo):
        print(f"gated models use the Hugging Face token from: {source}")
    outcomes = dl.download(items, models_dir=models_dir, cache_dir=cache_dir, token=token,
                           log=lambda m: print(m, flush=True))
    print()
    print(dl.format_summary(outcomes))
    return EXIT_FAILED if any(o.result == "failed" for o in outcomes) else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    unknown = [f for f in args.families if f not in mf.FAMILIES and f not in mf.MANIFEST]
    if unknown:
        parser.error(f"unknown family or model {', '.join(unknown)} (families: "
                     f"{', '.join(mf.FAMILIES)}; models: python -m prefetch --list)")
    if args.json and (args.smoke or args.all or args.check):
        parser.error("--json goes with --list (or alone)")
    data_dir = args.data_dir or default_data_dir()
    models_dir = args.models_dir or default_models_dir(data_dir)

    if args.json:
        specs = dl.select(args.families)
        print(json.dumps({"families": list(mf.FAMILIES),
                          "models": [s.to_dict() for s in specs]}, indent=2))
        return EXIT_OK
    if args.list:
        print(format_table(dl.select(args.families)))
        return EXIT_OK
    if args.smoke:
        smoke_families = [f for f in args.families if f in mf.FAMILIES]
        if len(smoke_families) != len(args.families):
            parser.error("--smoke takes families, not model keys")
        return run_smoke(models_dir, smoke_families, args.module, discover=not args.no_discover)
    if args.check:
        return run_check(dl.select(args.families), models_dir, args.cache_dir)
    if args.all or args.families:
        return run_download(dl.select(args.families, everything=args.all), models_dir,
                            args.cache_dir, int(args.min_free_gb * mf.GB))
    parser.print_help(sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # `python -m prefetch --json | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_OK
    sys.exit(code)
