"""The VRAM offloader over several devices (Kaggle's two T4s), on CPU with configured budgets."""

from __future__ import annotations

import pytest

from services.vram import GB, DeviceSpec, ModelsBusy, ModelTooLarge, VramError, VramOffloader


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Torchish:
    """A torch-like model: remembers where it was loaded and every device it was moved to."""

    def __init__(self, name: str, device: str, log: list) -> None:
        self.name, self.device, self.log = name, device, log
        log.append(("load", name, device))

    def to(self, device: str) -> "Torchish":
        self.log.append(("to", self.name, device))
        self.device = device
        return self


def two(budgets=(10, 10), **kw) -> VramOffloader:
    kw.setdefault("gc_collect", False)
    return VramOffloader(devices=[DeviceSpec(f"cpu:{i}", int(b * GB)) for i, b in enumerate(budgets)], **kw)


def add(off: VramOffloader, name: str, gb: float, log: list | None = None, runtime: str = "torch", loader=None):
    log = [] if log is None else log
    off.register(name, loader or (lambda device: Torchish(name, device, log)), runtime=runtime,
                 estimate_bytes=int(gb * GB))


def use(off: VramOffloader, *names: str) -> None:
    for name in names:
        with off.acquire(name):
            pass


def where(off: VramOffloader) -> dict[str, str | None]:
    return {m["name"]: m["device"] or m["state"] for m in off.snapshot()["models"]}


def oom() -> RuntimeError:
    return RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")


# --------------------------------------------------------------------------- placement

def test_a_model_goes_to_the_emptier_device():
    off = two()
    add(off, "sdxl", 6)
    add(off, "tts", 3)
    add(off, "whisper", 2)
    use(off, "sdxl", "tts", "whisper")
    # tts: 4 GB left on cpu:0 vs 10 on cpu:1; whisper: 4 vs 7
    assert where(off) == {"sdxl": "cpu:0", "tts": "cpu:1", "whisper": "cpu:1"}
    assert off.snapshot()["swaps"] == 3


def test_a_model_too_big_for_one_device_goes_to_the_other():
    off = two(budgets=(8, 16), reserve_bytes=GB)
    add(off, "vlm", 12)
    use(off, "vlm")
    assert off.device_of("vlm") == "cpu:1"

    add(off, "huge", 20)
    with pytest.raises(ModelTooLarge) as info:
        use(off, "huge")
    msg = str(info.value)
    assert "cpu:0" in msg and "cpu:1" in msg and "can never fit" in msg
    assert off.state_of("huge") == "unloaded" and off.device_of("vlm") == "cpu:1"


def test_loaders_and_moves_get_their_own_cuda_device():
    """With real device names, the loader and .to() get the chosen GPU, and the footprint is
    measured with that GPU's own probe."""
    free = {"cuda:0": 15 * GB, "cuda:1": 15 * GB}
    log: list = []

    def loader(name, gb):
        def load(device):
            free[device] -= int(gb * GB)
            return Torchish(name, device, log)
        return load

    off = VramOffloader(devices=[DeviceSpec(d, 15 * GB, (lambda d=d: (free[d], 15 * GB))) for d in free],
                        gc_collect=False)
    off.register("sdxl", loader("sdxl", 7.5), runtime="torch", estimate_bytes=7 * GB)
    off.register("tts", loader("tts", 3.5), runtime="torch", estimate_bytes=3 * GB)
    use(off, "sdxl", "tts")
    assert ("load", "sdxl", "cuda:0") in log and ("load", "tts", "cuda:1") in log
    assert off.size_of("sdxl") == int(7.5 * GB) and off.size_of("tts") == int(3.5 * GB)

    off.evict("sdxl")
    free["cuda:0"] += int(7.5 * GB)
    assert log[-1] == ("to", "sdxl", "cpu")
    use(off, "sdxl")  # back to where it was parked from: both have room, cuda:0 has more
    assert log[-1] == ("to", "sdxl", "cuda:0") and off.device_of("sdxl") == "cuda:0"
    snap = off.snapshot()
    assert [d["name"] for d in snap["devices"]] == ["cuda:0", "cuda:1"]
    assert snap["devices"][0]["models"] == ["sdxl"] and snap["devices"][1]["models"] == ["tts"]
    assert snap["devices"][1]["device_free_bytes"] == int(11.5 * GB)
    assert snap["device_total_bytes"] == 30 * GB and snap["budget_bytes"] == 30 * GB


