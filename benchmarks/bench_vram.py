"""Benchmarks of the VRAM offloader (run by hand: ``python -m benchmarks.bench_vram``).

1. Latency of ``acquire()`` for a model that is already resident (goal: well under 1 ms).
2. Replay of the T4 VRAM plan: the five model families with realistic sizes as fake models on a
   CPU-budget offloader (15 GB budget, 1 GB reserve, 12 GB host RAM), 1,000 seeded random
   requests; prints peak use, swaps, loads, moves, evictions and checks the budget is never
   exceeded. Then the same with the VLM pinned (an open realtime session).
3. The same replay on two T4s (Kaggle: 2 x 15 GB, one offloader arbitrating both) beside one T4:
   resident hit rate and swaps side by side, same seed and request stream.
4. Which families fit beside a conversation with the assistant: whisper + VLM pinned on the GPU
   with Kyutai Pocket TTS on the CPU (ENFOADS_VITA_TTS_MODEL), or with Chatterbox on the GPU too.
5. Pose control on a T4: SDXL fp16 (text encoders + Lightning UNet + fp16-fix VAE) with the OpenPose
   ControlNet, after DWPose read the photo, at the manifest's estimates: whether both are resident
   at once under the budget, what is evicted for them, and the room left for activations.

No GPU and no torch needed: the fake models only record moves.
"""

from __future__ import annotations

import logging
import random
import statistics
import sys
import time

from services.vram import GB, DeviceSpec, Runtime, VramOffloader, format_bytes

# (name, family, runtime, size in GB, request weight)
PLAN = [
    ("sdxl-lightning", "image", Runtime.TORCH, 7.0, 0.30),  # SDXL fp16 + fp16-fix VAE
    ("whisper-large-v3-turbo", "whisper", Runtime.CTRANSLATE2, 1.5, 0.25),  # int8_float16
    ("buffalo_l+inswapper", "face", Runtime.ONNX, 1.0, 0.15),
    ("chatterbox-multilingual", "tts", Runtime.TORCH, 3.5, 0.20),
    ("vlm-small", "vita", Runtime.TORCH, 5.0, 0.10),
]
BUDGET = 15 * GB
RESERVE = 1 * GB
HOST_RAM = 12 * GB


class FakeTorch:
    __slots__ = ("device",)

    def __init__(self, device: str) -> None:
        self.device = device

    def to(self, device: str) -> "FakeTorch":
        self.device = device
        return self


class FakeSession:
    __slots__ = ()


def make_offloader(gpus: int = 1, **kw) -> VramOffloader:
    if gpus == 1:
        off = VramOffloader(device="cpu", budget_bytes=BUDGET, reserve_bytes=RESERVE,
                            host_ram_budget_bytes=HOST_RAM, **kw)
    else:
        off = VramOffloader(devices=[DeviceSpec(f"cpu:{i}", BUDGET) for i in range(gpus)], reserve_bytes=RESERVE,
                            host_ram_budget_bytes=HOST_RAM, **kw)
    for name, family, runtime, gb, _ in PLAN:
        loader = FakeTorch if runtime == Runtime.TORCH else (lambda device: FakeSession())
        off.register(name, loader, runtime=runtime, estimate_bytes=int(gb * GB), family=family)
    return off


