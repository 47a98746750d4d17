"""Tests of services/vram.py: the VRAM offloader's bookkeeping on a CPU budget (no GPU)."""

from __future__ import annotations

import logging
import random
import threading
import time

import pytest
import torch  # imported once at collection (a mutation run forks after it), not inside a test

from services.vram import (
    GB,
    ModelsBusy,
    ModelTooLarge,
    Runtime,
    UnknownModel,
    VramError,
    VramOffloader,
    is_oom_error,
)


# --------------------------------------------------------------------------- fakes

class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Lib:
    """Records what the offloader does to fake models."""

    def __init__(self) -> None:
        self.loads: list[tuple[str, str]] = []
        self.unloads: list[str] = []
        self.moves: list[tuple[str, str]] = []


class FakeSession:
    """Stands for an ONNX Runtime session / CTranslate2 model: load and unload only."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False


class FakeTorchModel:
    """Stands for a torch module/pipeline: has .to(device) and records where it is."""

    def __init__(self, name: str, lib: Lib, device: str) -> None:
        self.name, self.lib, self.device = name, lib, device

    def to(self, device: str) -> "FakeTorchModel":
        self.lib.moves.append((self.name, device))
        self.device = device
        return self


def make(budget_gb: float = 10, **kw) -> VramOffloader:
    kw.setdefault("gc_collect", False)  # a full gc takes ~70 ms once torch is imported
    return VramOffloader(device="cpu", budget_bytes=int(budget_gb * GB), **kw)


def reg_session(off: VramOffloader, lib: Lib, name: str, gb: float, runtime=Runtime.ONNX, **kw) -> None:
    def loader(device: str) -> FakeSession:
        lib.loads.append((name, device))
        return FakeSession(name)

    def unload(obj: FakeSession) -> None:
        obj.closed = True
        lib.unloads.append(name)

    off.register(name, loader, runtime=runtime, estimate_bytes=int(gb * GB), unload=unload, **kw)


def reg_torch(off: VramOffloader, lib: Lib, name: str, gb: float, **kw) -> None:
    def loader(device: str) -> FakeTorchModel:
        lib.loads.append((name, device))
        return FakeTorchModel(name, lib, device)

    off.register(name, loader, runtime=Runtime.TORCH, estimate_bytes=int(gb * GB),
                 unload=lambda obj: lib.unloads.append(name), **kw)


def use(off: VramOffloader, name: str):
    with off.acquire(name) as m:
        return m


def states(off: VramOffloader) -> dict[str, str]:
    return {m["name"]: m["state"] for m in off.snapshot()["models"]}


# --------------------------------------------------------------------------- basics

def test_cpu_device_requires_budget():
    with pytest.raises(ValueError):
        VramOffloader(device="cpu")
    # a probe supplies the total
    off = VramOffloader(device="cpu", mem_probe=lambda: (3 * GB, 8 * GB))
    assert off.budget_bytes == 8 * GB


def test_acquire_loads_once_and_yields_model():
    lib = Lib()
    off = make(10)
    reg_session(off, lib, "a", 2)
    with off.acquire("a") as m1:
        assert isinstance(m1, FakeSession)
        assert off.snapshot()["models"][0]["in_use"] == 1
    with off.acquire("a") as m2:
        assert m2 is m1
    assert lib.loads == [("a", "cpu")]
    snap = off.snapshot()
    assert snap["used_bytes"] == 2 * GB and snap["swaps"] == 1
    assert snap["models"][0]["in_use"] == 0 and snap["models"][0]["loads"] == 1


def test_unknown_model():
    off = make(10)
    with pytest.raises(UnknownModel, match="nope"):
        with off.acquire("nope"):
            pass
    assert not off.is_registered("nope")


# --------------------------------------------------------------------------- eviction policy

def test_lru_eviction_order():
    lib = Lib()
    off = make(10)
    for n in "abc":
        reg_session(off, lib, n, 4)
    use(off, "a")
    use(off, "b")
    use(off, "a")  # a is now more recent than b
    use(off, "c")  # needs 4 GB: evicts exactly one, the LRU (b)
    assert states(off) == {"a": "gpu", "b": "unloaded", "c": "gpu"}
    assert lib.unloads == ["b"]
    use(off, "b")  # now a is LRU
    assert states(off) == {"a": "unloaded", "b": "gpu", "c": "gpu"}
    assert lib.unloads == ["b", "a"]
    assert off.snapshot()["peak_bytes"] <= 10 * GB


def test_eviction_frees_only_what_is_needed():
    lib = Lib()
    off = make(10)
    for n, gb in [("a", 3), ("b", 3), ("c", 3), ("d", 5)]:
        reg_session(off, lib, n, gb)
    for n in "abc":
        use(off, n)
    use(off, "d")  # 1 GB free; needs 5: evict a (-> 4) and b (-> 7), keep c
    assert states(off) == {"a": "unloaded", "b": "unloaded", "c": "gpu", "d": "gpu"}


def test_reserve_is_respected():
    lib = Lib()
    off = make(10, reserve_bytes=2 * GB)
    reg_session(off, lib, "a", 5)
    reg_session(off, lib, "b", 4)
    use(off, "a")
    use(off, "b")  # 5 + 4 > 10 - 2
    assert states(off) == {"a": "unloaded", "b": "gpu"}


def test_in_use_model_is_never_evicted_and_busy_raises_immediately():
    lib = Lib()
    off = make(10)
    reg_session(off, lib, "a", 6)
    reg_session(off, lib, "b", 6)
    holding, done = threading.Event(), threading.Event()

    def hold():
        with off.acquire("a"):
            holding.set()
            done.wait(5)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert holding.wait(5)
        t0 = time.monotonic()
        with pytest.raises(ModelsBusy) as ei:
            use(off, "b")
        assert time.monotonic() - t0 < 1.0  # no waiting by default
        assert ei.value.busy == ("a",)
        assert "busy: a" in str(ei.value) and "in use" in str(ei.value)
        assert isinstance(ei.value, ModelTooLarge)
        assert states(off) == {"a": "gpu", "b": "unloaded"}
        assert lib.unloads == []
    finally:
        done.set()
        t.join()
    use(off, "b")  # a is idle now: evicted
    assert states(off) == {"a": "unloaded", "b": "gpu"}


class Waits(threading.Condition):
    """The offloader's condition, counting the threads that went to sleep on it: a test releases a
    model once a waiter is known to be waiting (no sleep that only makes the race likely)."""

    def __init__(self, lock) -> None:
        super().__init__(lock)
        self.count = 0
        self.changed = threading.Condition()

    def wait(self, timeout=None):
        with self.changed:
            self.count += 1
            self.changed.notify_all()
        return super().wait(timeout)

    def until(self, n: int, timeout: float = 10) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.count >= n, timeout), f"{self.count} of {n} waiters"


def watch_waits(off: VramOffloader) -> Waits:
    off._cond = Waits(off._lock)
    return off._cond


def hold_until_one_waits(off: VramOffloader, waits: Waits, name: str) -> threading.Thread:
    """A thread holding `name` until a request is waiting for it (then it lets go); returns once held."""
    holding = threading.Event()

    def hold():
        with off.acquire(name):
            holding.set()
            waits.until(1)

    t = threading.Thread(target=hold)
    t.start()
    assert holding.wait(5)
    return t


def test_busy_wait_succeeds_when_released_in_time():
    lib = Lib()
    off = make(10)
    waits = watch_waits(off)
    reg_session(off, lib, "a", 6)
    reg_session(off, lib, "b", 6)
    t = hold_until_one_waits(off, waits, "a")
    with off.acquire("b", wait_s=30) as m:
        assert m.name == "b"
    t.join()
    assert states(off) == {"a": "unloaded", "b": "gpu"}


def test_pinned_models_are_evicted_last():
    lib = Lib()
    off = make(10)
    for n in "abc":
        reg_session(off, lib, n, 4)
    use(off, "a")
    use(off, "b")
    off.pin("a")  # a is LRU but pinned
    use(off, "c")
    assert states(off) == {"a": "gpu", "b": "unloaded", "c": "gpu"}
    # nothing unpinned left to evict: the pinned one goes
    reg_session(off, lib, "d", 6)
    off.pin("c")
    use(off, "d")  # needs 6 of 2 free: one pinned model goes, the LRU one (a)
    assert states(off) == {"a": "unloaded", "b": "unloaded", "c": "gpu", "d": "gpu"}
    assert off.snapshot()["used_bytes"] <= 10 * GB


def test_pin_counts_nest():
    lib = Lib()
    off = make(10)
    reg_session(off, lib, "a", 1)
    off.pin("a")
    off.pin("a")
    off.unpin("a")
    assert off.snapshot()["models"][0]["pinned"] == 1
    off.unpin("a")
    off.unpin("a")  # extra unpin: ignored, logged
    assert off.snapshot()["models"][0]["pinned"] == 0
    with pytest.raises(UnknownModel):
        off.pin("zzz")


def test_too_large_for_budget_raises_and_evicts_nothing():
    lib = Lib()
    off = make(4)
    reg_session(off, lib, "small", 2)
    reg_torch(off, lib, "sdxl", 7)
    use(off, "small")
    with pytest.raises(ModelTooLarge) as ei:
        use(off, "sdxl")
    msg = str(ei.value)
    assert "sdxl needs 7.0 GB" in msg and "budget is 4.0 GB" in msg
    assert ei.value.need_bytes == 7 * GB
    assert states(off) == {"small": "gpu", "sdxl": "unloaded"}
    assert lib.unloads == [] and ("sdxl", "cpu") not in lib.loads


def test_cannot_fit_beside_busy_plus_idle_evicts_nothing():
    """Fits the budget, but even evicting every idle model leaves too little while a big
    model is in use: decided before evicting, so the idle model stays."""
    lib = Lib()
    off = make(10)
    reg_session(off, lib, "big", 6)
    reg_session(off, lib, "idle", 2)
    reg_session(off, lib, "new", 5)
    use(off, "idle")
    with off.acquire("big"):
        with pytest.raises(ModelsBusy) as ei:
            use(off, "new")
        assert "new needs 5.0 GB" in str(ei.value)
        assert states(off) == {"big": "gpu", "idle": "gpu", "new": "unloaded"}
    assert lib.unloads == []


def test_nested_acquire_of_other_model_in_same_thread():
    lib = Lib()
    off = make(10)
    reg_session(off, lib, "a", 4)
    reg_session(off, lib, "b", 4)
    reg_session(off, lib, "c", 4)
    use(off, "c")
    with off.acquire("a"):
        with off.acquire("b"):  # c (idle) goes, a (in use by us) stays
            assert states(off) == {"a": "gpu", "b": "gpu", "c": "unloaded"}


# --------------------------------------------------------------------------- OOM handling

def test_loader_oom_evicts_all_idle_and_retries_once():
    lib = Lib()
    off = make(20)
    for n in "abc":
        reg_session(off, lib, n, 2)
    for n in "abc":
        use(off, n)
    off.pin("a")
    calls = []

    def loader(device):
        calls.append(device)
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return FakeSession("big")

    off.register("big", loader, runtime=Runtime.TORCH, estimate_bytes=4 * GB)
    with off.acquire("b"):  # b is in use: survives the evict-all
        with off.acquire("big") as m:
            assert m.name == "big"
        assert states(off) == {"a": "unloaded", "b": "gpu", "c": "unloaded", "big": "gpu"}
    assert len(calls) == 2
    assert sorted(lib.unloads) == ["a", "c"]


def test_loader_oom_twice_raises_vram_error():
    lib = Lib()
    off = make(20)
    reg_session(off, lib, "a", 2)
    use(off, "a")
    calls = []

    def loader(device):
        calls.append(device)
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested buffer")

    off.register("big", loader, runtime=Runtime.ONNX, estimate_bytes=4 * GB)
    with pytest.raises(VramError) as ei:
        use(off, "big")
    assert not isinstance(ei.value, ModelTooLarge)
    assert "big" in str(ei.value) and "even after evicting" in str(ei.value)
    assert len(calls) == 2
    assert states(off) == {"a": "unloaded", "big": "unloaded"}
    assert off.snapshot()["used_bytes"] == 0
    assert off.snapshot()["models"][1]["moving"] is False


def test_loader_other_error_propagates_unchanged():
    off = make(10)

    def loader(device):
        raise FileNotFoundError("model dir missing: run prefetch")

    off.register("x", loader, runtime=Runtime.ONNX, estimate_bytes=GB)
    with pytest.raises(FileNotFoundError):
        use(off, "x")
    assert states(off) == {"x": "unloaded"}
    # the entry is usable again afterwards (not stuck "moving")
    off.register("x", lambda d: FakeSession("x"), runtime=Runtime.ONNX, estimate_bytes=GB)
    assert use(off, "x").name == "x"


def test_run_oom_evicts_other_idle_and_retries_once():
    lib = Lib()
    off = make(20)
    for n in "abc":
        reg_session(off, lib, n, 2)
    for n in "abc":
        use(off, n)
    attempts = []

    def fn(model):
        attempts.append(model.name)
        if len(attempts) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        return "ok"

    assert off.run("a", fn) == "ok"
    assert attempts == ["a", "a"]
    assert states(off) == {"a": "gpu", "b": "unloaded", "c": "unloaded"}  # a itself kept
    assert lib.loads.count(("a", "cpu")) == 1


def test_run_oom_twice_raises_vram_error():
    lib = Lib()
    off = make(20)
    reg_session(off, lib, "w", 2, runtime=Runtime.CTRANSLATE2)

    def fn(model):
        raise RuntimeError("CUDA failed with error CUDA_ERROR_OUT_OF_MEMORY")

    with pytest.raises(VramError) as ei:
        off.run("w", fn)
    assert "out of GPU memory running w" in str(ei.value)
    assert off.snapshot()["models"][0]["in_use"] == 0


def test_run_non_oom_error_propagates():
    lib = Lib()
    off = make(20)
    reg_session(off, lib, "a", 2)
    with pytest.raises(ValueError):
        off.run("a", lambda m: (_ for _ in ()).throw(ValueError("bad input")))
    assert off.snapshot()["models"][0]["in_use"] == 0


def test_is_oom_error():
    assert is_oom_error(torch.cuda.OutOfMemoryError("x"))
    assert is_oom_error(RuntimeError("CUDA out of memory. Tried to allocate"))
    assert is_oom_error(RuntimeError("CUDA failed with error CUDA_ERROR_OUT_OF_MEMORY"))
    assert is_oom_error(Exception("Failed to allocate memory for requested buffer of size 123"))
    assert not is_oom_error(RuntimeError("shape mismatch"))
    assert not is_oom_error(MemoryError())
    assert not is_oom_error(VramError("out of memory even after evicting"))


# --------------------------------------------------------------------------- measured footprint

def test_measured_footprint_replaces_estimate():
    free = [16 * GB]

    def probe():
        return free[0], 16 * GB

    off = VramOffloader(device="cpu", budget_bytes=16 * GB, mem_probe=probe, gc_collect=False)

    def loader(device):
        free[0] -= 3 * GB  # really takes 3 GB
        return FakeSession("m")

    def unload(obj):
        free[0] += 3 * GB

    off.register("m", loader, runtime=Runtime.ONNX, estimate_bytes=1 * GB, unload=unload)
    snap = off.snapshot()["models"][0]
    assert snap["bytes"] == GB and snap["measured"] is False
    use(off, "m")
    snap = off.snapshot()
    m = snap["models"][0]
    assert m["measured"] is True and m["bytes"] == 3 * GB and m["estimate_bytes"] == GB
    assert snap["used_bytes"] == 3 * GB and snap["free_bytes"] == 13 * GB
    # the measured size is used from then on (also after unload)
    off.unload("m")
    assert off.size_of("m") == 3 * GB


def test_probe_free_memory_limits_placement():
    """On a device the probe's real free memory counts too (other allocations, other processes)."""
    free = [5 * GB]
    off = VramOffloader(device="cpu", budget_bytes=16 * GB, mem_probe=lambda: (free[0], 16 * GB),
                        gc_collect=False)
    off.register("m", lambda d: FakeSession("m"), runtime=Runtime.ONNX, estimate_bytes=6 * GB)
    with pytest.raises(ModelTooLarge, match="device reports 5.0 GB free"):
        use(off, "m")