def test_a_parked_model_returns_to_its_device_when_both_fit_equally():
    off = two()
    add(off, "a", 4)
    add(off, "b", 4)
    add(off, "c", 4)
    use(off, "a", "b")  # a on cpu:0, b on cpu:1
    off.evict("b")
    use(off, "c")  # cpu:1 is empty now: c goes there
    use(off, "b")  # 6 GB left on each: b's own device wins the tie (not the first device)
    assert where(off) == {"a": "cpu:0", "b": "cpu:1", "c": "cpu:1"}


# --------------------------------------------------------------------------- eviction

def test_eviction_is_per_device_and_lru_there():
    off = two(budgets=(10, 6))
    add(off, "a", 4)
    add(off, "b", 4)
    add(off, "c", 5)
    use(off, "a", "b", "c")
    assert where(off) == {"a": "cpu:0", "b": "cpu:0", "c": "cpu:1"}
    use(off, "a")  # b is now the least recently used on cpu:0
    add(off, "d", 4)
    use(off, "d")  # cpu:0 frees 4 GB (b), cpu:1 would free 5 (c): cpu:0
    assert where(off) == {"a": "cpu:0", "b": "cpu", "c": "cpu:1", "d": "cpu:0"}
    snap = off.snapshot()
    assert [d["used_bytes"] for d in snap["devices"]] == [8 * GB, 5 * GB]
    assert [d["swaps"] for d in snap["devices"]] == [3, 1]


def test_busy_devices_answer_models_busy_naming_both():
    off = two(budgets=(6, 6))
    add(off, "a", 5)
    add(off, "b", 5)
    add(off, "c", 4)
    with off.acquire("a"), off.acquire("b"):
        with pytest.raises(ModelsBusy) as info:
            use(off, "c")
    assert set(info.value.busy) == {"a", "b"}
    assert "cpu:0" in str(info.value) and "cpu:1" in str(info.value)
    use(off, "c")  # once released it fits, evicting the LRU idle one
    assert off.state_of("c") == "gpu"


# --------------------------------------------------------------------------- pin groups

def vita_setup(group: str | None):
    off = two()
    add(off, "held", 4)
    add(off, "idle", 5)
    add(off, "asr", 2)
    add(off, "vlm", 5)
    ctx = off.acquire("held")
    ctx.__enter__()  # cpu:0: 4 GB in use, not evictable
    use(off, "idle")  # cpu:1: 5 GB, idle
    if group is not None:
        off.pin("asr", group=group)
        off.pin("vlm", group=group)
    return off, ctx


def test_without_a_group_models_go_wherever_there_is_room():
    off, ctx = vita_setup(group=None)
    use(off, "asr", "vlm")  # asr: 4 GB left on cpu:0 vs 3 on cpu:1; vlm then fits on cpu:1 only by evicting
    assert off.device_of("asr") == "cpu:0"
    ctx.__exit__(None, None, None)


def test_a_pinned_group_lands_together_on_the_device_that_holds_it_all():
    off, ctx = vita_setup(group="sid-1")
    use(off, "asr")  # the group needs 7 GB: cpu:0 can give 6, cpu:1 10 (after evicting idle)
    assert off.device_of("asr") == "cpu:1"
    use(off, "vlm")  # joins asr, evicting the idle model there; the model in use is untouched
    assert where(off) == {"held": "cpu:0", "idle": "cpu", "asr": "cpu:1", "vlm": "cpu:1"}
    ctx.__exit__(None, None, None)


def test_a_group_member_follows_the_resident_ones_and_unpin_forgets_the_group():
    off = two()
    add(off, "asr", 2)
    add(off, "vlm", 3)
    add(off, "big", 5)
    add(off, "filler", 4)
    off.pin("asr", group="s")
    off.pin("vlm", group="s")
    use(off, "vlm", "big", "filler")
    assert where(off) == {"asr": "unloaded", "vlm": "cpu:0", "big": "cpu:1", "filler": "cpu:0"}
    use(off, "asr")  # cpu:1 has more room (5 GB vs 3), but the group lives on cpu:0
    assert off.device_of("asr") == "cpu:0"
    off.unpin("asr", group="s")
    off.unpin("vlm", group="s")
    off.evict("asr")
    use(off, "asr")  # no group any more: the device with more room
    assert off.device_of("asr") == "cpu:1"
    assert all(m["pinned"] == 0 for m in off.snapshot()["models"])


