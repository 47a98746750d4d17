"""python -m prefetch: inspect the model manifest, build smoke models, (later) download models.

Usage:
    python -m prefetch --list [FAMILY ...]          the manifest as a table
    python -m prefetch --json [FAMILY ...]          the manifest as JSON (also: --list --json)
    python -m prefetch --smoke [--data-dir D] [--module M ...] [--no-discover] [FAMILY ...]
                                                    build the tiny random-weight smoke models of
                                                    every family that registered a builder, into
                                                    <data dir>/models/
    python -m prefetch FAMILY ... | --all           download real models (not implemented yet)

The data dir is --data-dir, else $ENFOADS_DATA_DIR, else ./data. FAMILY is one of
image, face, whisper, tts, vita. --module imports an extra module that registers builders with
`@prefetch.manifest.smoke_builder(family)`; the families' own builder modules
(services/<family>/smoke.py or services/<family>_smoke.py) are imported by themselves unless
--no-discover is given.

Exit codes:
    0   success (with --smoke: every registered builder ran; families without one are listed)
    1   --smoke: a builder failed, or a builder module exists but failed to import
    2   the model downloader is not implemented yet (plain `python -m prefetch FAMILY ...`)
    64  usage error: bad arguments or an unknown family (argparse's own 2 is remapped so that
        2 keeps one meaning)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

from prefetch import manifest as mf

EXIT_OK = 0
EXIT_SMOKE_FAILED = 1
EXIT_NOT_IMPLEMENTED = 2
EXIT_USAGE = 64


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would exit 2: keep 2 for "not implemented"
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def default_data_dir() -> Path:
    return Path(os.environ.get("ENFOADS_DATA_DIR") or "data")


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


def _select(families: list[str]) -> list[mf.ModelSpec]:
    if not families:
        return list(mf.MANIFEST.values())
    return [s for s in mf.MANIFEST.values() if s.family in families]


def run_smoke(data_dir: Path, families: list[str], modules: list[str],
              discover: bool = True) -> int:
    wanted = families or list(mf.FAMILIES)
    errors = mf.discover_smoke_builders(modules, families=wanted, discover=discover)
    for module, err in errors.items():
        print(f"error: smoke builder module {module} failed to import: {err}", file=sys.stderr)
    models = mf.models_dir(data_dir)
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
                description="EnfoadsIA model manifest, smoke models and (later) downloads.",
                epilog="exit codes: 0 ok, 1 smoke build failed, 2 downloader not implemented "
                       "yet, 64 usage error")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--list", action="store_true", help="print the manifest as a table")
    mode.add_argument("--smoke", action="store_true",
                      help="build tiny random-weight models into <data dir>/models/")
    mode.add_argument("--all", action="store_true", help="download every family's models")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="data dir (default: $ENFOADS_DATA_DIR, else ./data)")
    p.add_argument("--module", action="append", default=[], metavar="MODULE",
                   help="(--smoke) import MODULE first; it registers builders (repeatable)")
    p.add_argument("--no-discover", action="store_true",
                   help="(--smoke) use only the builders of --module, not the families' own")
    p.add_argument("families", nargs="*", metavar="FAMILY",
                   help=f"one of: {', '.join(mf.FAMILIES)}")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    unknown = [f for f in args.families if f not in mf.FAMILIES]
    if unknown:
        parser.error(f"unknown family {', '.join(unknown)} (choose from {', '.join(mf.FAMILIES)})")
    if args.json and (args.smoke or args.all):
        parser.error("--json goes with --list (or alone)")
    data_dir = args.data_dir or default_data_dir()

    if args.json:
        specs = _select(args.families)
        print(json.dumps({"families": list(mf.FAMILIES),
                          "models": [s.to_dict() for s in specs]}, indent=2))
        return EXIT_OK
    if args.list:
        print(format_table(_select(args.families)))
        return EXIT_OK
    if args.smoke:
        return run_smoke(data_dir, args.families, args.module, discover=not args.no_discover)
    if args.all or args.families:
        fams = list(mf.FAMILIES) if args.all else args.families
        print(f"prefetch: downloading real models ({', '.join(fams)}) is not implemented yet. "
              f"See `python -m prefetch --list` for what would be fetched, or build the smoke "
              f"models with `python -m prefetch --smoke`.", file=sys.stderr)
        return EXIT_NOT_IMPLEMENTED
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