def test_measured_larger_than_estimate_evicts_to_stay_in_budget():
    free = [10 * GB]
    off = VramOffloader(device="cpu", budget_bytes=10 * GB, mem_probe=lambda: (free[0], 10 * GB),
                        gc_collect=False)

    def mk(name, real):
        def loader(device):
            free[0] -= real
            return FakeSession(name)

        def unload(obj):
            free[0] += real

        off.register(name, loader, runtime=Runtime.ONNX, estimate_bytes=2 * GB, unload=unload)

    mk("a", 6 * GB)
    mk("b", 6 * GB)
    use(off, "a")
    use(off, "b")  # estimated 2 GB, so a stayed; measured 6 GB: a is evicted afterwards
    assert states(off) == {"a": "unloaded", "b": "gpu"}
    snap = off.snapshot()
    assert snap["used_bytes"] == 6 * GB and free[0] == 4 * GB
    use(off, "a")  # now both sizes are known: b is evicted before loading a
    assert states(off) == {"a": "gpu", "b": "unloaded"}
    assert free[0] == 4 * GB


def test_cpu_torch_module_measured_by_parameter_bytes():
    off = make(1)
    off.register("lin", lambda d: torch.nn.Linear(100, 50).to(d), runtime=Runtime.TORCH,
                 estimate_bytes=10 * 2**20)
    with off.acquire("lin") as m:
        assert isinstance(m, torch.nn.Linear)
    m = off.snapshot()["models"][0]
    assert m["measured"] is True and m["bytes"] == (100 * 50 + 50) * 4


def test_pipeline_components_measured():
    class Pipe:
        def __init__(self):
            self.unet = torch.nn.Linear(10, 10)
            self.vae = torch.nn.Linear(10, 2)
            self.tokenizer = object()
            self.components = {"unet": self.unet, "vae": self.vae, "tokenizer": self.tokenizer}

        def to(self, device):
            self.unet.to(device)
            self.vae.to(device)
            return self

    off = make(1)
    off.register("pipe", lambda d: Pipe().to(d), runtime=Runtime.TORCH, estimate_bytes=2**20)
    use(off, "pipe")
    assert off.size_of("pipe") == (110 + 22) * 4


# --------------------------------------------------------------------------- torch parking / host RAM

def test_torch_model_parked_in_host_ram_and_moved_back():
    lib = Lib()
    off = make(10, host_ram_budget_bytes=8 * GB)
    reg_torch(off, lib, "t", 6)
    reg_session(off, lib, "o", 6)
    first = use(off, "t")
    use(off, "o")  # evicts t: moved to cpu, kept
    assert states(off) == {"t": "cpu", "o": "gpu"}
    assert ("t", "cpu") in lib.moves and lib.unloads == []
    snap = off.snapshot()
    assert snap["host_ram_used_bytes"] == 6 * GB
    again = use(off, "t")  # moved back, not reloaded; o (onnx) is freed
    assert again is first
    assert lib.loads.count(("t", "cpu")) == 1
    assert lib.unloads == ["o"]
    m = {x["name"]: x for x in off.snapshot()["models"]}["t"]
    assert m["loads"] == 1 and m["moves"] == 1
    assert off.snapshot()["swaps"] == 3