# --------------------------------------------------------------------------- idle offload

def test_idle_offload_leaves_each_device_s_recent_models():
    clock = FakeClock()
    off = two(idle_offload_s=300, clock=clock)
    for name, gb in (("a", 3), ("b", 3), ("c", 3), ("d", 3)):
        add(off, name, gb)
    use(off, "a", "b", "c", "d")
    assert where(off) == {"a": "cpu:0", "b": "cpu:1", "c": "cpu:0", "d": "cpu:1"}
    clock.t += 200
    use(off, "c", "b")
    clock.t += 150  # a and d idle for 350 s, b and c for 150 s
    assert sorted(off.offload_idle()) == ["a", "d"]
    snap = off.snapshot()
    assert [d["models"] for d in snap["devices"]] == [["c"], ["b"]]


# --------------------------------------------------------------------------- out of memory

def test_oom_while_running_evicts_only_on_that_device():
    off = two()
    add(off, "run", 4)
    add(off, "other", 4)
    add(off, "same", 3)
    use(off, "run", "other", "same")
    assert where(off) == {"run": "cpu:0", "other": "cpu:1", "same": "cpu:0"}
    calls = []

    def fn(model):
        calls.append(model.device)
        if len(calls) == 1:
            raise oom()
        return "ok"

    assert off.run("run", fn) == "ok"
    assert where(off) == {"run": "cpu:0", "other": "cpu:1", "same": "cpu"}


def test_oom_while_loading_retries_on_the_chosen_device_only():
    off = two()
    log: list = []
    add(off, "a", 3, log)
    add(off, "b", 3, log)
    use(off, "a", "b")  # a: cpu:0, b: cpu:1
    attempts = []

    def flaky(device):
        attempts.append(device)
        if len(attempts) == 1:
            raise oom()
        return Torchish("c", device, log)

    off.register("c", flaky, runtime="torch", estimate_bytes=2 * GB)
    use(off, "c")  # tie on room after: cpu:0; its OOM evicts a, never b
    assert off.device_of("c") == "cpu:0"
    assert where(off) == {"a": "cpu", "b": "cpu:1", "c": "cpu:0"}

    def always(model):
        raise oom()

    with pytest.raises(VramError) as info:
        off.run("c", always)
    assert "on cpu:0" in str(info.value)
    assert off.device_of("b") == "cpu:1"


# --------------------------------------------------------------------------- one device, as before

def test_one_device_snapshot_lists_it_with_the_same_figures():
    off = VramOffloader(device="cpu", budget_bytes=10 * GB, reserve_bytes=GB, gc_collect=False)
    add(off, "a", 3)
    use(off, "a")
    snap = off.snapshot()
    assert snap["device"] == "cpu" and len(snap["devices"]) == 1
    d = snap["devices"][0]
    assert (d["name"], d["budget_bytes"], d["used_bytes"], d["free_bytes"], d["swaps"]) == \
        ("cpu", snap["budget_bytes"], snap["used_bytes"], snap["free_bytes"], snap["swaps"])
    assert d["models"] == ["a"] and snap["models"][0]["device"] == "cpu"


def test_device_list_errors():
    with pytest.raises(ValueError, match="listed twice"):
        VramOffloader(devices=[DeviceSpec("cpu:0", GB), DeviceSpec("cpu:0", GB)])
    with pytest.raises(ValueError, match="cpu' or 'cuda"):
        VramOffloader(devices=[DeviceSpec("tpu:0", GB)])


# --------------------------------------------------------------------------- settings

