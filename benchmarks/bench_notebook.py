"""The notebook: Run-all time in CI mode, per cell; prefetch planning time for the full manifest.

    python -m benchmarks.bench_notebook [--skip-notebook] [--repeat N]

The notebook runs headless with nbclient exactly as nbmake runs it (CI mode outside Colab: smoke
models, server, one request per family). Planning is measured against the real Hugging Face cache
of this machine (offline: it only reads the disk), as a ratio to one `os.stat` sweep of the same
folders, so the figure means the same on any machine.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def bench_planning(repeat: int) -> None:
    from prefetch import download as dl
    from prefetch import manifest as mf

    specs = list(mf.MANIFEST.values())
    models_dir = REPO / "data" / "models"
    cache = dl.hub_cache_dir()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        items = dl.plan(specs, models_dir=models_dir)
        dl.disk_shortfalls(items, models_dir=models_dir)
        times.append(time.perf_counter() - t)
    missing = sum(it.status != "present" for it in items)
    base = []
    for _ in range(repeat):
        t = time.perf_counter()
        for spec in specs:
            os.path.exists(dl.repo_folder(cache, spec.repo_id or spec.key))
            os.path.exists(models_dir / spec.key)
        base.append(time.perf_counter() - t)
    med, bmed = statistics.median(times), statistics.median(base)
    print(f"prefetch planning, full manifest ({len(specs)} models, {missing} not on this machine), "
          f"median of {repeat}: {med * 1000:.2f} ms (+ disk check); bare existence checks of the same "
          f"folders: {bmed * 1000:.3f} ms; ratio {med / max(bmed, 1e-9):.0f}x")


def bench_notebook() -> None:
    import nbformat
    from nbclient import NotebookClient

    path = REPO / "notebooks" / "enfoads_colab.ipynb"
    nb = nbformat.read(path, as_version=4)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    client = NotebookClient(nb, timeout=600, kernel_name="python3", record_timing=True,
                            resources={"metadata": {"path": str(path.parent)}})
    t = time.perf_counter()
    client.execute()
    total = time.perf_counter() - t
    print(f"notebook Run all in CI mode: {total:.1f} s wall (kernel start included)")
    cells = 0.0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        ex = cell.metadata.get("execution", {})
        start, end = ex.get("iopub.execute_input"), ex.get("shell.execute_reply")
        if start and end:
            secs = (datetime.fromisoformat(end.replace("Z", "+00:00"))
                    - datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()
            cells += secs
            print(f"  cell {cell.id:<12} {secs:7.1f} s  ({100 * secs / total:4.1f}% of the run)")
    print(f"  cells together {cells:.1f} s; kernel start and teardown {total - cells:.1f} s")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--skip-notebook", action="store_true")
    p.add_argument("--repeat", type=int, default=20)
    args = p.parse_args()
    bench_planning(args.repeat)
    if not args.skip_notebook:
        bench_notebook()


if __name__ == "__main__":
    main()