def test_host_ram_budget_frees_instead_of_parking():
    lib = Lib()
    off = make(10, host_ram_budget_bytes=4 * GB)
    reg_torch(off, lib, "t", 6)
    reg_session(off, lib, "o", 6)
    use(off, "t")
    use(off, "o")  # t does not fit the host RAM budget: freed
    assert states(off) == {"t": "unloaded", "o": "gpu"}
    assert lib.unloads == ["t"]
    assert off.snapshot()["host_ram_used_bytes"] == 0


def test_host_ram_over_budget_frees_lru_parked():
    lib = Lib()
    off = make(5, host_ram_budget_bytes=7 * GB)
    reg_torch(off, lib, "t1", 4)
    reg_torch(off, lib, "t2", 4)
    reg_torch(off, lib, "t3", 4)
    use(off, "t1")
    use(off, "t2")  # t1 parked (4 GB of 7)
    use(off, "t3")  # t2 parked: 8 > 7, the LRU parked (t1) is freed
    assert states(off) == {"t1": "unloaded", "t2": "cpu", "t3": "gpu"}
    assert lib.unloads == ["t1"]
    assert off.snapshot()["host_ram_used_bytes"] == 4 * GB


def test_non_movable_runtimes_are_freed_on_evict():
    lib = Lib()
    off = make(10)
    reg_session(off, lib, "ct2", 2, runtime=Runtime.CTRANSLATE2)
    reg_session(off, lib, "ort", 2, runtime=Runtime.ONNX)
    s1 = use(off, "ct2")
    use(off, "ort")
    off.evict("ct2")
    off.evict("ort")
    assert states(off) == {"ct2": "unloaded", "ort": "unloaded"}
    assert s1.closed and sorted(lib.unloads) == ["ct2", "ort"]
    assert lib.moves == []


def test_explicit_evict_unload_and_busy_refusal():
    lib = Lib()
    off = make(10)
    reg_torch(off, lib, "t", 2)
    use(off, "t")
    off.evict("t")
    assert states(off) == {"t": "cpu"}
    off.evict("t")  # not resident: no-op
    off.unload("t")
    assert states(off) == {"t": "unloaded"} and lib.unloads == ["t"]
    with off.acquire("t"):
        with pytest.raises(VramError, match="in use"):
            off.evict("t")
        with pytest.raises(VramError, match="in use"):
            off.unload("t")


def test_unload_all_frees_idle_and_busy_on_release():
    lib = Lib()
    off = make(10)
    reg_session(off, lib, "a", 2)
    reg_torch(off, lib, "b", 2)
    use(off, "a")
    with off.acquire("b"):
        assert off.unload_all() == ["a"]
        assert states(off) == {"a": "unloaded", "b": "gpu"}
    assert states(off) == {"a": "unloaded", "b": "unloaded"}
    assert sorted(lib.unloads) == ["a", "b"]


# --------------------------------------------------------------------------- idle offload

def test_idle_offload_with_fake_clock():
    lib = Lib()
    clock = FakeClock()
    off = make(20, clock=clock, idle_offload_s=300)
    reg_torch(off, lib, "t", 2)
    reg_session(off, lib, "o", 2)
    reg_session(off, lib, "p", 2)
    reg_session(off, lib, "busy", 2)
    for n in ("t", "o", "p", "busy"):
        use(off, n)
    off.pin("p")
    clock.t += 200
    assert off.offload_idle() == []
    use(off, "o")  # o used again at t+200
    clock.t += 150  # t idle 350 s, o idle 150 s
    with off.acquire("busy"):
        clock.t += 1
        names = off.offload_idle()
    assert names == ["t"]
    assert states(off) == {"t": "cpu", "o": "gpu", "p": "gpu", "busy": "gpu"}
    clock.t += 1000
    assert sorted(off.offload_idle()) == ["busy", "o"]  # pinned p stays
    assert states(off) == {"t": "cpu", "o": "unloaded", "p": "gpu", "busy": "unloaded"}


def test_idle_thread_runs_and_stops():
    lib = Lib()
    clock = FakeClock()
    off = make(10, clock=clock, idle_offload_s=10)
    reg_session(off, lib, "a", 1)
    use(off, "a")
    clock.t += 11
    off.start_idle_thread(interval_s=0.02)
    off.start_idle_thread(interval_s=0.02)  # idempotent
    deadline = time.monotonic() + 3
    while states(off)["a"] != "unloaded" and time.monotonic() < deadline:
        time.sleep(0.01)
    off.stop()
    assert states(off)["a"] == "unloaded"
    assert off._idle_thread is None


# --------------------------------------------------------------------------- snapshot

def test_snapshot_schema():
    lib = Lib()
    off = make(10, reserve_bytes=GB, host_ram_budget_bytes=6 * GB)
    reg_torch(off, lib, "sdxl", 3, family="image")
    reg_session(off, lib, "whisper", 1, runtime=Runtime.CTRANSLATE2, family="whisper")
    before = time.time()
    use(off, "sdxl")
    snap = off.snapshot()
    for key, typ in [("device", str), ("budget_bytes", int), ("reserve_bytes", int), ("used_bytes", int),
                     ("free_bytes", int), ("peak_bytes", int), ("host_ram_used_bytes", int),
                     ("host_ram_budget_bytes", int), ("swaps", int), ("models", list)]:
        assert isinstance(snap[key], typ), key
    assert snap["device"] == "cpu" and snap["budget_bytes"] == 10 * GB and snap["reserve_bytes"] == GB
    assert snap["used_bytes"] == 3 * GB and snap["free_bytes"] == 7 * GB and snap["peak_bytes"] == 3 * GB
    assert snap["host_ram_budget_bytes"] == 6 * GB and snap["swaps"] == 1
    models = {m["name"]: m for m in snap["models"]}
    assert list(models) == ["sdxl", "whisper"]
    keys = {"name", "family", "runtime", "state", "bytes", "measured", "estimate_bytes", "in_use",
            "pinned", "last_used", "loads", "load_seconds"}
    for m in models.values():
        assert keys <= set(m)
    s, w = models["sdxl"], models["whisper"]
    assert (s["family"], s["runtime"], s["state"], s["bytes"], s["measured"]) == ("image", "torch", "gpu", 3 * GB, False)
    assert s["in_use"] == 0 and s["pinned"] == 0 and s["loads"] == 1
    assert isinstance(s["load_seconds"], float) and s["load_seconds"] >= 0
    assert before - 1 <= s["last_used"] <= time.time() + 1
    assert (w["state"], w["runtime"], w["last_used"], w["loads"], w["load_seconds"]) == (
        "unloaded", "ctranslate2", None, 0, None)
    import json

    json.dumps(snap)  # serialisable as is for /vram-monitor


# --------------------------------------------------------------------------- re-register

def test_reregister_replaces_and_unloads_old():
    lib = Lib()
    off = make(10)
    reg_session(off, lib, "w", 2)
    old = use(off, "w")
    off.pin("w")
    off.register("w", lambda d: FakeSession("w2"), runtime=Runtime.ONNX, estimate_bytes=3 * GB)
    assert old.closed and lib.unloads == ["w"]
    m = off.snapshot()["models"][0]
    assert (m["state"], m["bytes"], m["pinned"], m["loads"]) == ("unloaded", 3 * GB, 1, 0)
    assert use(off, "w").name == "w2"


def test_reregister_while_in_use_frees_old_on_release():
    lib = Lib()
    off = make(10)
    reg_session(off, lib, "w", 4)
    with off.acquire("w") as old:
        off.register("w", lambda d: FakeSession("w2"), runtime=Runtime.ONNX, estimate_bytes=4 * GB)
        assert not old.closed
        assert off.snapshot()["used_bytes"] == 4 * GB  # the old one still occupies the device
        with off.acquire("w") as new:
            assert new.name == "w2"
            assert off.snapshot()["used_bytes"] == 8 * GB
    assert old.closed and lib.unloads == ["w"]
    assert off.snapshot()["used_bytes"] == 4 * GB


# --------------------------------------------------------------------------- threads

def test_thread_safety_smoke():
    lib = Lib()
    off = make(10, busy_timeout_s=10)
    sizes = {"a": 3, "b": 3, "c": 4, "d": 2, "e": 5}
    for n, gb in sizes.items():
        if n in "ac":
            reg_torch(off, lib, n, gb)
        else:
            reg_session(off, lib, n, gb)
    errors: list[BaseException] = []
    over: list[int] = []
    counts = [0] * 8

    def worker(i: int) -> None:
        rng = random.Random(i)
        try:
            for _ in range(150):
                name = rng.choice(list(sizes))
                with off.acquire(name) as m:
                    assert m.name == name
                    used = off.snapshot()["used_bytes"]
                    if used > 10 * GB:
                        over.append(used)
                    counts[i] += 1
                if rng.random() < 0.05:
                    off.offload_idle()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert over == []
    assert sum(counts) == 8 * 150
    snap = off.snapshot()
    assert snap["peak_bytes"] <= 10 * GB
    assert all(m["in_use"] == 0 and not m["moving"] for m in snap["models"])


def test_same_model_from_many_threads_loads_once():
    off = make(10)
    waits = watch_waits(off)
    loads = []
    loading = threading.Event()

    def loader(device):
        loads.append(device)
        loading.set()
        waits.until(5)  # the five others are waiting for this load, not starting their own
        return FakeSession("m")

    off.register("m", loader, runtime=Runtime.ONNX, estimate_bytes=GB)
    seen = []

    def worker():
        with off.acquire("m") as m:
            seen.append(m)

    first = threading.Thread(target=worker)
    first.start()
    assert loading.wait(10)
    threads = [first, *(threading.Thread(target=worker) for _ in range(5))]
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join(10)
    assert len(loads) == 1 and len(seen) == 6 and len({id(s) for s in seen}) == 1