def test_settings_pick_the_devices(make_settings, monkeypatch):
    from backend.app import make_offloader
    from services import device as device_policy

    off = make_offloader(make_settings(vram_devices=2, vram_budget_gb=15, vram_reserve_gb=1))
    assert off.device_names == ["cpu:0", "cpu:1"] and off.budget_bytes == 30 * GB
    assert make_offloader(make_settings()).device_names == ["cpu"]

    monkeypatch.setattr(device_policy, "cuda_device_count", lambda: 2)
    assert device_policy.offloader_devices("cuda") == ["cuda:0", "cuda:1"]
    assert device_policy.offloader_devices("cuda", [1]) == ["cuda:1"]
    assert device_policy.offloader_devices("cuda:1", None) == ["cuda:1"]
    with pytest.raises(ValueError, match="has 2 visible GPU"):
        device_policy.offloader_devices("cuda", [0, 2])
    monkeypatch.setattr(device_policy, "cuda_device_count", lambda: 1)
    assert device_policy.offloader_devices("cuda") == ["cuda"]  # one T4: as before
    assert make_settings(gpus="0,1").gpus == [0, 1] and make_settings(gpus="all").gpus is None
    with pytest.raises(ValueError, match="GPU indices"):
        make_settings(gpus="first")


def test_a_realtime_session_keeps_its_models_on_one_device():
    """VITA's session manager pins the assistant's models as one group (the session id)."""
    from types import SimpleNamespace

    from services.vita.manager import VAD_NAME, SessionManager
    from services.vita.session import VitaConfig

    off = two(budgets=(8, 8))
    for name, gb in (("held", 3), ("idle", 3), ("asr", 2), ("vlm", 3), ("tts", 1.5)):
        add(off, name, gb)
    manager = SessionManager(VitaConfig(), vram=off, transcriber=SimpleNamespace(vram_names=("asr",)),
                             brain=SimpleNamespace(vram_names=("vlm",)),
                             speaker=SimpleNamespace(vram_names=("tts",)))
    try:
        with off.acquire("held"):  # cpu:0: 3 GB in use; cpu:1: 3 GB idle (evictable)
            use(off, "idle")
            session = manager.open("sid-1", emit=lambda *a: None, disconnect=lambda sid: None)
            assert session is not None
            use(off, "asr", "vlm", "tts")  # alone, asr would take cpu:0 (first of two equal devices)
            placed = where(off)
        # the VAD (no GPU bytes: it runs on the CPU) was placed before the pins; the rest follow the group
        assert placed[VAD_NAME] in ("cpu:0", "cpu:1")
        assert {placed[n] for n in ("asr", "vlm", "tts")} == {"cpu:1"}
        assert placed["held"] == "cpu:0" and placed["idle"] == "cpu"
        manager.close("sid-1")
        assert all(m["pinned"] == 0 for m in off.snapshot()["models"])
    finally:
        manager.stop()


def test_face_models_open_their_cuda_session_on_the_offloader_s_gpu(tmp_path, monkeypatch):
    """ONNX Runtime picks its GPU from the provider options: the loader's device decides them."""
    from services.face import models
    from services.face.models import CPU, CUDA, FaceConfig
    from services.face.service import FaceService
    from services.model_env import ModelEnv

    env = ModelEnv(models_dir=tmp_path, profile="smoke", device="cuda", dtype="float16",
                   vram=two(), data_dir=tmp_path)
    service = FaceService(env, FaceConfig(models_dir=tmp_path, device="cuda"))
    seen = []
    monkeypatch.setattr(models, "load_swapper", lambda cfg: seen.append(models.requested_providers(cfg))
                        or SimpleSwapper())
    service._load_swapper("cuda:1")
    service._load_swapper("cuda")
    assert seen == [[(CUDA, {"device_id": 1}), CPU], [(CUDA, {"device_id": 0}), CPU]]


class SimpleSwapper:
    runtime = {"providers": []}


def test_a_device_that_would_evict_a_pinned_model_is_avoided():
    off = two(budgets=(8, 8))
    add(off, "pinned", 5)
    add(off, "plain", 6)
    add(off, "new", 4)
    use(off, "pinned", "plain")  # cpu:0: pinned (3 GB left); cpu:1: plain (2 GB left)
    off.pin("pinned")
    use(off, "new")  # cpu:0 would evict fewer bytes (5 GB, pinned) than cpu:1 (6 GB): the unpinned one goes
    assert where(off) == {"pinned": "cpu:0", "plain": "cpu", "new": "cpu:1"}


# --------------------------------------------------------------------------- snapshot and errors, exactly

