"""Mutation testing of the critical modules with mutmut 3 (run by hand: `scripts/mutation.sh [MODULE ...]`).

Each module is mutated alone, against only the test files that cover it (MODULES below), in its own
work folder outside the repo (`ENFOADS_MUTATION_DIR`, default `~/.cache/enfoads-mutation`), so one
module takes minutes and a second run only retries the functions that changed. The report lists
every mutant that no test killed, with its diff, and the score per module; mutants proven
equivalent are listed in `scripts/mutation-equivalent.txt` with the reason, and left out of it.
"""
from __future__ import annotations

import argparse
import filecmp
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALLOW_LIST = ROOT / "scripts" / "mutation-equivalent.txt"
GOAL = 0.85

# module -> the test files that exercise it (keep in step with the tests: a test file that covers a
# module but is missing here lets its mutants survive)
MODULES: dict[str, list[str]] = {
    "backend/auth.py": ["tests/test_auth_keys.py", "tests/test_app.py"],
    # test_jobs.py and test_job_lanes.py reach it too, through HTTP on a live server: ~1.5 h a run on 2 cores
    "backend/jobs.py": ["tests/test_jobs_units.py", "tests/test_jobs_retry.py"],
    "backend/uploads.py": ["tests/test_uploads.py"],
    # test_frontend_contract.py reaches it too, through /vram-monitor on a live server: a server start per mutant
    "services/vram.py": ["tests/test_vram.py", "tests/test_vram_devices.py"],
    "services/whisper/timeline.py": ["tests/test_whisper_timeline.py"],
    # test_whisper_service.py and test_whisper_video.py also reach it, through a model: minutes per mutant
    "services/whisper/subtitles.py": ["tests/test_subtitles.py"],
    # test_vita_vad_stream.py: the real Silero network under SileroStream and load_vad_model
    "services/vita/vad.py": ["tests/test_vita_vad.py", "tests/test_vita_vad_stream.py"],
    # test_vita.py reaches it too, through Socket.IO and the tiny models: a server start per mutant
    "services/vita/session.py": ["tests/test_vita_session.py"],
    # test_tts.py reaches it too, through HTTP and the tiny Chatterbox server: a server start per mutant
    "services/tts/voices.py": ["tests/test_tts_voices.py"],
    "services/tts/text.py": ["tests/test_tts_text.py"],
    # test_image.py reaches it too, through the tiny SDXL pipeline: minutes per mutant
    "services/image/params.py": ["tests/test_image_params.py"],
    "services/media.py": ["tests/test_media.py"],
    # test_pose.py reaches it too, through HTTP and the tiny SDXL pipeline: minutes per mutant
    "services/pose/dwpose.py": ["tests/test_pose_units.py"],
    # test_animate*.py reach them too, through the tiny LivePortrait over HTTP: minutes per mutant
    "services/animate/speech.py": ["tests/test_animate_units.py"],
    "services/animate/crop.py": ["tests/test_animate_units.py"],
    # test_restore_models.py and test_restore.py reach them too, on the tiny models (and HTTP): seconds per mutant
    "services/restore/params.py": ["tests/test_restore_units.py"],
    "services/restore/tiles.py": ["tests/test_restore_units.py"],
    "services/restore/faces.py": ["tests/test_restore_units.py"],
}
# Test files that import torch (directly or through the model code) run their mutants from a fork
# server that never ran a test itself: forking a process whose torch thread pools are running can hang.
TORCH_TESTS = {"tests/test_vita_units.py", "tests/test_vita_session.py", "tests/test_vita.py", "tests/test_vita_vad.py",
               "tests/test_vita_vad_stream.py",
               "tests/test_tts.py", "tests/test_image.py", "tests/test_whisper_service.py", "tests/test_vram.py",
               "tests/test_vram_devices.py",
               "tests/test_restore_units.py"}
SOURCE_PATHS = ["backend", "services", "prefetch"]
ALSO_COPY = ["README.md", "requirements.txt", "requirements", "scripts", "notebooks", "benchmarks", "data"]
# Log lines say what happened to a person reading the log; their wording is not behaviour.
DO_NOT_MUTATE_PATTERNS = [r"^\s*(log|logger)\.(debug|info|warning|error|exception)\("]
DETECTED = {"killed", "timeout", "caught by type check", "segfault"}


def resolve(name: str) -> str:
    if name in MODULES:
        return name
    hits = [m for m in MODULES if m.endswith("/" + name) or m.endswith("/" + name + ".py")
            or m.replace("/", ".").removesuffix(".py") == name]
    if len(hits) != 1:
        raise SystemExit(f"unknown module {name!r}: one of {', '.join(MODULES)}")
    return hits[0]