# --------------------------------------------------------------------------- sizes and errors, to the byte

def test_format_bytes_picks_the_unit_at_its_threshold():
    from services.vram import format_bytes

    assert format_bytes(None) == "?"
    assert [format_bytes(n) for n in (0, 100, 1023, 1024, 1536, 2047)] == \
        ["0 B", "100 B", "1023 B", "1 KB", "2 KB", "2 KB"]
    assert [format_bytes(n) for n in (2**20 - 1, 2**20, 3 * 2**19, 100 * 2**20)] == \
        ["1024 KB", "1 MB", "2 MB", "100 MB"]
    # from a tenth of a GB on, GB with one decimal (as Colab and nvidia-smi show it)
    assert [format_bytes(n) for n in (GB / 10 - 1, GB / 10, 3 * GB // 2, 15 * GB)] == \
        ["102 MB", "0.1 GB", "1.5 GB", "15.0 GB"]
    assert format_bytes(-2 * GB) == "-2.0 GB" and format_bytes(-2048) == "-2 KB"


def test_is_oom_error_by_type_and_by_message():
    class PipelineOom(torch.cuda.OutOfMemoryError):  # a subclass keeps torch's meaning
        pass

    class OutOfMemoryError(Exception):  # another library's OOM type, named like torch's
        pass

    assert is_oom_error(PipelineOom("boom"))
    assert is_oom_error(OutOfMemoryError("boom"))
    assert is_oom_error(RuntimeError("cudaErrorMemoryAllocation: OUT_OF_MEMORY"))
    assert not is_oom_error(MemoryError("out of memory"))  # host RAM: evicting from the GPU does not help
    assert not is_oom_error(ModelsBusy("out of memory", busy=("a",)))
    assert not is_oom_error(KeyError("OutOfMemoryError"))


def test_offloader_settings_and_their_errors():
    with pytest.raises(ValueError, match=r"^budget_bytes is required on a CPU device \(no memory probe\)$"):
        VramOffloader(device="cpu")
    for bad in (0, -GB):
        with pytest.raises(ValueError, match="^budget_bytes must be positive$"):
            VramOffloader(device="cpu", budget_bytes=bad)
    for bad in ("gpu", "mps", "cpu:x", "cuda:", "CUDA"):
        with pytest.raises(ValueError, match=r"^device must be 'cpu' or 'cuda\[:N\]', got '" + bad):
            VramOffloader(device=bad, budget_bytes=GB)
    tiny = VramOffloader(budget_bytes=1)  # the default device is the CPU; one byte is a budget
    assert tiny.device == "cpu" and tiny.budget_bytes == 1 and tiny.is_cuda is False
    gpu = VramOffloader(device="cuda:1", budget_bytes=GB, mem_probe=lambda: (GB, 2 * GB))
    assert gpu.device == "cuda:1" and gpu.is_cuda is True
    assert VramOffloader(device="cuda", mem_probe=lambda: (GB, 2 * GB)).budget_bytes == 2 * GB
    off = make(10)
    with pytest.raises(ValueError, match="^estimate_bytes must be >= 0$"):
        off.register("neg", lambda d: FakeSession("neg"), runtime=Runtime.ONNX, estimate_bytes=-1)
    off.register("free", lambda d: FakeSession("free"), runtime="onnx", estimate_bytes=0)
    assert use(off, "free").name == "free" and off.snapshot()["peak_bytes"] == 0


def test_a_fresh_offloader_reports_nothing_used():
    off = make(10)
    snap = off.snapshot()
    assert (snap["used_bytes"], snap["peak_bytes"], snap["swaps"], snap["host_ram_used_bytes"]) == (0, 0, 0, 0)
    assert snap["free_bytes"] == 10 * GB and snap["models"] == [] and snap["devices"][0]["peak_bytes"] == 0
    assert repr(off) == "VramOffloader(device='cpu', used=0 B/10.0 GB, models=0)"


def test_too_large_errors_give_the_figures():
    bare = ModelTooLarge("no room")
    assert (bare.name, bare.need_bytes, bare.budget_bytes, bare.reserve_bytes, bare.free_bytes,
            bare.evictable_bytes, bare.busy) == ("", 0, 0, 0, 0, 0, ())
    lib = Lib()
    off = make(10, reserve_bytes=GB)
    reg_session(off, lib, "a", 2)
    reg_session(off, lib, "huge", 12)
    reg_session(off, lib, "exact", 9)
    use(off, "a")
    with pytest.raises(ModelTooLarge) as ei:
        use(off, "huge")
    err = ei.value
    assert str(err) == ("model huge needs 12.0 GB, budget is 10.0 GB minus a 1.0 GB reserve = 9.0 GB:"
                        " it can never fit on this device")
    assert (err.name, err.need_bytes, err.budget_bytes, err.reserve_bytes, err.free_bytes, err.busy) == \
        ("huge", 12 * GB, 10 * GB, GB, 7 * GB, ())
    assert not isinstance(err, ModelsBusy)
    use(off, "exact")  # exactly the budget minus the reserve fits (after evicting a)
    assert states(off) == {"a": "unloaded", "huge": "unloaded", "exact": "gpu"}
    with pytest.raises(ModelTooLarge) as ei:
        use(off, "huge")
    assert ei.value.free_bytes == 0  # the device is full


def held(off: VramOffloader, name: str):
    """Hold ``name`` in use (as a request would) until the returned context exits."""
    ctx = off.acquire(name)
    ctx.__enter__()
    return ctx


def test_busy_and_too_large_beside_busy_models_give_the_figures():
    free = [0.5 * GB]  # other processes hold the card: the probe says 0.5 GB free
    off = VramOffloader(device="cpu", budget_bytes=10 * GB, reserve_bytes=GB, gc_collect=False,
                        mem_probe=lambda: (int(free[0]), 16 * GB))
    for n, gb in (("a", 4), ("b", 3), ("c", 6.5), ("d", 7)):
        off.register(n, lambda d, n=n: FakeSession(n), runtime="onnx", estimate_bytes=int(gb * GB))
    free[0] = 20 * GB
    use(off, "b")
    ctx = held(off, "a")
    free[0] = 0.5 * GB
    try:
        with pytest.raises(ModelsBusy) as ei:
            use(off, "c")  # -0.5 GB free + 3 idle + 4 busy = 6.5: fits once a is released
        err = ei.value
        assert str(err) == (
            "model c needs 6.5 GB; 0 B free of a 9.0 GB budget (10.0 GB minus 1.0 GB reserve); the device"
            " reports 0.5 GB free, idle models could free 3.0 GB more; busy: a (4.0 GB, in use)."
            " Try again when they finish.")
        assert (err.name, err.need_bytes, err.budget_bytes, err.reserve_bytes, err.free_bytes,
                err.evictable_bytes, err.busy) == ("c", int(6.5 * GB), 10 * GB, GB, 0, 3 * GB, ("a",))
        with pytest.raises(ModelTooLarge) as ei:
            use(off, "d")  # 7 GB > -0.5 + 3 + 4 even when a is released
        err = ei.value
        assert not isinstance(err, ModelsBusy)
        assert str(err) == (
            "model d needs 7.0 GB; 0 B free of a 9.0 GB budget (10.0 GB minus 1.0 GB reserve); the device"
            " reports 0.5 GB free, idle models could free 3.0 GB more; busy: a (4.0 GB, in use). Nothing was evicted.")
        assert (err.name, err.need_bytes, err.budget_bytes, err.reserve_bytes, err.free_bytes,
                err.evictable_bytes, err.busy) == ("d", 7 * GB, 10 * GB, GB, 0, 3 * GB, ("a",))
        assert states(off) == {"a": "gpu", "b": "gpu", "c": "unloaded", "d": "unloaded"}
    finally:
        ctx.__exit__(None, None, None)


def test_too_large_names_every_busy_model_or_none():
    lib = Lib()
    off = make(10)
    for n, gb in (("a", 4), ("b", 5), ("c", 7)):
        reg_session(off, lib, n, gb)
    with off.acquire("a"), off.acquire("b"):
        with pytest.raises(ModelsBusy) as ei:
            use(off, "c")
    assert str(ei.value) == (
        "model c needs 7.0 GB; 1.0 GB free of a 10.0 GB budget (10.0 GB minus 0 B reserve), idle models could"
        " free 0 B more; busy: a (4.0 GB, in use), b (5.0 GB, in use). Try again when they finish.")
    assert ei.value.busy == ("a", "b")
    # other processes hold the card; none of ours is busy
    card = VramOffloader(device="cpu", budget_bytes=10 * GB, gc_collect=False, mem_probe=lambda: (2 * GB, 16 * GB))
    reg_session(card, lib, "d", 3)
    with pytest.raises(ModelTooLarge) as ei:
        use(card, "d")
    assert str(ei.value) == (
        "model d needs 3.0 GB; 2.0 GB free of a 10.0 GB budget (10.0 GB minus 0 B reserve); the device reports"
        " 2.0 GB free, idle models could free 0 B more; busy: none. Nothing was evicted.")
    assert ei.value.busy == () and ei.value.free_bytes == 2 * GB


def test_a_model_that_fits_only_by_evicting_every_idle_one():
    lib = Lib()
    off = make(10)
    for n, gb in (("a", 4), ("b", 4), ("all", 10)):
        reg_session(off, lib, n, gb)
    use(off, "a")
    use(off, "b")
    use(off, "all")
    assert states(off) == {"a": "unloaded", "b": "unloaded", "all": "gpu"}
    assert lib.unloads == ["a", "b"]
    snap = off.snapshot()
    assert snap["free_bytes"] == 0 and snap["devices"][0]["free_bytes"] == 0


def test_eviction_never_goes_over_the_budget_by_a_byte():
    lib = Lib()
    off = make(10)
    reg_session(off, lib, "a", 4)
    off.register("b", lambda d: FakeSession("b"), runtime="onnx", estimate_bytes=6 * GB + 1)
    use(off, "a")
    use(off, "b")  # one byte more than the room left: a goes first
    assert states(off) == {"a": "unloaded", "b": "gpu"}
    assert off.snapshot()["peak_bytes"] == 6 * GB + 1


# --------------------------------------------------------------------------- CUDA, through a stand-in torch

class FakeCuda:
    """torch.cuda as the offloader uses it: per-device memory, synchronise, cache, current device."""

    def __init__(self, memory: dict[str, list[int]], available: bool = True) -> None:
        self.memory = memory  # device -> [free, total]
        self.available, self.initialized = available, True
        self.calls: list[tuple] = []
        self.current: str | None = None

    def is_available(self) -> bool:
        return self.available

    def is_initialized(self) -> bool:
        return self.initialized

    def mem_get_info(self, device):
        free, total = self.memory[device.name]
        return float(free), float(total)  # torch answers ints; the offloader must not rely on it

    def synchronize(self, device) -> None:
        self.calls.append(("synchronize", device.name))

    def empty_cache(self) -> None:
        self.calls.append(("empty_cache",))

    def device(self, name: str):
        cuda = self

        class Current:
            def __enter__(self):
                self.prev, cuda.current = cuda.current, name

            def __exit__(self, *exc):
                cuda.current = self.prev

        return Current()


class FakeDevice:
    def __init__(self, name: str) -> None:
        self.name = name


def fake_torch(monkeypatch, memory: dict[str, list[int]], available: bool = True) -> FakeCuda:
    import sys
    from types import SimpleNamespace

    cuda = FakeCuda(memory, available)
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=cuda, device=FakeDevice))
    return cuda