def test_snapshot_of_two_devices_one_probed():
    off = VramOffloader(devices=[DeviceSpec("cpu:0", 10 * GB, lambda: (9 * GB, 12 * GB)), DeviceSpec("cpu:1", 8 * GB)],
                        reserve_bytes=GB, host_ram_budget_bytes=6 * GB, gc_collect=False)
    log: list = []
    off.register("a", lambda d: Torchish("a", d, log), runtime="torch", estimate_bytes=3 * GB, family="image")
    add(off, "b", 2, log, runtime="onnx")
    add(off, "c", 1, log)
    add(off, "d", 1, log)
    use(off, "a", "b", "c")  # a: 8 GB of room on cpu:0 vs 7; b: 6 vs 7; c: 6 vs 5
    off.evict("c")
    off.pin("a")
    with off.acquire("b"):
        snap = off.snapshot()
    assert snap["devices"] == [
        {"name": "cpu:0", "budget_bytes": 10 * GB, "used_bytes": 3 * GB, "free_bytes": 7 * GB, "peak_bytes": 4 * GB,
         "swaps": 2, "device_free_bytes": 9 * GB, "device_total_bytes": 12 * GB, "models": ["a"]},
        {"name": "cpu:1", "budget_bytes": 8 * GB, "used_bytes": 2 * GB, "free_bytes": 6 * GB, "peak_bytes": 2 * GB,
         "swaps": 1, "device_free_bytes": None, "device_total_bytes": None, "models": ["b"]},
    ]
    top = {k: v for k, v in snap.items() if k not in ("devices", "models")}
    assert top == {"device": "cpu:0,cpu:1", "budget_bytes": 18 * GB, "reserve_bytes": GB, "used_bytes": 5 * GB,
                   "free_bytes": 13 * GB, "peak_bytes": 6 * GB, "host_ram_used_bytes": GB,
                   "host_ram_budget_bytes": 6 * GB, "swaps": 3,
                   "device_free_bytes": None, "device_total_bytes": None}  # not every device can say
    timing = ("last_used", "load_seconds", "move_seconds")
    models = {m["name"]: {k: v for k, v in m.items() if k not in timing} for m in snap["models"]}
    common = {"measured": False, "moves": 0, "moving": False}
    assert models == {
        "a": {"name": "a", "family": "image", "runtime": "torch", "state": "gpu", "device": "cpu:0", "bytes": 3 * GB,
              "estimate_bytes": 3 * GB, "in_use": 0, "pinned": 1, "loads": 1, **common},
        "b": {"name": "b", "family": None, "runtime": "onnx", "state": "gpu", "device": "cpu:1", "bytes": 2 * GB,
              "estimate_bytes": 2 * GB, "in_use": 1, "pinned": 0, "loads": 1, **common},
        "c": {"name": "c", "family": None, "runtime": "torch", "state": "cpu", "device": None, "bytes": GB,
              "estimate_bytes": GB, "in_use": 0, "pinned": 0, "loads": 1, **common},
        "d": {"name": "d", "family": None, "runtime": "torch", "state": "unloaded", "device": None, "bytes": GB,
              "estimate_bytes": GB, "in_use": 0, "pinned": 0, "loads": 0, **common},
    }
    assert off.device_of("c") is None and off.device_of("d") is None  # parked from cpu:0, not on it
    by_name = {m["name"]: m for m in snap["models"]}
    assert by_name["c"]["move_seconds"] is None and by_name["d"]["load_seconds"] is None
    use(off, "c")
    c = next(m for m in off.snapshot()["models"] if m["name"] == "c")
    assert (c["moves"], c["loads"], c["device"]) == (1, 1, "cpu:0") and isinstance(c["move_seconds"], float)
    assert off.snapshot()["swaps"] == 4
    assert repr(off) == "VramOffloader(device='cpu:0,cpu:1', used=6.0 GB/18.0 GB, models=4)"