def sync_tree(dest: Path) -> None:
    """Copy the repo's tracked and untracked-but-not-ignored files, rewriting only changed ones (mutmut
    compares modification times to know what to mutate again)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src, dst = ROOT / rel, dest / rel
        if not src.is_file():
            continue
        if dst.is_file() and filecmp.cmp(src, dst, shallow=False):
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)  # mutmut copies sources, tests/ and also_copy into mutants/ on each run


def write_config(work: Path, module: str, tests: list[str]) -> None:
    def block(values: list[str]) -> str:
        return "".join(f"\n    {v}" for v in values)

    isolation = "forkserver" if TORCH_TESTS & set(tests) else "fork"
    config = (
        "[mutmut]\n"
        f"source_paths ={block(SOURCE_PATHS)}\n"
        f"only_mutate ={block([module])}\n"
        f"also_copy ={block(ALSO_COPY)}\n"
        f"pytest_add_cli_args_test_selection ={block(tests)}\n"
        f"pytest_add_cli_args ={block(['-p', 'no:cacheprovider', '-p', 'no:timeout'])}\n"
        f"do_not_mutate_patterns ={block(DO_NOT_MUTATE_PATTERNS)}\n"
        f"process_isolation = {isolation}\n")
    (work / "setup.cfg").write_text(config)


def allow_list() -> dict[str, tuple[str, str]]:
    """mutant name -> (text of the mutated line, reason)."""
    out = {}
    if not ALLOW_LIST.exists():
        return out
    for n, line in enumerate(ALLOW_LIST.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split(" | ")]
        if len(parts) != 3 or not all(parts):
            raise SystemExit(f"{ALLOW_LIST.name}:{n}: expected 'mutant name | mutated code | reason'")
        out[parts[0]] = (parts[1], parts[2])
    return out


def report(work: Path, module: str, allowed: dict[str, tuple[str, str]], only: str | None) -> dict:
    sys.path.insert(0, str(work))
    os.chdir(work)
    from mutmut import configuration
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.stats import status_by_exit_code

    configuration.reset_config()
    meta = json.loads((work / "mutants" / (module + ".meta")).read_text())
    status = {name: status_by_exit_code[code] for name, code in meta["exit_code_by_key"].items()
              if only is None or fnmatch.fnmatchcase(name, only)}
    counts: dict[str, int] = {}
    for s in status.values():
        counts[s] = counts.get(s, 0) + 1
    equivalent, stale, survivors = [], [], []
    for name, s in sorted(status.items(), key=lambda kv: _natural(kv[0])):
        if s in DETECTED:
            if name in allowed:
                stale.append((name, "is killed now: remove it from the allow-list"))
            continue
        diff = get_diff_for_mutant(name, path=module)
        added = "\n".join(line[1:] for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++"))
        if name in allowed:
            code, reason = allowed[name]
            if code in added:
                equivalent.append((name, reason))
                continue
            stale.append((name, f"no longer mutates `{code}` (renumbered?): check it again"))
        survivors.append((name, s, diff))
    for name in allowed:
        if only is None and name.startswith(module.replace("/", ".").removesuffix(".py") + ".") and name not in status:
            stale.append((name, "no such mutant any more"))

    total = len(status) - len(equivalent)
    detected = sum(1 for s in status.values() if s in DETECTED)
    score = detected / total if total else 1.0
    print(f"\n=== {module}: {detected}/{total} killed ({score:.0%})"
          f"{'' if score >= GOAL else f'  BELOW THE {GOAL:.0%} GOAL'}; "
          + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
          + (f"; {len(equivalent)} equivalent (allow-listed)" if equivalent else ""))
    for name, s, diff in survivors:
        print(f"\n--- {s}: {name}")
        print(diff)
    for name, why in stale:
        print(f"allow-list: {name} {why}")
    os.chdir(ROOT)
    sys.path.remove(str(work))
    return {"module": module, "killed": detected, "total": total, "score": score,
            "survivors": len(survivors), "equivalent": len(equivalent)}


def _natural(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/mutation.sh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help="paths or short names (auth, jobs, timeline...); default: all")
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("ENFOADS_MUTATION_JOBS", 2)),
                        help="mutants tested at once (default 2)")
    parser.add_argument("--report-only", action="store_true", help="print the last run's results again")
    parser.add_argument("--fresh", action="store_true", help="forget earlier results of these modules")
    parser.add_argument("--only", metavar="GLOB", help="only the mutants whose names match, e.g. '*_retry_after*'")
    args = parser.parse_args(argv)
    modules = [resolve(m) for m in args.modules] or list(MODULES)
    base = Path(os.environ.get("ENFOADS_MUTATION_DIR", Path.home() / ".cache" / "enfoads-mutation"))
    allowed = allow_list()
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1")
    results = []
    for module in modules:
        tests = [t for t in MODULES[module] if (ROOT / t).is_file()]
        work = base / module.replace("/", "_").removesuffix(".py")
        if args.fresh:
            shutil.rmtree(work, ignore_errors=True)
        if not args.report_only:
            work.mkdir(parents=True, exist_ok=True)
            sync_tree(work)
            write_config(work, module, tests)
            print(f"\n### {module} against {' '.join(tests)} (work folder {work})", flush=True)
            proc = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(args.jobs),
                                   *([args.only] if args.only else [])], cwd=work, env=env)
            if proc.returncode != 0:
                print(f"mutmut failed on {module} (exit {proc.returncode}); see above", file=sys.stderr)
                results.append({"module": module, "score": None})
                continue
        results.append(report(work, module, allowed, args.only))
    print("\nmodule                              killed   score")
    for r in results:
        if r["score"] is None:
            print(f"{r['module']:<36}  (failed)")
        else:
            print(f"{r['module']:<36}{r['killed']:>4}/{r['total']:<4} {r['score']:>5.0%}")
    return 0 if all(r["score"] is not None and r["score"] >= GOAL for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