def reg_card(off: VramOffloader, cuda: FakeCuda, name: str, gb: float, seen: list, estimate_gb: float | None = None):
    """A model that really takes ``gb`` of its card while loaded."""
    def load(device: str) -> FakeSession:
        seen.append((name, device, cuda.current))
        cuda.memory[device][0] -= int(gb * GB)
        session = FakeSession(name)
        session.device = device
        return session

    def unload(session: FakeSession) -> None:
        cuda.memory[session.device][0] += int(gb * GB)

    off.register(name, load, runtime="onnx", estimate_bytes=int((gb if estimate_gb is None else estimate_gb) * GB),
                 unload=unload)


def test_on_cuda_the_card_gives_the_budget_and_the_footprint(monkeypatch):
    cuda = fake_torch(monkeypatch, {"cuda:1": [14 * GB, 16 * GB]})
    off = VramOffloader(device="cuda:1", gc_collect=False)
    assert off.budget_bytes == 16 * GB and off.is_cuda is True
    seen: list = []
    reg_card(off, cuda, "w", 3, seen, estimate_gb=1)
    use(off, "w")
    assert seen == [("w", "cuda:1", None)]  # one device: the current CUDA device is left alone
    assert off.size_of("w") == 3 * GB
    assert off.device_memory() == (11 * GB, 16 * GB) and isinstance(off.device_memory()[0], int)
    # the cache is emptied (after waiting for the device) before measuring
    assert ("synchronize", "cuda:1") in cuda.calls and ("empty_cache",) in cuda.calls
    snap = off.snapshot()
    assert (snap["device_free_bytes"], snap["device_total_bytes"]) == (11 * GB, 16 * GB)
    assert isinstance(snap["device_free_bytes"], int) and isinstance(snap["devices"][0]["device_total_bytes"], int)
    assert snap["free_bytes"] == 11 * GB  # the card's free memory is less than budget - used (13 GB)


def test_two_gpus_load_and_run_on_their_own_gpu(monkeypatch):
    from services.vram import DeviceSpec

    cuda = fake_torch(monkeypatch, {"cuda:0": [16 * GB, 16 * GB], "cuda:1": [16 * GB, 16 * GB]})
    off = VramOffloader(devices=[DeviceSpec("cuda:0"), DeviceSpec("cuda:1")], gc_collect=False)
    assert off.budget_bytes == 32 * GB and off.device == "cuda:0,cuda:1"
    seen: list = []
    reg_card(off, cuda, "a", 10, seen)
    reg_card(off, cuda, "b", 10, seen)
    use(off, "a")
    use(off, "b")
    assert seen == [("a", "cuda:0", "cuda:0"), ("b", "cuda:1", "cuda:1")]
    assert off.run("b", lambda m: cuda.current) == "cuda:1"
    with off.acquire("a"):
        assert cuda.current == "cuda:0"
    assert cuda.current is None
    # freeing or moving a model waits for its own GPU only
    own = [("synchronize", "cuda:1"), ("empty_cache",)]
    cuda.calls.clear()
    off.evict("b")
    assert cuda.calls == own
    use(off, "b")
    cuda.calls.clear()
    reg_card(off, cuda, "b", 10, seen)  # re-registered: the old one is freed
    assert cuda.calls == own
    cuda.calls.clear()
    use(off, "b")  # every cache once before planning, then its own GPU around the measurement
    assert cuda.calls == [("synchronize", "cuda:0"), *own, *own, *own]
    with off.acquire("b"):
        off.unload_all()
        cuda.calls.clear()
    assert cuda.calls == own  # freed on release (a, idle, was freed at once)
    use(off, "a")
    use(off, "b")
    assert off.device_of("b") == "cuda:1"
    cuda.calls.clear()
    with pytest.raises(VramError):
        off.run("b", lambda m: (_ for _ in ()).throw(RuntimeError("CUDA out of memory")))
    assert cuda.calls == own  # out of memory on cuda:1: only cuda:1's idle models and cache
    cuda.calls.clear()
    off.unload("b")
    assert cuda.calls == own
    off.register("c", lambda d: (_ for _ in ()).throw(RuntimeError("CUDA out of memory")), runtime="onnx",
                 estimate_bytes=4 * GB)
    cuda.calls.clear()
    with pytest.raises(VramError, match="on cuda:1"):
        use(off, "c")  # cuda:1 is empty: there, and its retries and clean-up touch only cuda:1
    assert cuda.calls.count(("synchronize", "cuda:0")) == 1 and cuda.calls.count(("synchronize", "cuda:1")) == 5
    # before CUDA is initialised nothing is synchronised (that would initialise it)
    cuda.initialized = False
    cuda.calls.clear()
    off.unload("a")
    use(off, "a")
    assert cuda.calls == []


def test_cuda_names_without_a_usable_gpu_are_bookkeeping_only(monkeypatch):
    from services.vram import DeviceSpec

    cuda = fake_torch(monkeypatch, {}, available=False)
    specs = [DeviceSpec(f"cuda:{i}", 8 * GB, lambda: (8 * GB, 8 * GB)) for i in (0, 1)]
    off = VramOffloader(devices=specs, gc_collect=False)
    seen: list = []
    off.register("a", lambda d: seen.append((d, cuda.current)) or FakeSession("a"), runtime="onnx",
                 estimate_bytes=GB)
    use(off, "a")
    assert seen == [("cuda:0", None)] and cuda.calls == []
    import sys

    monkeypatch.delitem(sys.modules, "torch")  # no torch at all (a CTranslate2-only worker)
    off.unload("a")
    assert use(off, "a").name == "a" and seen[-1] == ("cuda:0", None)


# --------------------------------------------------------------------------- out of memory, to the word

def test_loader_oom_twice_says_what_is_busy_and_what_the_card_reports(caplog):
    off = VramOffloader(device="cpu", budget_bytes=20 * GB, gc_collect=False, mem_probe=lambda: (6 * GB, 24 * GB))
    lib = Lib()
    reg_session(off, lib, "held", 2)
    reg_session(off, lib, "idle", 2)
    use(off, "idle")
    reason = "CUDA out of memory. " + "x" * 300

    def loader(device):
        raise RuntimeError(reason)

    off.register("big", loader, runtime=Runtime.ONNX, estimate_bytes=4 * GB)
    reg_session(off, lib, "held2", 1)
    caplog.set_level(logging.INFO, logger="enfoads.vram")
    with off.acquire("held"), off.acquire("held2"):
        with pytest.raises(VramError) as ei:
            use(off, "big")
    assert str(ei.value) == (
        "not enough GPU memory to load big (about 4.0 GB) even after evicting every idle model; busy: held, held2;"
        f" the device reports 6.0 GB free (RuntimeError: {reason[:200]})")
    assert states(off) == {"held": "gpu", "idle": "unloaded", "big": "unloaded", "held2": "gpu"}
    assert "freed idle from the device (out of memory loading big)" in [r.getMessage() for r in caplog.records]

    alone = make(20)
    alone.register("big", loader, runtime=Runtime.ONNX, estimate_bytes=4 * GB)
    with pytest.raises(VramError) as ei:
        use(alone, "big")
    assert str(ei.value) == ("not enough GPU memory to load big (about 4.0 GB) even after evicting every idle"
                             f" model; busy: none (RuntimeError: {reason[:200]})")