def test_snapshot_totals_when_every_device_is_probed():
    off = VramOffloader(devices=[DeviceSpec("cpu:0", 10 * GB, lambda: (9 * GB, 12 * GB)),
                                 DeviceSpec("cpu:1", 8 * GB, lambda: (5 * GB, 6 * GB))], gc_collect=False)
    snap = off.snapshot()
    assert (snap["device_free_bytes"], snap["device_total_bytes"]) == (14 * GB, 18 * GB)
    assert [d["free_bytes"] for d in snap["devices"]] == [9 * GB, 5 * GB] and snap["free_bytes"] == 14 * GB
    assert off.device_memory("cpu:1") == (5 * GB, 6 * GB) and off.device_memory() == (9 * GB, 12 * GB)
    with pytest.raises(ValueError, match=r"^unknown device 'cuda:3'; the offloader has cpu:0, cpu:1$"):
        off.device_memory("cuda:3")
    assert two().device_memory("cpu:1") is None


def test_a_failing_probe_is_reported_as_unknown():
    def broken():
        raise RuntimeError("driver gone")

    off = VramOffloader(devices=[DeviceSpec("cpu:0", 10 * GB, broken), DeviceSpec("cpu:1", 8 * GB)], gc_collect=False)
    add(off, "a", 2)
    use(off, "a")  # placement goes on without the probe
    assert off.device_memory("cpu:0") is None
    snap = off.snapshot()
    assert snap["devices"][0]["device_free_bytes"] is None and snap["devices"][0]["free_bytes"] == 8 * GB


def test_no_device_error_gives_the_waiting_device_s_figures():
    off = two(budgets=(0.5, 8))
    add(off, "a", 5)
    add(off, "x", 1)
    add(off, "c", 5)
    use(off, "a", "x")  # only cpu:1 can take them
    with off.acquire("a"):
        with pytest.raises(ModelsBusy) as info:
            use(off, "c")
    err = info.value
    assert str(err) == (
        "no device can take c now: cpu:0: model c needs 5.0 GB, budget is 0.5 GB minus a 0 B reserve = 0.5 GB:"
        " it can never fit on cpu:0; cpu:1: model c needs 5.0 GB; 2.0 GB free of a 8.0 GB budget (8.0 GB minus"
        " 0 B reserve), idle models could free 1.0 GB more; busy: a (5.0 GB, in use). Try again when they finish.")
    assert (err.name, err.need_bytes, err.budget_bytes, err.reserve_bytes, err.free_bytes, err.evictable_bytes,
            err.busy) == ("c", 5 * GB, 8 * GB, 0, 2 * GB, GB, ("a",))


def test_no_device_error_when_it_never_fits_gives_the_first_device_s_figures():
    off = two(budgets=(8, 6), reserve_bytes=GB)
    add(off, "x", 2, runtime="onnx")
    add(off, "huge", 9, runtime="onnx")
    with off.acquire("x"):  # lands on cpu:0 (more room), in use: nothing there is evictable
        with pytest.raises(ModelTooLarge) as info:
            use(off, "huge")
    err = info.value
    assert not isinstance(err, ModelsBusy)
    assert str(err) == (
        "no device can take huge now: cpu:0: model huge needs 9.0 GB, budget is 8.0 GB minus a 1.0 GB reserve ="
        " 7.0 GB: it can never fit on cpu:0; cpu:1: model huge needs 9.0 GB, budget is 6.0 GB minus a 1.0 GB"
        " reserve = 5.0 GB: it can never fit on cpu:1")
    assert (err.name, err.need_bytes, err.budget_bytes, err.reserve_bytes, err.free_bytes, err.evictable_bytes,
            err.busy) == ("huge", 9 * GB, 8 * GB, GB, 5 * GB, 0, ())


def test_never_fit_free_figure_counts_only_that_device():
    off = two(budgets=(8, 8))
    add(off, "x", 3)
    add(off, "y", 2)
    add(off, "huge", 9)
    use(off, "x", "y")  # x on cpu:0, y on cpu:1
    with pytest.raises(ModelTooLarge) as info:
        use(off, "huge")
    assert info.value.free_bytes == 5 * GB