def bench_acquire(n: int = 10_000) -> None:
    off = make_offloader()
    name = PLAN[1][0]
    with off.acquire(name):
        pass
    times = []
    pc = time.perf_counter_ns
    for _ in range(n):
        t0 = pc()
        with off.acquire(name):
            pass
        times.append(pc() - t0)
    times.sort()
    mean_us = statistics.fmean(times) / 1000
    p50_us = times[n // 2] / 1000
    p99_us = times[int(n * 0.99)] / 1000
    print(f"1. acquire() of a resident model, {n} times: mean {mean_us:.1f} us, p50 {p50_us:.1f} us,"
          f" p99 {p99_us:.1f} us, max {times[-1] / 1000:.1f} us (goal < 1000 us)"
          f" -> {'OK' if p99_us < 1000 else 'SLOW'}")


def replay(pin: str | None, n: int = 1000, seed: int = 1234, gpus: int = 1, quiet: bool = False) -> dict:
    off = make_offloader(gpus)
    if pin:
        off.pin(pin)
    rng = random.Random(seed)
    names = [p[0] for p in PLAN]
    weights = [p[4] for p in PLAN]
    limit = BUDGET - RESERVE
    worst = 0
    hits = 0
    t0 = time.perf_counter()
    for _ in range(n):
        name = rng.choices(names, weights)[0]
        resident = off.state_of(name) == "gpu"
        hits += resident
        with off.acquire(name):
            used = max(d["used_bytes"] for d in off.snapshot()["devices"])
            worst = max(worst, used)
    dt = time.perf_counter() - t0
    snap = off.snapshot()
    loads = sum(m["loads"] for m in snap["models"])
    moves = sum(m["moves"] for m in snap["models"])
    ok = all(d["peak_bytes"] <= limit for d in snap["devices"]) and worst <= limit
    result = {"peak": snap["peak_bytes"], "swaps": snap["swaps"], "loads": loads, "moves": moves, "hits": hits,
              "devices": snap["devices"], "models": snap["models"]}
    assert ok, "a device's peak exceeded its budget"
    if quiet:
        return result
    label = f"pinned {pin}" if pin else "no pin"
    print(f"   [{label}] {n} requests in {dt * 1000:.0f} ms: peak {format_bytes(snap['peak_bytes'])}"
          f" of {format_bytes(limit)} usable ({format_bytes(BUDGET)} budget - {format_bytes(RESERVE)} reserve)"
          f" -> {'within budget' if ok else 'OVER BUDGET'}")
    print(f"   [{label}] resident hits {hits}/{n} ({hits / n:.0%}), swaps onto the device {snap['swaps']}"
          f" (loads from disk {loads}, moves from host RAM {moves})")
    for m in snap["models"]:
        print(f"     {m['name']:<26} {format_bytes(m['bytes']):>7}  loads {m['loads']:>4}  moves {m['moves']:>4}"
              f"  final state {m['state']}")
    return result


def compare_gpus(n: int = 1000) -> None:
    print("3. One T4 (15 GB) vs two T4s (2 x 15 GB, Kaggle), same 1,000 requests"
          " (hit: the model was already on a GPU; swap: a load or move onto a GPU)")
    print(f"   {'':<40} {'one T4':>10} {'two T4s':>10}")
    for pin in (None, "vlm-small"):
        one, two = replay(pin, n, gpus=1, quiet=True), replay(pin, n, gpus=2, quiet=True)
        label = f"pinned {pin}" if pin else "no pin"
        for what, key in (("resident hit rate", "hits"), ("swaps", "swaps"), ("loads from disk", "loads"),
                          ("moves from host RAM", "moves")):
            a, b = one[key], two[key]
            fa, fb = (f"{a / n:.1%}", f"{b / n:.1%}") if key == "hits" else (str(a), str(b))
            print(f"   {'[' + label + ']':<19} {what:<20} {fa:>10} {fb:>10}")
        ratio = one["swaps"] / two["swaps"] if two["swaps"] else float("inf")
        print(f"   {'[' + label + ']':<19} two T4s: {ratio:.1f}x fewer swaps; per GPU: " + "; ".join(
            f"{d['name']} peak {format_bytes(d['peak_bytes'])}, swaps {d['swaps']}, holds {', '.join(d['models'])}"
            for d in two["devices"]))


# A conversation with the assistant (VITA) pins its models. With Kyutai Pocket TTS on the CPU
# (ENFOADS_VITA_TTS_MODEL) the GPU holds only whisper and the VLM; with Chatterbox it holds the TTS too.
ASSISTANT_GPU = {
    "Pocket TTS on CPU": [("whisper-large-v3-turbo", Runtime.CTRANSLATE2, 1.5), ("vlm-small", Runtime.TORCH, 5.0)],
    "Chatterbox on GPU": [("whisper-large-v3-turbo", Runtime.CTRANSLATE2, 1.5), ("vlm-small", Runtime.TORCH, 5.0),
                          ("chatterbox-multilingual", Runtime.TORCH, 3.5)],
}
OTHERS = [("sdxl-lightning", Runtime.TORCH, 7.0), ("buffalo_l+inswapper", Runtime.ONNX, 1.0),
          ("chatterbox-multilingual", Runtime.TORCH, 3.5)]


def fits_beside_assistant(assistant: list, others: list) -> bool:
    """Whether `others` can run at once while a conversation keeps the assistant's models resident."""
    off = VramOffloader(device="cpu", budget_bytes=BUDGET, reserve_bytes=RESERVE, host_ram_budget_bytes=HOST_RAM)
    for name, runtime, gb in {n: (n, r, g) for n, r, g in assistant + others}.values():
        loader = FakeTorch if runtime == Runtime.TORCH else (lambda device: FakeSession())
        off.register(name, loader, runtime=runtime, estimate_bytes=int(gb * GB), family="x")
    for name, *_ in assistant:
        off.pin(name)
        with off.acquire(name):
            pass
    from contextlib import ExitStack

    try:
        with ExitStack() as stack:
            for name, *_ in others:
                stack.enter_context(off.acquire(name))
            return all(off.state_of(name) == "gpu" for name, *_ in assistant)
    except Exception:  # VramError: the combination cannot be resident at once
        return False


def bench_assistant_combinations() -> None:
    from itertools import combinations

    print("4. During a conversation (the assistant's models pinned and resident), which other families"
          f" can run at once on a T4 ({format_bytes(BUDGET - RESERVE)} usable)")
    for label, assistant in ASSISTANT_GPU.items():
        used = sum(gb for *_, gb in assistant)
        print(f"   [{label}] assistant on the GPU: {' + '.join(n for n, *_ in assistant)} = {used:.1f} GB")
        pool = [o for o in OTHERS if o[0] not in {n for n, *_ in assistant}]
        for k in range(1, len(pool) + 1):
            for combo in combinations(pool, k):
                ok = fits_beside_assistant(assistant, list(combo))
                extra = sum(gb for *_, gb in combo)
                verdict = "fits" if ok else "does not fit: the assistant's models get evicted"
                print(f"     + {' + '.join(n for n, *_ in combo):<58} {extra:4.1f} GB -> {verdict}")


def bench_pose_plan() -> None:
    """The order a pose_reference request acquires its models in, on one T4, with the manifest's estimates."""
    from contextlib import ExitStack

    from prefetch.manifest import vram_estimate

    sdxl = sum(vram_estimate(k, "fp16") for k in ("sdxl-base", "sdxl-lightning-unet-4step", "sdxl-vae-fp16-fix"))
    controlnet = vram_estimate("controlnet-openpose-sdxl", "fp16")
    dwpose = vram_estimate("dwpose", "fp32")
    sizes = {"sdxl-lightning": sdxl, "controlnet-openpose-sdxl": controlnet, "dwpose": dwpose,
             "whisper-large-v3-turbo": int(1.5 * GB), "buffalo_l+inswapper": int(1.0 * GB)}
    usable = BUDGET - RESERVE
    print(f"5. Pose control on a T4 ({format_bytes(usable)} usable), manifest estimates in fp16: SDXL-Lightning "
          f"pipeline {format_bytes(sdxl)} (text encoders + UNet + VAE) + ControlNet {format_bytes(controlnet)} = "
          f"{format_bytes(sdxl + controlnet)}; DWPose {format_bytes(dwpose)}")
    off = VramOffloader(device="cpu", budget_bytes=BUDGET, reserve_bytes=RESERVE, host_ram_budget_bytes=HOST_RAM)
    for name, size in sizes.items():
        runtime = Runtime.ONNX if name in ("dwpose", "buffalo_l+inswapper") else Runtime.TORCH
        loader = FakeTorch if runtime == Runtime.TORCH else (lambda device: FakeSession())
        off.register(name, loader, runtime=runtime, estimate_bytes=size, family="x")
    for name in ("whisper-large-v3-turbo", "buffalo_l+inswapper", "dwpose"):  # earlier requests, then DWPose
        with off.acquire(name):
            pass
    before = {n for n in sizes if off.state_of(n) == "gpu"}
    peak = 0
    with ExitStack() as stack:  # as ImageService.render: SDXL, then the ControlNet inside it
        stack.enter_context(off.acquire("sdxl-lightning"))
        stack.enter_context(off.acquire("controlnet-openpose-sdxl"))
        resident = {n for n in sizes if off.state_of(n) == "gpu"}
        peak = sum(sizes[n] for n in resident)
    both = {"sdxl-lightning", "controlnet-openpose-sdxl"} <= resident
    print(f"   resident while generating: {', '.join(sorted(resident))} = {format_bytes(peak)} "
          f"({'fits' if both and peak <= usable else 'DOES NOT FIT'}); evicted for it: "
          f"{', '.join(sorted(before - resident)) or 'nothing'}; left for activations beyond the estimates: "
          f"{format_bytes(usable - peak)} + the {format_bytes(RESERVE)} reserve")
    print("   measured on a T4: not here (no GPU); `python -m benchmarks.bench_image --sdxl` prints SDXL + ControlNet "
          "peak VRAM at 1024x1024")


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    bench_acquire()
    print("2. VRAM plan replay (T4: 15 GB, 1 GB reserve, 12 GB host RAM; request mix"
          " " + ", ".join(f"{p[1]} {p[4]:.0%}" for p in PLAN) + ")")
    a = replay(pin=None)
    b = replay(pin="vlm-small")
    print(f"   pinning the VLM: swaps {a['swaps']} -> {b['swaps']}, loads {a['loads']} -> {b['loads']},"
          f" hit rate {a['hits'] / 10:.0f}% -> {b['hits'] / 10:.0f}%")
    compare_gpus()
    bench_assistant_combinations()
    bench_pose_plan()
    return 0


if __name__ == "__main__":
    sys.exit(main())