def test_run_oom_twice_says_what_was_evicted_and_what_is_busy():
    off = VramOffloader(device="cpu", budget_bytes=20 * GB, gc_collect=False, mem_probe=lambda: (GB, 24 * GB))
    lib = Lib()
    for n in ("w", "held", "held2", "idle1", "idle2"):
        reg_session(off, lib, n, 0.5)
    use(off, "idle1")
    use(off, "idle2")

    def fn(model):
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB")

    with off.acquire("held"), off.acquire("held2"):
        with pytest.raises(VramError) as ei:
            off.run("w", fn)
    assert str(ei.value) == (
        "out of GPU memory running w (model 0.5 GB), even after evicting 2 idle model(s); other models in use:"
        " held, held2; the device reports 1.0 GB free. Try a smaller request (resolution, batch, length).")
    assert states(off) == {"w": "gpu", "held": "gpu", "held2": "gpu", "idle1": "unloaded", "idle2": "unloaded"}
    alone = make(20)
    reg_session(alone, lib, "w", 2)
    with pytest.raises(VramError) as ei:
        alone.run("w", fn)
    assert str(ei.value) == (
        "out of GPU memory running w (model 2.0 GB), even after evicting 0 idle model(s); other models in use:"
        " none. Try a smaller request (resolution, batch, length).")


class Flaky:
    """A torch-like model whose next ``fail`` moves raise an out-of-memory error; moves are in place
    (``.to()`` returns None, as some wrappers do)."""

    def __init__(self, lib: Lib) -> None:
        self.lib, self.device, self.fail = lib, "cpu", 0

    def to(self, device: str) -> None:
        self.lib.moves.append(("flaky", device))
        if self.fail:
            self.fail -= 1
            raise RuntimeError("CUDA out of memory. Tried to allocate 1.00 GiB")
        self.device = device


def test_a_parked_model_that_cannot_come_back_is_parked_again(caplog):
    lib = Lib()
    off = make(10)
    model = Flaky(lib)
    off.register("t", lambda d: lib.loads.append(("t", d)) or model, runtime="torch", estimate_bytes=4 * GB,
                 unload=lambda obj: lib.unloads.append("t"), to_device=lambda obj, device: obj.to(device))
    assert use(off, "t") is model
    off.evict("t")
    model.fail = 2  # both tries to bring it back fail; sending it back to cpu works
    with pytest.raises(VramError):
        use(off, "t")
    assert states(off) == {"t": "cpu"} and lib.unloads == []
    assert lib.moves[-1] == ("flaky", "cpu") and len(lib.moves) == 4
    assert use(off, "t") is model and lib.loads == [("t", "cpu")]  # moved back in place, not loaded again
    assert states(off) == {"t": "gpu"}
    off.evict("t")
    model.fail = 3  # it cannot even go back to cpu: freed
    caplog.set_level(logging.INFO, logger="enfoads.vram")
    with pytest.raises(VramError):
        use(off, "t")
    assert states(off) == {"t": "unloaded"} and lib.unloads == ["t"]
    assert "freed t from host RAM (failed move)" in [r.getMessage() for r in caplog.records]


def test_a_model_sent_back_to_cpu_after_a_failed_move_is_the_object_that_came_back():
    calls: list = []
    fail = [0]

    def to(obj, device):  # every move returns a new object (as a converter would)
        calls.append(obj)
        if fail[0]:
            fail[0] -= 1
            raise RuntimeError("CUDA out of memory")
        return {"n": len(calls)}

    off = make(10)
    off.register("t", lambda d: {"n": 0}, runtime="torch", estimate_bytes=4 * GB, to_device=to)
    use(off, "t")
    off.evict("t")
    fail[0] = 2
    with pytest.raises(VramError):
        use(off, "t")
    assert calls[-1] == {"n": 1} and len(calls) == 4  # the parked one tried twice, then sent back
    assert use(off, "t") == {"n": 5}
    assert calls[-1] == {"n": 4}  # the object the failed move's way back returned


def test_moves_that_return_a_new_object_or_none():
    lib = Lib()
    off = make(10)
    copies: list = []
    sources: list = []

    def copy_to(obj, device):  # like a converter that returns a new object on each move
        sources.append(obj)
        new = FakeTorchModel(obj.name, lib, device)
        copies.append(new)
        return new

    reg_torch(off, lib, "copied", 4, to_device=copy_to)
    reg_torch(off, lib, "inplace", 4, to_device=lambda obj, device: None)
    reg_session(off, lib, "big", 8)
    first = use(off, "copied")
    use(off, "big")  # parks copied
    assert states(off)["copied"] == "cpu" and copies[-1].device == "cpu"
    back = use(off, "copied")  # moved back: the object the last move returned
    assert back is copies[-1] and back is not first and back.device == "cpu"
    assert sources == [first, copies[0]]  # what came back is the parked copy, moved
    model = use(off, "inplace")
    use(off, "big")
    assert states(off)["inplace"] == "cpu"
    assert use(off, "inplace") is model and lib.loads.count(("inplace", "cpu")) == 1

    class Copying(FakeTorchModel):  # .to() returns a new object, as tensors do
        def to(self, device):
            self.lib.moves.append((self.name, device))
            return Copying(self.name, self.lib, device)

    off.register("copying", lambda d: Copying("copying", lib, d), runtime="torch", estimate_bytes=4 * GB)
    first = use(off, "copying")
    use(off, "big")
    back = use(off, "copying")
    assert back is not first and isinstance(back, Copying) and lib.moves[-2:] == [("copying", "cpu")] * 2


def test_only_torch_models_are_moved_and_only_within_the_host_budget():
    lib = Lib()
    off = make(10, host_ram_budget_bytes=4 * GB)

    def loader(name):
        return lambda device: FakeTorchModel(name, lib, device)

    off.register("onnx", loader("onnx"), runtime="onnx", estimate_bytes=4 * GB)  # has .to(): still never moved
    off.register("fits", loader("fits"), runtime="torch", estimate_bytes=4 * GB)  # exactly the host budget
    use(off, "onnx")
    off.evict("onnx")
    use(off, "fits")
    off.evict("fits")
    assert states(off) == {"onnx": "unloaded", "fits": "cpu"}
    assert lib.moves == [("fits", "cpu")]


def test_a_model_that_cannot_be_parked_is_freed():
    lib = Lib()
    off = make(10)
    model = Flaky(lib)
    off.register("t", lambda d: model, runtime="torch", estimate_bytes=4 * GB,
                 unload=lambda obj: lib.unloads.append("t"))
    use(off, "t")
    model.fail = 1
    off.evict("t")
    assert states(off) == {"t": "unloaded"} and lib.unloads == ["t"]


def test_host_budget_frees_the_least_recent_parked_model_even_the_one_being_parked():
    lib = Lib()
    off = make(10, host_ram_budget_bytes=6 * GB)
    reg_torch(off, lib, "old", 4)
    reg_torch(off, lib, "newer", 4)
    reg_session(off, lib, "big", 8)
    use(off, "old")
    use(off, "newer")
    off.evict("newer")  # parked first, but used after old
    use(off, "big")  # parks old: 8 GB parked > 6: old is the least recently used
    assert states(off) == {"old": "unloaded", "newer": "cpu", "big": "gpu"}
    assert lib.unloads == ["old"]


def test_a_model_whose_loader_returns_none_is_still_freed():
    calls = []
    off = make(10)
    off.register("global", lambda d: calls.append(d), runtime="onnx", estimate_bytes=GB,
                 unload=lambda obj: calls.append("unload"))
    assert use(off, "global") is None
    off.unload("global")
    assert states(off) == {"global": "unloaded"} and off.snapshot()["used_bytes"] == 0
    assert calls == ["cpu"]  # no object: no unload hook to call


def test_unload_all_goes_past_unloaded_and_busy_models():
    lib = Lib()
    off = make(10)
    for n in ("never", "busy", "a", "b"):
        reg_session(off, lib, n, 2)
    use(off, "a")
    use(off, "b")
    with off.acquire("busy"):
        assert off.unload_all() == ["a", "b"]
        assert states(off) == {"never": "unloaded", "busy": "gpu", "a": "unloaded", "b": "unloaded"}
        assert not any(m["moving"] for m in off.snapshot()["models"])
    assert states(off)["busy"] == "unloaded"
    assert use(off, "a").name == "a"


def test_refusals_name_the_action_and_the_users():
    lib = Lib()
    off = make(10)
    reg_session(off, lib, "t", 2)
    with off.acquire("t"), off.acquire("t"):
        assert off.snapshot()["models"][0]["in_use"] == 2
        with pytest.raises(VramError, match=r"^cannot evict t: in use by 2 request\(s\)$"):
            off.evict("t")
        with pytest.raises(VramError, match=r"^cannot unload t: in use by 2 request\(s\)$"):
            off.unload("t")
    assert off.snapshot()["models"][0]["in_use"] == 0
    off.unload("t")
    assert not off.snapshot()["models"][0]["moving"]
    assert use(off, "t").name == "t"


def test_freeing_a_model_collects_its_reference_cycles():
    import gc
    import weakref

    class Cyclic:
        def __init__(self):
            self.me = self

    refs = []

    def loader(device):
        obj = Cyclic()
        refs.append(weakref.ref(obj))
        return obj

    off = VramOffloader(budget_bytes=10 * GB)  # gc_collect defaults to on
    off.register("c", loader, runtime="onnx", estimate_bytes=GB)
    use(off, "c")
    gc.disable()  # only the offloader's own collection may free it
    try:
        off.unload("c")
        assert refs[0]() is None
    finally:
        gc.enable()