def test_loader_oom_twice_on_one_of_two_devices():
    off = two()
    log: list = []
    add(off, "here", 3, log)
    add(off, "there", 3, log)
    use(off, "here")
    calls = []

    def loader(device):
        calls.append(device)
        raise oom()

    off.register("big", loader, runtime="onnx", estimate_bytes=4 * GB)
    with off.acquire("here"):
        use(off, "there")  # cpu:1
        with off.acquire("there"):
            with pytest.raises(VramError) as info:
                use(off, "big")  # cpu:0 and cpu:1 have 7 GB each: cpu:0 (first)
    assert calls == ["cpu", "cpu"]  # simulated devices: the model really lives on the CPU
    assert str(info.value) == (
        "not enough GPU memory to load big (about 4.0 GB) even after evicting every idle model on cpu:0;"
        " busy: here (RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB)")


def test_freeing_on_several_devices_logs_the_device(caplog):
    import logging

    off = two()
    add(off, "a", 2, runtime="onnx")
    add(off, "b", 2, runtime="onnx")
    use(off, "a", "b")
    caplog.set_level(logging.INFO, logger="enfoads.vram")
    off.unload("b")
    assert [r.getMessage() for r in caplog.records] == ["freed b from cpu:1 (requested)"]


def test_pins_in_a_group_count_until_the_last_unpin():
    off = two()
    add(off, "asr", 2)
    add(off, "vlm", 3)
    add(off, "big", 5)
    add(off, "filler", 4)
    off.pin("vlm", group="s")
    off.pin("asr", group="s")
    off.pin("asr", group="s")  # e.g. two pins from the same session
    use(off, "vlm", "big", "filler")
    assert where(off) == {"asr": "unloaded", "vlm": "cpu:0", "big": "cpu:1", "filler": "cpu:0"}
    off.unpin("asr", group="s")
    use(off, "asr")  # still in the group: joins vlm although cpu:1 has more room
    assert off.device_of("asr") == "cpu:0"
    off.unpin("asr", group="s")
    off.unpin("asr", group="s")  # one more than pinned: ignored
    off.evict("asr")
    use(off, "asr")
    assert off.device_of("asr") == "cpu:1"
    off.unpin("vlm", group="other")  # a group it is not in: the pin still goes
    assert [m["pinned"] for m in off.snapshot()["models"]] == [0, 0, 0, 0]


def test_a_member_that_would_push_its_group_out_goes_elsewhere(caplog):
    import logging

    off = two()
    add(off, "a", 4)
    add(off, "b", 8)
    off.pin("a", group="s")
    off.pin("b", group="s")
    use(off, "a")  # cpu:0
    caplog.set_level(logging.WARNING, logger="enfoads.vram")
    use(off, "b")  # on cpu:0 it would evict a, its own group: cpu:1
    assert where(off) == {"a": "cpu:0", "b": "cpu:1"}
    assert [r.getMessage() for r in caplog.records] == ["b cannot join its group on cpu:0: placed on cpu:1"]


def test_the_first_member_goes_where_the_whole_group_fits_even_exactly():
    off = two()
    for name, gb in (("held0", 4), ("held1", 5), ("idle0", 4), ("asr", 2), ("vlm", 4)):
        add(off, name, gb)
    use(off, "held0", "held1", "idle0")
    assert where(off) == {"held0": "cpu:0", "held1": "cpu:1", "idle0": "cpu:0", "asr": "unloaded", "vlm": "unloaded"}
    off.pin("asr", group="s")
    off.pin("vlm", group="s")
    with off.acquire("held0"), off.acquire("held1"):
        use(off, "asr")  # the group needs 6 GB: cpu:0 has 2 free + 4 idle, cpu:1 only 5 (more room for asr alone)
        assert off.device_of("asr") == "cpu:0"
        use(off, "vlm")
    assert where(off)["vlm"] == "cpu:0" and where(off)["idle0"] == "cpu"


def test_a_member_joins_the_device_holding_most_of_its_group():
    off = two()
    for name, gb in (("m1", 3), ("m2", 2), ("m3", 2), ("new", 1)):
        add(off, name, gb)
    use(off, "m1", "m2", "m3")
    assert where(off) == {"m1": "cpu:0", "m2": "cpu:1", "m3": "cpu:1", "new": "unloaded"}
    for name in ("m1", "m2", "m3", "new"):
        off.pin(name, group="g")
    use(off, "new")  # 4 GB of the group on cpu:1, 3 on cpu:0
    assert off.device_of("new") == "cpu:1"

    off = two()
    for name, gb in (("m1", 3), ("m2", 3), ("x", 2), ("new", 1)):
        add(off, name, gb)
    use(off, "m1", "m2", "x")
    assert where(off) == {"m1": "cpu:0", "m2": "cpu:1", "x": "cpu:0", "new": "unloaded"}
    for name in ("m1", "m2", "new"):
        off.pin(name, group="g")
    use(off, "new")  # 3 GB of the group on each: the first device, although cpu:1 has more room
    assert off.device_of("new") == "cpu:0"


