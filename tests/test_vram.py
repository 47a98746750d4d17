"""Tests of services/vram.py: the VRAM offloader's bookkeeping on a CPU budget (no GPU)."""

from __future__ import annotations

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


def test_busy_wait_succeeds_when_released_in_time():
    lib = Lib()
    off = make(10)
    waits = watch_waits(off)
    reg_session(off, lib, "a", 6)
    reg_session(off, lib, "b", 6)
    holding = threading.Event()

    def hold():
        with off.acquire("a"):
            holding.set()
            waits.until(1)  # b found a busy and is waiting for it

    t = threading.Thread(target=hold)
    t.start()
    assert holding.wait(5)
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