def test_the_log_says_what_moved_where_and_why(caplog):
    import re

    lib = Lib()
    free = [16 * GB]
    off = VramOffloader(device="cpu", budget_bytes=10 * GB, host_ram_budget_bytes=3 * GB, gc_collect=False,
                        mem_probe=lambda: (free[0], 16 * GB))

    def measured(device):
        free[0] -= 3 * GB
        return FakeSession("m")

    off.register("m", measured, runtime="onnx", estimate_bytes=GB, unload=lambda o: free.__setitem__(0, free[0] + 3 * GB))
    reg_torch(off, lib, "t", 2)
    reg_torch(off, lib, "t2", 2)
    reg_session(off, lib, "big", 8)
    lin = make(1)
    lin.register("lin", lambda d: torch.nn.Linear(100, 50), runtime="torch", estimate_bytes=2**20)
    caplog.set_level(logging.INFO, logger="enfoads.vram")
    for name in ("m", "t", "t2", "big", "t"):
        use(off, name)
    off.unload("t")
    off.unload_all()
    use(lin, "lin")
    lin.evict("lin")
    use(lin, "lin")
    lin.unload("lin")  # no unload hook: just dropped
    with off.acquire("big"):
        off.register("big", lambda d: FakeSession("big2"), runtime="onnx", estimate_bytes=GB)
    use(off, "big")
    with off.acquire("big"):
        off.unload_all()
    lines = [re.sub(r" in \d+\.\d s", " in _ s", r.getMessage()) for r in caplog.records if r.name == "enfoads.vram"]
    assert lines == [
        "loaded m on cpu in _ s (3.0 GB measured)",
        "loaded t on cpu in _ s (2.0 GB estimated)",
        "loaded t2 on cpu in _ s (2.0 GB estimated)",
        "freed m from the device (room for big)",
        "evicted t (room for big) from cpu to cpu in _ s (2.0 GB)",
        "loaded big on cpu in _ s (8.0 GB estimated)",
        "evicted t2 (room for t) from cpu to cpu in _ s (2.0 GB)",
        "freed t2 from host RAM (host RAM budget)",
        "moved t on cpu in _ s (2.0 GB estimated)",
        "freed t from the device (requested)",
        "freed big from the device (unload all)",
        "loaded lin on cpu in _ s (20 KB parameter bytes)",
        "evicted lin (requested) from cpu to cpu in _ s (20 KB)",
        "moved lin on cpu in _ s (20 KB)",
        "freed lin from the device (requested)",
        "loaded big on cpu in _ s (8.0 GB estimated)",
        "re-registered big: old model freed when its 1 user(s) finish",
        "freed big from the device (retired)",
        "loaded big on cpu in _ s (1.0 GB estimated)",
        "big is in use: freed when released",
        "freed big from the device (unload requested)",
    ]
    assert all(r.levelno == logging.INFO for r in caplog.records)  # no hook failures on the way


# --------------------------------------------------------------------------- moving flags, measured overcommit

def moving_of(off: VramOffloader, name: str) -> bool:
    return next(m["moving"] for m in off.snapshot()["models"] if m["name"] == name)


def test_a_model_shows_as_moving_while_it_is_moved_or_freed_and_not_after():
    """/vram-monitor shows "moving" while a transition runs; acquire waits on it, so it must end."""
    clock = FakeClock()
    off = make(10, clock=clock, idle_offload_s=60, host_ram_budget_bytes=4 * GB)
    seen: list = []

    def reg(name, gb, runtime="torch"):
        def to(obj, device):
            seen.append((name, "to " + device, moving_of(off, name)))
            return obj

        off.register(name, lambda d: FakeSession(name), runtime=runtime, estimate_bytes=int(gb * GB), to_device=to,
                     unload=lambda obj: seen.append((name, "free", moving_of(off, name))))

    reg("t", 4)
    reg("o", 4, runtime="onnx")
    reg("big", 6, runtime="onnx")
    reg("t2", 4)
    use(off, "t")
    use(off, "o")
    use(off, "big")  # room for big: t, the least recent, is parked
    off.evict("big")
    use(off, "o")
    off.unload("o")
    use(off, "o")
    off.unload_all()
    use(off, "o")
    clock.t += 100
    off.offload_idle()
    use(off, "o")
    off.evict_idle_all()
    with off.acquire("o"):
        off.unload_all()  # in use: freed on release
    use(off, "t")
    use(off, "t2")
    use(off, "big")  # t parked
    off.evict("t2")  # parking t2 goes over the host RAM budget: t, the older, is freed
    assert [(name, what) for name, what, _ in seen] == [
        ("t", "to cpu"), ("big", "free"), ("o", "free"), ("t", "free"), ("o", "free"), ("o", "free"),
        ("o", "free"), ("o", "free"), ("t", "to cpu"), ("t2", "to cpu"), ("t", "free")]
    assert all(flag for _, _, flag in seen)
    off.evict("t2")  # parked already: nothing to do
    assert not any(m["moving"] for m in off.snapshot()["models"])
    assert states(off) == {"t": "unloaded", "o": "unloaded", "big": "gpu", "t2": "cpu"}


def test_measured_overcommit_evicts_just_enough_and_warns_when_it_cannot(caplog):
    free = [16 * GB]

    def probe():
        return free[0], 16 * GB

    def make_probed():
        return VramOffloader(device="cpu", budget_bytes=10 * GB, mem_probe=probe, gc_collect=False)

    def reg(off, name, real, estimate=2 * GB):
        def load(device):
            free[0] -= real
            return FakeSession(name)

        def unload(obj):
            flags.append(moving_of(off, name))
            free[0] += real

        off.register(name, load, runtime="onnx", estimate_bytes=estimate, unload=unload)

    flags: list = []

    off = make_probed()
    reg(off, "a", 2 * GB)
    reg(off, "b", 2 * GB)
    reg(off, "c", 6 * GB + 1)  # estimated 2 GB: measured one byte over what is left
    for n in "abc":
        use(off, n)
    assert states(off) == {"a": "unloaded", "b": "gpu", "c": "gpu"}
    assert flags == [True] and not any(m["moving"] for m in off.snapshot()["models"])
    off.unload_all()

    off = make_probed()
    reg(off, "a", 2 * GB)
    reg(off, "b", 2 * GB)
    reg(off, "c", 8 * GB)  # 2 GB over: exactly a's size
    caplog.set_level(logging.INFO, logger="enfoads.vram")
    for n in "abc":
        use(off, n)
    assert states(off) == {"a": "unloaded", "b": "gpu", "c": "gpu"}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "freed a from the device (c measured larger than estimated)" in [r.getMessage() for r in caplog.records]
    off.unload_all()

    off = make_probed()
    reg(off, "a", 4 * GB, estimate=4 * GB)
    reg(off, "c", 6 * GB + 1)
    with off.acquire("a"):
        use(off, "c")  # one byte over, and a is in use: nothing to evict
    assert states(off) == {"a": "gpu", "c": "gpu"}
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        "over the VRAM budget by 1 B: the models holding it are in use"]


def test_resident_models_used_since_a_time():
    lib = Lib()
    off = make(10)
    for n in ("old", "recent", "busy", "parked"):
        reg_torch(off, lib, n, 1) if n == "parked" else reg_session(off, lib, n, 1)
    use(off, "old")
    use(off, "busy")
    use(off, "parked")
    off.evict("parked")
    use(off, "recent")
    since = next(m["last_used"] for m in off.snapshot()["models"] if m["name"] == "recent")
    with off.acquire("busy"):
        assert off.resident_used_since(since) == ["recent", "busy"]  # parked and older ones left out
        assert off.resident_used_since(since + 3600) == ["busy"]
    assert off.resident_used_since(since + 3600) == []
    assert off.names() == ["old", "recent", "busy", "parked"]


def test_idle_exactly_the_timeout_is_idle():
    lib = Lib()
    clock = FakeClock()
    off = make(10, clock=clock, idle_offload_s=60)
    reg_session(off, lib, "a", 1)
    use(off, "a")
    clock.t += 59.5
    assert off.offload_idle() == []
    clock.t += 0.5
    assert off.offload_idle() == ["a"]


def test_run_waits_for_busy_models_when_asked():
    lib = Lib()
    off = make(10)
    waits = watch_waits(off)
    reg_session(off, lib, "a", 6)
    reg_session(off, lib, "b", 6)
    t = hold_until_one_waits(off, waits, "a")
    assert off.run("b", lambda m: m.name, wait_s=30) == "b"
    t.join()


def test_parameter_bytes_count_buffers_and_shared_weights_once():
    off = make(1)
    norm = torch.nn.BatchNorm1d(10)  # 20 parameters, 21 buffers (running stats and a counter)
    off.register("norm", lambda d: norm, runtime="torch", estimate_bytes=2**20)
    use(off, "norm")
    expected = sum(t.numel() * t.element_size() for t in list(norm.parameters()) + list(norm.buffers()))
    assert off.size_of("norm") == expected

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 4)
            self.head = torch.nn.Linear(4, 10, bias=False)
            self.head.weight = self.embed.weight  # one tensor, two names
            self.extra = torch.nn.Linear(4, 4)

    off.register("tied", lambda d: Tied(), runtime="torch", estimate_bytes=2**20)
    use(off, "tied")
    assert off.size_of("tied") == (40 + 16 + 4) * 4
    off.register("relu", lambda d: torch.nn.ReLU(), runtime="torch", estimate_bytes=1000)
    use(off, "relu")  # no tensors: the estimate stands
    assert off.size_of("relu") == 1000 and not off.snapshot()["models"][2]["measured"]


class StopAt(threading.Event):
    """The idle thread's stop event, reporting each wait's interval and the thread that waits."""

    import queue

    waits: "queue.Queue" = queue.Queue()

    def wait(self, timeout=None):
        if timeout is not None:
            me = threading.current_thread()
            StopAt.waits.put((timeout, me.name, me.daemon))
            timeout = 5
        return super().wait(timeout)


def test_idle_thread_interval_follows_the_timeout(monkeypatch):
    import services.vram as vram

    monkeypatch.setattr(vram.threading, "Event", StopAt)
    for idle_s, interval in ((300, 60.0), (100, 20.0), (2, 1.0), (1000, 60.0)):
        off = make(10, idle_offload_s=idle_s)
        off.start_idle_thread()
        assert StopAt.waits.get(timeout=5) == (interval, "vram-idle-offload", True)
        thread = off._idle_thread
        off.stop()
        assert not thread.is_alive() and StopAt.waits.empty()
    off = make(10)
    off.stop()  # never started: nothing to stop