def test_a_one_byte_member_still_anchors_its_group():
    off = two()
    add(off, "filler", 1)
    off.register("tiny", lambda d: Torchish("tiny", d, []), runtime="torch", estimate_bytes=1)
    add(off, "new", 1)
    use(off, "filler", "tiny")  # tiny: cpu:1 has more room
    off.unload("filler")
    assert where(off) == {"filler": "unloaded", "tiny": "cpu:1", "new": "unloaded"}
    off.pin("tiny", group="g")
    off.pin("new", group="g")
    use(off, "new")  # cpu:0 has one byte more room, but the group is on cpu:1
    assert off.device_of("new") == "cpu:1"


def test_oom_twice_while_running_names_the_busy_models_of_that_device_only():
    off = two()
    for name in ("run", "held1", "held2", "other"):
        add(off, name, 2)
    use(off, "run", "other", "held1")  # run: cpu:0, other: cpu:1, held1: cpu:0
    add(off, "held2", 2)
    use(off, "held2")  # cpu:1 has more room now
    assert where(off) == {"run": "cpu:0", "held1": "cpu:0", "held2": "cpu:1", "other": "cpu:1"}

    def always(model):
        raise oom()

    with off.acquire("held1"), off.acquire("other"):
        with pytest.raises(VramError) as info:
            off.run("run", always)
    assert str(info.value) == (
        "out of GPU memory running run on cpu:0 (model 2.0 GB), even after evicting 0 idle model(s); other models in"
        " use: held1. Try a smaller request (resolution, batch, length).")


def test_a_model_measured_larger_than_estimated_evicts_on_its_own_device():
    free = {"cpu:0": 10 * GB, "cpu:1": 10 * GB}
    off = VramOffloader(devices=[DeviceSpec(d, 10 * GB, (lambda d=d: (free[d], 10 * GB))) for d in free],
                        gc_collect=False)

    def reg(name, real, estimate):
        def load(device):
            free[where_to[name]] -= real
            return Torchish(name, device, [])

        off.register(name, load, runtime="onnx", estimate_bytes=estimate,
                     unload=lambda obj: free.__setitem__(where_to[name], free[where_to[name]] + real))

    where_to = {"old1": "cpu:1", "a": "cpu:0", "big": "cpu:0"}
    reg("a", 3 * GB, 3 * GB)
    reg("old1", 2 * GB, 2 * GB)
    reg("big", 8 * GB, 2 * GB)
    use(off, "a", "old1")  # a: cpu:0; old1: cpu:1 (more room)
    use(off, "a")  # a used again: old1, on the other device, is the least recently used model anywhere
    assert where(off) == {"a": "cpu:0", "old1": "cpu:1", "big": "unloaded"}
    where_to["big"] = "cpu:0"
    off.pin("big", group="g")
    off.pin("a", group="g")  # big joins a on cpu:0: estimated 2 GB it fits; measured 8 GB it does not
    use(off, "big")  # over cpu:0's budget: a goes, not old1 (on cpu:1, where there is no excess)
    assert where(off) == {"a": "unloaded", "old1": "cpu:1", "big": "cpu:0"}


def test_a_re_registered_model_keeps_its_group():
    off = two()
    add(off, "asr", 2)
    add(off, "vlm", 3)
    add(off, "big", 5)
    add(off, "filler", 4)
    off.pin("asr", group="s")
    off.pin("vlm", group="s")
    use(off, "vlm", "big", "filler")  # vlm and filler on cpu:0, big on cpu:1 (more room there now)
    add(off, "asr", 2)  # e.g. a new revision of the model: pins and group carry over
    use(off, "asr")
    assert off.device_of("asr") == "cpu:0"
    off.unpin("asr", group="s")
    assert [m["pinned"] for m in off.snapshot()["models"]] == [0, 1, 0, 0]