def test_the_log_gives_each_reason(caplog):
    import re

    lib = Lib()
    clock = FakeClock()
    off = make(10, clock=clock, idle_offload_s=60)
    reg_torch(off, lib, "t", 2)
    reg_session(off, lib, "s", 2)
    use(off, "t")
    use(off, "s")
    caplog.set_level(logging.INFO, logger="enfoads.vram")
    off.evict("t")
    use(off, "t")
    clock.t += 100
    off.offload_idle()
    use(off, "s")
    off.register("s", lambda d: FakeSession("s2"), runtime="onnx", estimate_bytes=2 * GB)
    use(off, "t")
    use(off, "s")
    calls = []

    def fn(model):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory")

    off.run("s", fn)
    use(off, "t")
    off.evict_idle_all()
    lines = [re.sub(r" in \d+\.\d s", " in _ s", r.getMessage()) for r in caplog.records]
    assert lines == [
        "evicted t (requested) from cpu to cpu in _ s (2.0 GB)",
        "moved t on cpu in _ s (2.0 GB estimated)",
        "freed s from the device (idle)",
        "evicted t (idle) from cpu to cpu in _ s (2.0 GB)",
        "loaded s on cpu in _ s (2.0 GB estimated)",
        "freed s from the device (re-registered)",
        "moved t on cpu in _ s (2.0 GB estimated)",
        "loaded s on cpu in _ s (2.0 GB estimated)",
        "out of memory running s (CUDA out of memory): evicting every idle model and retrying once",
        "evicted t (out of memory running s) from cpu to cpu in _ s (2.0 GB)",
        "moved t on cpu in _ s (2.0 GB estimated)",
        "freed s from the device (requested)",
        "evicted t (requested) from cpu to cpu in _ s (2.0 GB)",
    ]


def test_a_short_busy_wait_still_waits(monkeypatch):
    """wait_s below a second: the wait still happens (time is frozen, so only the release ends it)."""
    import services.vram as vram
    from types import SimpleNamespace

    monkeypatch.setattr(vram, "time", SimpleNamespace(monotonic=lambda: 0.0, time=time.time,
                                                      perf_counter=time.perf_counter))
    lib = Lib()
    off = make(10)
    waits = watch_waits(off)
    reg_session(off, lib, "a", 6)
    reg_session(off, lib, "b", 6)
    t = hold_until_one_waits(off, waits, "a")
    with off.acquire("b", wait_s=0.5) as m:
        assert m.name == "b"
    t.join()


def test_a_footprint_is_measured_once_and_counts_each_load_and_move():
    free = [16 * GB]
    takes = [3 * GB]
    off = VramOffloader(device="cpu", budget_bytes=16 * GB, mem_probe=lambda: (free[0], 16 * GB), gc_collect=False)

    def loader(device):
        free[0] -= takes[0]
        return torch.nn.Linear(10, 10)  # 440 parameter bytes: the probe's figure wins

    def unload(obj):
        free[0] += takes[0]

    off.register("m", loader, runtime="torch", estimate_bytes=GB, unload=unload)
    use(off, "m")
    assert off.size_of("m") == 3 * GB
    off.unload("m")
    takes[0] = 5 * GB  # a later load that happens to take more does not change the footprint
    use(off, "m")
    assert off.size_of("m") == 3 * GB
    off.evict("m")
    use(off, "m")
    off.evict("m")
    use(off, "m")
    m = off.snapshot()["models"][0]
    assert (m["loads"], m["moves"]) == (2, 2)
    assert 0 <= m["load_seconds"] < 60 and 0 <= m["move_seconds"] < 60  # seconds, not a clock reading

    tiny = VramOffloader(device="cpu", budget_bytes=16 * GB, mem_probe=lambda: (free[0], 16 * GB), gc_collect=False)
    takes[0] = 1
    tiny.register("t", loader, runtime="onnx", estimate_bytes=GB)
    use(tiny, "t")
    assert tiny.size_of("t") == 1  # even one byte is a measurement


def test_unloading_twice_calls_the_hook_once_and_logs_once(caplog):
    lib = Lib()
    off = make(10)
    reg_session(off, lib, "s", 2)
    reg_session(off, lib, "never", 2)
    use(off, "s")
    caplog.set_level(logging.INFO, logger="enfoads.vram")
    off.unload("s")
    off.unload("s")
    off.unload("never")
    assert lib.unloads == ["s"]
    assert [r.getMessage() for r in caplog.records] == ["freed s from the device (requested)"]


def test_a_model_that_cannot_be_parked_is_freed_and_the_log_says_why(caplog):
    lib = Lib()
    off = make(10)
    model = Flaky(lib)
    off.register("t", lambda d: model, runtime="torch", estimate_bytes=4 * GB)
    reg_session(off, lib, "big", 8)
    use(off, "t")
    model.fail = 1
    caplog.set_level(logging.INFO, logger="enfoads.vram")
    use(off, "big")
    assert states(off) == {"t": "unloaded", "big": "gpu"}
    messages = [r.getMessage() for r in caplog.records]
    assert messages[:2] == ["moving t to cpu failed (CUDA out of memory. Tried to allocate 1.00 GiB): freeing it",
                            "freed t from the device (room for big)"]


def test_by_default_a_model_idle_for_five_minutes_leaves_the_device():
    lib = Lib()
    clock = FakeClock()
    off = make(10, clock=clock)
    reg_session(off, lib, "a", 1)
    use(off, "a")
    clock.t += 299
    assert off.offload_idle() == []
    clock.t += 1
    assert off.offload_idle() == ["a"]


def test_a_replaced_registration_is_dropped_after_its_last_user():
    import weakref

    class Loader:
        def __call__(self, device):
            return FakeSession("old")

    off = make(10)
    loader = Loader()
    ref = weakref.ref(loader)
    off.register("w", loader, runtime="onnx", estimate_bytes=GB)
    del loader
    with off.acquire("w"):
        off.register("w", lambda d: FakeSession("new"), runtime="onnx", estimate_bytes=GB)
        assert ref() is not None  # still in use
    assert ref() is None  # nothing keeps the replaced model's registration


def test_a_busy_wait_gives_up_at_its_deadline():
    lib = Lib()
    off = make(10)
    reg_session(off, lib, "a", 6)
    reg_session(off, lib, "b", 6)
    with off.acquire("a"):  # held by this very thread: nobody releases it while b waits
        t0 = time.monotonic()
        with pytest.raises(ModelsBusy):
            use_wait = off.acquire("b", wait_s=0.05)
            use_wait.__enter__()
        assert time.monotonic() - t0 >= 0.05
    assert states(off) == {"a": "gpu", "b": "unloaded"}


class Gate:
    """Stands in for the offloader's load lock, telling the test when a thread is about to take it."""

    def __init__(self, lock) -> None:
        self.lock = lock
        self.entering: "list[str]" = []
        self.changed = threading.Condition()

    def __enter__(self):
        with self.changed:
            self.entering.append(threading.current_thread().name)
            self.changed.notify_all()
        self.lock.acquire()
        return self

    def __exit__(self, *exc):
        self.lock.release()

    def until(self, name: str) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: name in self.entering, 10), self.entering


def test_a_model_loaded_by_another_request_meanwhile_is_shared_not_loaded_again():
    lib = Lib()
    off = make(10)
    reg_session(off, lib, "m", 2)
    gate = Gate(off._load_lock)
    off._load_lock = gate
    got, done = threading.Event(), threading.Event()

    def second():
        with off.acquire("m") as m:
            assert m.name == "m"
            got.set()
            done.wait(10)

    gate.lock.acquire()  # this thread holds the load lock: the second request waits for it
    t = threading.Thread(target=second, name="second")
    t.start()
    try:
        gate.until("second")  # past its fast path (m not loaded yet), waiting for the load lock
        first = off.acquire("m")
        first.__enter__()  # this thread loads m meanwhile
    finally:
        gate.lock.release()
    assert got.wait(10)
    assert off.snapshot()["models"][0]["in_use"] == 2 and lib.loads == [("m", "cpu")]
    first.__exit__(None, None, None)
    done.set()
    t.join()
    assert states(off) == {"m": "gpu"}  # still resident once both are done


def test_parameter_bytes_of_shared_modules_odd_modules_and_one_byte():
    lin = torch.nn.Linear(10, 10)  # 440 bytes
    extra = torch.nn.Linear(2, 2)  # 24 bytes

    class Pipe:
        def __init__(self):
            self.components = {"a": lin, "b": torch.nn.Sequential(lin, extra)}  # lin shared by two components

        def to(self, device):
            return self

    class ParamsOnly:  # parameters() but no buffers()
        def parameters(self):
            return iter(lin.parameters())

    class OneByte(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("flag", torch.zeros(1, dtype=torch.uint8))

    off = make(1)
    for name, loader in (("pipe", Pipe), ("params", ParamsOnly), ("one", OneByte)):
        off.register(name, lambda d, loader=loader: loader(), runtime="torch", estimate_bytes=1000)
        use(off, name)
    assert [off.size_of(n) for n in ("pipe", "params", "one")] == [440 + 24, 440, 1]


def test_simulated_devices_leave_the_current_cuda_device_alone(monkeypatch):
    cuda = fake_torch(monkeypatch, {})
    from services.vram import DeviceSpec

    off = VramOffloader(devices=[DeviceSpec("cpu:0", 8 * GB), DeviceSpec("cpu:1", 8 * GB)], gc_collect=False)
    seen: list = []
    off.register("a", lambda d: seen.append(cuda.current) or FakeSession("a"), runtime="onnx", estimate_bytes=GB)
    with off.acquire("a"):
        assert cuda.current is None
    assert seen == [None] and cuda.calls == []
