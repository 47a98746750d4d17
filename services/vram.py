"""The VRAM offloader: one arbiter for every model of every runtime on the machine's devices.

Every service registers its models here (name, loader, runtime, size estimate) and uses them
through ``acquire(name)`` / ``run(name, fn)``. The offloader keeps the models that fit on the
device, evicts the least recently used idle ones to make room, parks evicted torch models in host
RAM while a host-RAM budget allows, frees the rest, and handles out-of-memory errors by evicting
everything idle and retrying once.

Terms used below:

* *resident* (snapshot state ``"gpu"``): the model is on the offloader's device. On a CPU-only
  machine the device is ``"cpu"`` and the state is still called ``"gpu"``: the same bookkeeping
  runs against the configured budget, so eviction decisions are testable anywhere.
* *parked* (state ``"cpu"``): a torch model moved to host RAM; coming back is a ``.to(device)``.
* *unloaded*: nothing in memory; coming back calls the loader.
* *size*: the measured footprint once known (``torch.cuda.mem_get_info`` or ``mem_probe``
  before and after the first load onto the device; on CPU without a probe, the parameter and
  buffer bytes of torch modules / diffusers pipelines), else the registered estimate.
* GB in messages means 2**30 bytes, as Colab and nvidia-smi show it.

Concurrency: one ``RLock`` (with a ``Condition``) guards the bookkeeping and is never held while a
user callable runs. Slow transitions (load, move, evict, unload) are serialised by a second lock,
so that at most one model is being loaded/moved at a time (which also keeps footprint
measurements meaningful); acquiring a model that is already resident only takes the first lock,
for microseconds.

Busy models: a model in use is never evicted. When a model cannot be placed because the room is
held by models in use, ``acquire`` raises :class:`ModelsBusy` (a :class:`ModelTooLarge`) naming
them - immediately by default, or after waiting up to ``busy_timeout_s`` (constructor) /
``wait_s`` (per call) for them to be released.

Pinned models (pin counts, e.g. one per open realtime session) are evicted last and are never
offloaded for being idle.

Several devices (e.g. Kaggle's two T4s): each device has its own budget, memory probe, LRU
eviction and OOM retry; a model lives on one device at a time, and loaders / ``to_device`` get
THAT device's name. A model that is not resident goes to the device where it fits best: where
it evicts the fewest bytes (of pinned models first, then of any), then the one with the most room
left, then (ties) the device it was parked from. Models pinned with the same ``group`` (one realtime session) stay together: a member
goes to the device already holding the group's resident members; the first one goes to a device
where the whole group fits. A model already resident is never moved to another device. With one
device everything is as before. On a CPU-only machine, several simulated devices (``cpu:0``,
``cpu:1``, ...; models really live on ``cpu``) run the same bookkeeping against their budgets.
"""

from __future__ import annotations

import gc
import itertools
import logging
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Iterator, Sequence

__all__ = [
    "Runtime",
    "DeviceSpec",
    "VramError",
    "ModelTooLarge",
    "ModelsBusy",
    "UnknownModel",
    "VramOffloader",
    "is_oom_error",
    "format_bytes",
    "GB",
]

log = logging.getLogger("enfoads.vram")

GB = 2**30

_OOM_MARKERS = (
    "out of memory",  # torch ("CUDA out of memory"), cuDNN, cuBLAS
    "cuda_error_out_of_memory",  # CTranslate2 / driver API
    "failed to allocate memory",  # ONNX Runtime BFC arena
    "out_of_memory",
)


class Runtime(str, Enum):
    TORCH = "torch"  # module / pipeline: movable between device and host RAM
    CTRANSLATE2 = "ctranslate2"  # load / unload only
    ONNX = "onnx"  # load / unload only


class VramError(RuntimeError):
    """A model could not be placed on the device; the message is meant for the user."""

    kind = "unavailable"  # reported like services.errors.ModelUnavailable (HTTP 503)


class ModelTooLarge(VramError):
    """The model does not fit, even after evicting every model that may be evicted."""

    def __init__(
        self,
        message: str,
        *,
        name: str = "",
        need_bytes: int = 0,
        budget_bytes: int = 0,
        reserve_bytes: int = 0,
        free_bytes: int = 0,
        evictable_bytes: int = 0,
        busy: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.name = name
        self.need_bytes = need_bytes
        self.budget_bytes = budget_bytes
        self.reserve_bytes = reserve_bytes
        self.free_bytes = free_bytes
        self.evictable_bytes = evictable_bytes
        self.busy = busy


class ModelsBusy(ModelTooLarge):
    """The model would fit, but the room is held by models in use right now (retry later)."""


class UnknownModel(VramError):
    """No model is registered under that name."""


def format_bytes(n: int | float | None) -> str:
    if n is None:
        return "?"
    if abs(n) >= GB / 10:
        return f"{n / GB:.1f} GB"
    if abs(n) >= 2**20:
        return f"{n / 2**20:.0f} MB"
    if abs(n) >= 2**10:
        return f"{n / 2**10:.0f} KB"
    return f"{int(n)} B"


def is_oom_error(exc: BaseException) -> bool:
    """True for device out-of-memory errors of torch, ONNX Runtime and CTranslate2."""
    if isinstance(exc, VramError):
        return False
    torch = sys.modules.get("torch")
    oom_type = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None) if torch else None
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    if isinstance(exc, MemoryError):  # host RAM, not the device
        return False
    msg = str(exc).lower()
    return any(marker in msg for marker in _OOM_MARKERS)


# --------------------------------------------------------------------------- internals

_UNLOADED, _CPU, _GPU = "unloaded", "cpu", "gpu"


def _default_to_device(obj: Any, device: str) -> Any:
    res = obj.to(device)
    return obj if res is None else res


def _tensor_bytes(obj: Any) -> int | None:
    """Parameter + buffer bytes of a torch module or a diffusers-style pipeline, else None."""
    modules: list[Any] = []
    comps = getattr(obj, "components", None)
    if isinstance(comps, dict):
        modules = [c for c in comps.values() if callable(getattr(c, "parameters", None))]
    elif callable(getattr(obj, "parameters", None)):
        modules = [obj]
    if not modules:
        return None
    seen: set[int] = set()
    total = 0
    try:
        for m in modules:
            tensors = list(m.parameters())
            if callable(getattr(m, "buffers", None)):
                tensors += list(m.buffers())
            for t in tensors:
                key = id(t)
                if key in seen:
                    continue
                seen.add(key)
                total += int(t.numel()) * int(t.element_size())
    except Exception:  # not really a torch module
        return None
    return total if total > 0 else None


@dataclass(frozen=True)
class DeviceSpec:
    """One device the offloader manages: ``cpu``, ``cpu:N`` (simulated, for CPU machines),
    ``cuda`` or ``cuda:N``. ``budget_bytes`` defaults to the probe's total (CUDA: the card's
    memory); ``mem_probe`` returns (free, total) bytes and defaults to ``mem_get_info`` on CUDA."""

    name: str
    budget_bytes: int | None = None
    mem_probe: Callable[[], tuple[int, int]] | None = None


class _Device:
    __slots__ = ("name", "target", "is_cuda", "index", "budget_bytes", "probe", "peak", "swaps")

    def __init__(self, index: int, name: str, budget_bytes: int, probe, is_cuda: bool) -> None:
        self.index = index
        self.name = name
        self.is_cuda = is_cuda
        # what loaders and .to() get: a simulated cpu:N device is the host's CPU
        self.target = name if is_cuda else "cpu"
        self.budget_bytes = budget_bytes
        self.probe: Callable[[], tuple[int, int]] | None = probe
        self.peak = 0
        self.swaps = 0


def _check_device_name(device: str) -> bool:
    """True for CUDA names; ValueError for anything but cpu[:N] / cuda[:N]."""
    kind, sep, index = device.partition(":")
    if kind in ("cpu", "cuda") and (not sep or index.isdigit()):
        return kind == "cuda"
    raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")


class _Entry:
    __slots__ = (
        "name", "loader", "runtime", "estimate_bytes", "family", "to_device", "unload_fn",
        "obj", "state", "measured_bytes", "in_use", "pinned", "moving", "retired",
        "unload_on_release", "seq", "last_used_mono", "last_used_wall", "loads", "moves",
        "load_seconds", "move_seconds", "device", "groups",
    )

    def __init__(self, name, loader, runtime, estimate_bytes, family, to_device, unload_fn):
        self.name: str = name
        self.loader: Callable[[str], Any] = loader
        self.runtime: Runtime = runtime
        self.estimate_bytes: int = int(estimate_bytes)
        self.family: str | None = family
        self.to_device: Callable[[Any, str], Any] = to_device or _default_to_device
        self.unload_fn: Callable[[Any], None] | None = unload_fn
        self.obj: Any = None
        self.state: str = _UNLOADED
        self.measured_bytes: int | None = None
        self.in_use = 0
        self.pinned = 0
        self.moving = False  # a load / move / eviction is in progress
        self.retired = False  # replaced by a new registration; freed on last release
        self.unload_on_release = False
        self.seq = 0  # LRU order (higher = more recent)
        self.last_used_mono: float | None = None
        self.last_used_wall: float | None = None
        self.loads = 0
        self.moves = 0
        self.load_seconds: float | None = None
        self.move_seconds: float | None = None
        self.device: _Device | None = None  # where it is resident, or was parked from
        self.groups: dict[str, int] = {}  # pin group -> pins in that group

    @property
    def size(self) -> int:
        return self.measured_bytes if self.measured_bytes is not None else self.estimate_bytes

    @property
    def movable(self) -> bool:
        return self.runtime == Runtime.TORCH


class VramOffloader:
    """See the module docstring."""

    def __init__(
        self,
        *,
        device: str = "cpu",
        budget_bytes: int | None = None,
        reserve_bytes: int = 0,
        host_ram_budget_bytes: int = 12 * GB,
        idle_offload_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        mem_probe: Callable[[], tuple[int, int]] | None = None,
        busy_timeout_s: float = 0.0,
        gc_collect: bool = True,
        devices: Sequence[DeviceSpec] | None = None,
    ) -> None:
        if devices:
            specs = list(devices)
        else:
            specs = [DeviceSpec(str(device), budget_bytes, mem_probe)]
        self._devices: list[_Device] = []
        for i, spec in enumerate(specs):
            name = str(spec.name)
            if any(d.name == name for d in self._devices):
                raise ValueError(f"device {name!r} is listed twice")
            is_cuda = _check_device_name(name)
            probe = spec.mem_probe
            if probe is None and is_cuda:
                probe = self._cuda_probe(name)
            budget = spec.budget_bytes
            if budget is None:
                if probe is None:
                    raise ValueError("budget_bytes is required on a CPU device (no memory probe)")
                budget = int(probe()[1])
            if budget <= 0:
                raise ValueError("budget_bytes must be positive")
            self._devices.append(_Device(i, name, int(budget), probe, is_cuda))
        first = self._devices[0]
        # one device: its name; several: their names joined (the snapshot's "device")
        self.device = ",".join(d.name for d in self._devices)
        self.is_cuda = first.is_cuda
        self.reserve_bytes = int(reserve_bytes)
        self.host_ram_budget_bytes = int(host_ram_budget_bytes)
        self.idle_offload_s = float(idle_offload_s)
        self.busy_timeout_s = float(busy_timeout_s)
        self.gc_collect = gc_collect
        self._clock = clock

        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._load_lock = threading.RLock()  # serialises slow transitions; never held by fast path
        self._entries: dict[str, _Entry] = {}
        self._retired: list[_Entry] = []
        self._seq = itertools.count(1)
        self._peak = 0
        self._swaps = 0

        self._idle_thread: threading.Thread | None = None
        self._idle_stop = threading.Event()

    # ------------------------------------------------------------------ torch helpers

    @staticmethod
    def _cuda_probe(device: str) -> Callable[[], tuple[int, int]]:
        def probe() -> tuple[int, int]:
            import torch

            free, total = torch.cuda.mem_get_info(torch.device(device))
            return int(free), int(total)

        return probe

    @property
    def budget_bytes(self) -> int:
        """The budget of every device together (one device: its budget)."""
        return sum(d.budget_bytes for d in self._devices)

    @property
    def device_names(self) -> list[str]:
        return [d.name for d in self._devices]

    def _empty_cache(self, dev: _Device | None = None) -> None:
        """Return the allocator's cached blocks; synchronise only ``dev`` (all devices when None),
        so a load on one GPU does not wait for the other's work."""
        devs = [d for d in ([dev] if dev is not None else self._devices) if d.is_cuda]
        if not devs:
            return
        torch = sys.modules.get("torch")
        if torch is None:
            return
        try:
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                for d in devs:
                    torch.cuda.synchronize(torch.device(d.name))
                torch.cuda.empty_cache()
        except Exception:  # pragma: no cover - best effort
            log.debug("empty_cache failed", exc_info=True)

    def _probe_free(self, dev: _Device) -> int | None:
        if dev.probe is None:
            return None
        try:
            return int(dev.probe()[0])
        except Exception:
            log.warning("memory probe of %s failed", dev.name, exc_info=True)
            return None

    # ------------------------------------------------------------------ registration

    def register(
        self,
        name: str,
        loader: Callable[[str], Any],
        *,
        runtime: Runtime,
        estimate_bytes: int,
        family: str | None = None,
        to_device: Callable[[Any, str], Any] | None = None,
        unload: Callable[[Any], None] | None = None,
    ) -> None:
        """Register (or replace) a model. A replaced model is unloaded now, or on its last
        release if it is in use; pin counts carry over to the new entry."""
        runtime = Runtime(runtime)
        if estimate_bytes < 0:
            raise ValueError("estimate_bytes must be >= 0")
        new = _Entry(name, loader, runtime, estimate_bytes, family, to_device, unload)
        old_to_free: _Entry | None = None
        with self._load_lock:
            with self._lock:
                old = self._entries.get(name)
                self._entries[name] = new
                if old is not None:
                    new.pinned = old.pinned
                    new.groups = dict(old.groups)
                    if old.in_use > 0:
                        old.retired = True
                        self._retired.append(old)
                        log.info("re-registered %s: old model freed when its %d user(s) finish",
                                 name, old.in_use)
                    elif old.state != _UNLOADED:
                        old.moving = True
                        old_to_free = old
                self._cond.notify_all()
            if old_to_free is not None:
                dev = old_to_free.device
                self._free(old_to_free, reason="re-registered")
                with self._lock:
                    old_to_free.moving = False
                    self._cond.notify_all()
                self._empty_cache(dev)
        log.debug("registered %s (%s, estimate %s)", name, runtime.value, format_bytes(estimate_bytes))

    def is_registered(self, name: str) -> bool:
        with self._lock:
            return name in self._entries

    def names(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def _get(self, name: str) -> _Entry:
        e = self._entries.get(name)
        if e is None:
            raise UnknownModel(f"model {name!r} is not registered with the VRAM offloader")
        return e

    # ------------------------------------------------------------------ bookkeeping

    def _all_entries(self) -> list[_Entry]:
        return list(self._entries.values()) + self._retired

    def _used(self, dev: _Device | None = None) -> int:
        """Bytes resident on ``dev`` (every device when None)."""
        return sum(e.size for e in self._all_entries()
                   if e.state == _GPU and (dev is None or e.device is dev))

    def _host_used(self) -> int:
        return sum(e.size for e in self._all_entries() if e.state == _CPU)

    def _touch(self, e: _Entry) -> None:
        e.seq = next(self._seq)
        e.last_used_mono = self._clock()
        e.last_used_wall = time.time()

    def _note_peak(self, dev: _Device) -> None:
        used = self._used()
        if used > self._peak:
            self._peak = used
        used = self._used(dev)
        if used > dev.peak:
            dev.peak = used

    # ------------------------------------------------------------------ acquire

    @contextmanager
    def acquire(self, name: str, *, wait_s: float | None = None) -> Iterator[Any]:
        """Yield the model resident on the device, marked in use until the block exits."""
        e = self._acquire_entry(name, wait_s)
        try:
            with self._current_device(e.device):
                yield e.obj
        finally:
            self._release(e)

    def _current_device(self, dev: _Device | None):
        """With several GPUs, make ``dev`` this thread's current CUDA device while a model is used
        or loaded there: code that allocates on "the" GPU (``device="cuda"``, CUDA graphs, streams)
        then lands on the model's GPU. One device: nothing changes."""
        if dev is None or not dev.is_cuda or len(self._devices) == 1:
            return nullcontext()
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_available():  # bookkeeping under CUDA names, no GPU
            return nullcontext()
        return torch.cuda.device(dev.name)

    def _acquire_entry(self, name: str, wait_s: float | None) -> _Entry:
        # fast path: already resident
        with self._lock:
            while True:
                e = self._get(name)
                if not e.moving:
                    break
                self._cond.wait(1.0)
            if e.state == _GPU:
                e.in_use += 1
                e.unload_on_release = False
                self._touch(e)
                return e
        # slow path: load / move it, waiting for busy models if asked to
        wait = self.busy_timeout_s if wait_s is None else float(wait_s)
        deadline = time.monotonic() + wait
        while True:
            try:
                return self._acquire_slow(name)
            except ModelsBusy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise
                with self._cond:
                    self._cond.wait(min(remaining, 0.25))

    def _acquire_slow(self, name: str) -> _Entry:
        with self._load_lock:
            self._empty_cache()  # so the probe does not count the allocator's cached blocks
            with self._lock:
                e = self._get(name)
                if e.state == _GPU:  # someone brought it in while we waited
                    e.in_use += 1
                    e.unload_on_release = False
                    self._touch(e)
                    return e
                dev, victims = self._plan_room(e)  # raises ModelTooLarge / ModelsBusy
                for v in victims:
                    v.moving = True
                e.moving = True  # nobody evicts / frees it while we work on it
            try:
                self._evict_many(victims, reason=f"room for {name}")
                self._bring_on(e, dev)
            except BaseException:
                with self._lock:
                    e.moving = False
                    self._cond.notify_all()
                raise
            with self._lock:
                e.moving = False
                e.in_use += 1
                e.unload_on_release = False
                self._touch(e)
                self._cond.notify_all()
            self._fix_overcommit(exclude=e)
            return e

    def _release(self, e: _Entry) -> None:
        with self._lock:
            e.in_use -= 1
            self._touch(e)
            free_now = e.in_use == 0 and (e.retired or e.unload_on_release) and e.state != _UNLOADED
            if free_now:
                e.moving = True
            self._cond.notify_all()
        if free_now:
            dev = e.device
            with self._load_lock:
                self._free(e, reason="retired" if e.retired else "unload requested")
                with self._lock:
                    e.moving = False
                    e.unload_on_release = False
                    if e.retired and e in self._retired:
                        self._retired.remove(e)
                    self._cond.notify_all()
            self._empty_cache(dev)

    # ------------------------------------------------------------------ planning

    def _limit(self, dev: _Device) -> int:
        return dev.budget_bytes - self.reserve_bytes

    def _available(self, dev: _Device) -> tuple[int, int | None]:
        """Room on ``dev`` for one more model: (available, probe_free or None)."""
        avail = self._limit(dev) - self._used(dev)
        probe_free = self._probe_free(dev)
        if probe_free is not None:
            avail = min(avail, probe_free - self.reserve_bytes)
        return avail, probe_free

    def _evictable(self, exclude: _Entry | None = None, dev: _Device | None = None) -> list[_Entry]:
        """Resident idle models (on ``dev``, or anywhere) in eviction order: unpinned LRU first,
        pinned LRU last."""
        cands = [
            c for c in self._all_entries()
            if c is not exclude and c.state == _GPU and c.in_use == 0 and not c.moving
            and (dev is None or c.device is dev)
        ]
        cands.sort(key=lambda c: (c.pinned > 0, c.seq))
        return cands

    def _plan_room(self, e: _Entry) -> tuple[_Device, list[_Entry]]:
        """Decide (before evicting anything) on which device ``e`` goes and which idle models to
        evict there. Called with the lock held; raises ModelTooLarge / ModelsBusy."""
        if len(self._devices) == 1:
            dev = self._devices[0]
            return dev, self._plan_on(dev, e)
        options: list[tuple[tuple, _Device, list[_Entry]]] = []
        failures: list[tuple[_Device, ModelTooLarge]] = []
        home, group_need, mates = self._group_home(e)
        for dev in self._devices:
            try:
                victims = self._plan_on(dev, e)
            except ModelTooLarge as exc:
                failures.append((dev, exc))
                continue
            evicted = sum(v.size for v in victims)
            avail, _ = self._available(dev)
            room_after = avail + evicted - e.size
            if home is not None:  # join the group, unless that means pushing a member out
                together = dev is home and not any(v in mates for v in victims)
            elif group_need > e.size:  # first member of a group: a device the whole group fits on
                cands = self._evictable(exclude=e, dev=dev)
                together = avail + sum(c.size for c in cands) >= group_need
            else:
                together = True
            pinned_out = sum(v.size for v in victims if v.pinned > 0)  # pinned models go last, here too
            key = (not together, pinned_out, evicted, -room_after, dev is not e.device, dev.index)
            options.append((key, dev, victims))
        if options:
            _, dev, victims = min(options, key=lambda o: o[0])
            if home is not None and dev is not home:
                log.warning("%s cannot join its group on %s: placed on %s", e.name, home.name, dev.name)
            return dev, victims
        raise self._no_device(e, failures)

    def _group_home(self, e: _Entry) -> tuple[_Device | None, int, list[_Entry]]:
        """For a model pinned in a group: the device holding most of the group's resident bytes
        (None if none is resident; members of no size, e.g. a CPU-only VAD, do not count), the
        bytes the group's non-resident members need, and the other members."""
        if not e.groups:
            return None, 0, []
        mates = [c for c in self._entries.values() if c is not e and any(g in c.groups for g in e.groups)]
        on: dict[int, int] = {}
        for c in mates:
            if c.state == _GPU and c.device is not None and c.size > 0:
                on[c.device.index] = on.get(c.device.index, 0) + c.size
        if on:
            best = max(on, key=lambda i: (on[i], -i))
            return self._devices[best], 0, mates
        return None, e.size + sum(c.size for c in mates if c.state != _GPU), mates

    def _no_device(self, e: _Entry, failures: list[tuple[_Device, ModelTooLarge]]) -> ModelTooLarge:
        busy = tuple(n for _, exc in failures for n in exc.busy)
        detail = "; ".join(f"{dev.name}: {exc}" for dev, exc in failures)
        waiting = [exc for _, exc in failures if isinstance(exc, ModelsBusy)]
        pick = waiting[0] if waiting else failures[0][1]
        common = dict(name=e.name, need_bytes=pick.need_bytes, budget_bytes=pick.budget_bytes,
                      reserve_bytes=pick.reserve_bytes, free_bytes=pick.free_bytes,
                      evictable_bytes=pick.evictable_bytes, busy=busy)
        cls = ModelsBusy if waiting else ModelTooLarge
        return cls(f"no device can take {e.name} now: {detail}", **common)

    def _plan_on(self, dev: _Device, e: _Entry) -> list[_Entry]:
        """The idle models of ``dev`` to evict (least recently used first) so ``e`` fits there."""
        need = e.size
        limit = self._limit(dev)
        where = "this device" if len(self._devices) == 1 else dev.name
        if need > limit:
            raise ModelTooLarge(
                f"model {e.name} needs {format_bytes(need)}, budget is {format_bytes(dev.budget_bytes)}"
                f" minus a {format_bytes(self.reserve_bytes)} reserve = {format_bytes(limit)}:"
                f" it can never fit on {where}",
                name=e.name, need_bytes=need, budget_bytes=dev.budget_bytes,
                reserve_bytes=self.reserve_bytes, free_bytes=max(0, limit - self._used(dev)),
            )
        avail, probe_free = self._available(dev)
        if avail >= need:
            return []
        cands = self._evictable(exclude=e, dev=dev)
        evictable = sum(c.size for c in cands)
        if avail + evictable < need:
            busy = [c for c in self._all_entries()
                    if c is not e and c.state == _GPU and c.device is dev and (c.in_use > 0 or c.moving)]
            busy_bytes = sum(c.size for c in busy)
            busy_txt = ", ".join(f"{c.name} ({format_bytes(c.size)}, in use)" for c in busy) or "none"
            probe_txt = f"; the device reports {format_bytes(probe_free)} free" if probe_free is not None else ""
            common = dict(
                name=e.name, need_bytes=need, budget_bytes=dev.budget_bytes,
                reserve_bytes=self.reserve_bytes, free_bytes=max(0, avail), evictable_bytes=evictable,
                busy=tuple(c.name for c in busy),
            )
            detail = (
                f"model {e.name} needs {format_bytes(need)}; {format_bytes(max(0, avail))} free of a"
                f" {format_bytes(limit)} budget ({format_bytes(dev.budget_bytes)} minus"
                f" {format_bytes(self.reserve_bytes)} reserve){probe_txt}, idle models could free"
                f" {format_bytes(evictable)} more; busy: {busy_txt}"
            )
            if busy and avail + evictable + busy_bytes >= need:
                raise ModelsBusy(f"{detail}. Try again when they finish.", **common)
            raise ModelTooLarge(f"{detail}. Nothing was evicted.", **common)
        victims: list[_Entry] = []
        freed = 0
        for c in cands:
            if avail + freed >= need:
                break
            victims.append(c)
            freed += c.size
        return victims

    # ------------------------------------------------------------------ transitions
    # All of these run with self._load_lock held and self._lock NOT held, on entries that the
    # caller marked as moving.

    def _bring_on(self, e: _Entry, dev: _Device) -> None:
        """Load or move ``e`` onto ``dev``, with one evict-everything-there retry on OOM."""
        for attempt in (1, 2):
            try:
                self._load_or_move(e, dev)
                return
            except Exception as exc:
                if not is_oom_error(exc):
                    log.error("loading %s failed: %s", e.name, exc)
                    raise
                if attempt == 2:
                    self._settle_failed_move(e, dev)
                    with self._lock:
                        busy = [c.name for c in self._all_entries()
                                if c.state == _GPU and c.in_use > 0 and c.device is dev]
                    probe_free = self._probe_free(dev)
                    raise VramError(
                        f"not enough GPU memory to load {e.name} (about {format_bytes(e.size)})"
                        f" even after evicting every idle model{self._on(dev)}; busy: {', '.join(busy) or 'none'}"
                        + (f"; the device reports {format_bytes(probe_free)} free" if probe_free is not None else "")
                        + f" ({type(exc).__name__}: {str(exc)[:200]})"
                    ) from exc
                log.warning("out of memory loading %s (%s): evicting every idle model and retrying once",
                            e.name, str(exc)[:200])
            # outside the except block, so the failed attempt's frames can be collected
            self._evict_all_idle(exclude=e, reason=f"out of memory loading {e.name}", dev=dev)

    def _on(self, dev: _Device | None) -> str:
        """" on cuda:1" in messages when there are several devices."""
        return f" on {dev.name}" if dev is not None and len(self._devices) > 1 else ""

    def _settle_failed_move(self, e: _Entry, dev: _Device) -> None:
        """A parked model that failed to move onto the device may be half there: send it back."""
        if e.state == _CPU and e.obj is not None:
            try:
                res = e.to_device(e.obj, "cpu")
                e.obj = e.obj if res is None else res
            except Exception:
                log.warning("could not move %s back to cpu: freeing it", e.name, exc_info=True)
                self._free(e, reason="failed move")
        self._empty_cache(dev)

    def _load_or_move(self, e: _Entry, dev: _Device) -> None:
        measure = e.measured_bytes is None and dev.probe is not None
        if measure:
            self._empty_cache(dev)
            before = self._probe_free(dev)
        t0 = time.perf_counter()
        with self._current_device(dev):
            if e.state == _CPU and e.obj is not None:
                obj = e.to_device(e.obj, dev.target)
                kind = "moved"
            else:
                if e.state == _CPU:  # parked without an object: treat as unloaded
                    e.state = _UNLOADED
                obj = e.loader(dev.target)
                kind = "loaded"
        dt = time.perf_counter() - t0
        if kind == "moved" and obj is None:
            obj = e.obj
        measured: int | None = None
        how = ""
        if measure:
            self._empty_cache(dev)
            after = self._probe_free(dev)
            if before is not None and after is not None and before - after > 0:
                measured, how = before - after, "measured"
        if measured is None and e.measured_bytes is None:
            tb = _tensor_bytes(obj)
            if tb is not None:
                measured, how = tb, "parameter bytes"
        with self._lock:
            e.obj = obj
            e.state = _GPU
            e.device = dev
            if measured is not None:
                e.measured_bytes = measured
            if kind == "loaded":
                e.loads += 1
                e.load_seconds = dt
            else:
                e.moves += 1
                e.move_seconds = dt
            self._swaps += 1
            dev.swaps += 1
            self._note_peak(dev)
        size_txt = f"{format_bytes(e.size)} {how}" if how else (
            f"{format_bytes(e.size)}" + ("" if e.measured_bytes is not None else " estimated"))
        log.info("%s %s on %s in %.1f s (%s)", kind, e.name, dev.name, dt, size_txt)

    def _evict_many(self, victims: list[_Entry], *, reason: str) -> None:
        devs = {v.device.index: v.device for v in victims if v.device is not None}
        try:
            for v in victims:
                self._evict_one(v, reason=reason)
        finally:
            with self._lock:
                for v in victims:
                    v.moving = False
                self._cond.notify_all()
        for dev in devs.values():
            self._empty_cache(dev)

    def _evict_one(self, e: _Entry, *, reason: str) -> None:
        """Move ``e`` off the device: park it in host RAM (torch, budget allowing) or free it."""
        if e.state != _GPU:
            return
        if e.movable and e.obj is not None and e.size <= self.host_ram_budget_bytes and not e.retired:
            try:
                t0 = time.perf_counter()
                obj = e.to_device(e.obj, "cpu")
                dt = time.perf_counter() - t0
            except Exception as exc:
                log.warning("moving %s to cpu failed (%s): freeing it", e.name, exc)
                self._free(e, reason=reason)
                return
            with self._lock:
                e.obj = e.obj if obj is None else obj
                e.state = _CPU
            log.info("evicted %s (%s) from %s to cpu in %.1f s (%s)", e.name, reason,
                     e.device.name if e.device is not None else "?", dt, format_bytes(e.size))
            self._trim_host_ram(also=e)
        else:
            self._free(e, reason=reason)

    def _trim_host_ram(self, also: _Entry | None = None) -> None:
        """Free the least recently used parked models while host RAM is over budget (``also``:
        the model being parked right now, already marked as moving by the caller)."""
        while True:
            with self._lock:
                if self._host_used() <= self.host_ram_budget_bytes:
                    return
                parked = [c for c in self._all_entries() if c.state == _CPU and c.in_use == 0
                          and (not c.moving or c is also)]
                if not parked:
                    return
                victim = min(parked, key=lambda c: c.seq)
                owned = victim is not also
                victim.moving = True
            try:
                self._free(victim, reason="host RAM budget")
            finally:
                if owned:
                    with self._lock:
                        victim.moving = False
                        self._cond.notify_all()

    def _free(self, e: _Entry, *, reason: str) -> None:
        """Drop the model entirely (unload hook, drop references, collect)."""
        if e.state == _UNLOADED and e.obj is None:
            return
        prev = e.state
        prev_dev = e.device
        obj = e.obj
        try:
            if e.unload_fn is not None and obj is not None:
                e.unload_fn(obj)
        except Exception:
            log.warning("unload hook of %s failed", e.name, exc_info=True)
        finally:
            with self._lock:
                e.obj = None
                e.state = _UNLOADED
                e.device = None
            del obj
            if self.gc_collect:
                gc.collect()
        where = ("from host RAM" if prev != _GPU else
                 f"from {prev_dev.name}" if prev_dev is not None and len(self._devices) > 1 else "from the device")
        log.info("freed %s %s (%s)", e.name, where, reason)

    def _evict_all_idle(self, *, exclude: _Entry | None, reason: str, dev: _Device | None = None) -> list[str]:
        """Evict every idle model on ``dev`` (every device when None)."""
        with self._lock:
            victims = self._evictable(exclude=exclude, dev=dev)
            for v in victims:
                v.moving = True
        self._evict_many(victims, reason=reason)
        self._empty_cache(dev)
        return [v.name for v in victims]

    def _fix_overcommit(self, *, exclude: _Entry) -> None:
        """After a measurement larger than the estimate, evict LRU idle models to get back
        under the budget."""
        with self._lock:
            dev = exclude.device
            if dev is None:
                return
            over = self._used(dev) - self._limit(dev)
            if over <= 0:
                return
            victims: list[_Entry] = []
            for c in self._evictable(exclude=exclude, dev=dev):
                if over <= 0:
                    break
                victims.append(c)
                over -= c.size
            for v in victims:
                v.moving = True
        if victims:
            with self._load_lock:
                self._evict_many(victims, reason=f"{exclude.name} measured larger than estimated")
        if over > 0:
            log.warning("over the VRAM budget%s by %s: the models holding it are in use", self._on(dev),
                        format_bytes(over))

    # ------------------------------------------------------------------ explicit control

    def resident_used_since(self, wall_time: float) -> list[str]:
        """Models on the device that were used at or after `wall_time` (unix time) or are in use now."""
        with self._lock:
            return [e.name for e in self._entries.values() if e.state == _GPU
                    and (e.in_use > 0 or (e.last_used_wall is not None and e.last_used_wall >= wall_time))]

    def pin(self, name: str, group: str | None = None) -> None:
        """Evict ``name`` last and never for idleness. Models pinned with the same ``group`` (e.g.
        one realtime session) are placed on the same device when there are several."""
        with self._lock:
            e = self._get(name)
            e.pinned += 1
            if group is not None:
                e.groups[group] = e.groups.get(group, 0) + 1

    def unpin(self, name: str, group: str | None = None) -> None:
        with self._lock:
            e = self._get(name)
            if e.pinned <= 0:
                log.warning("unpin(%s) without a matching pin", name)
                return
            e.pinned -= 1
            if group is not None and group in e.groups:
                e.groups[group] -= 1
                if e.groups[group] <= 0:
                    del e.groups[group]

    def _take_for_transition(self, name: str, action: str) -> _Entry | None:
        """Under the load lock (so nothing else is moving): refuse busy models, mark as moving."""
        with self._lock:
            e = self._get(name)
            if e.in_use > 0:
                raise VramError(f"cannot {action} {name}: in use by {e.in_use} request(s)")
            e.moving = True
            return e

    def evict(self, name: str) -> None:
        """Move a resident model off the device (park in host RAM or free). No-op if not resident."""
        with self._load_lock:
            e = self._take_for_transition(name, "evict")
            if e.state != _GPU:
                with self._lock:
                    e.moving = False
                    self._cond.notify_all()
                return
            self._evict_many([e], reason="requested")

    def unload(self, name: str) -> None:
        """Free a model completely (device and host RAM)."""
        with self._load_lock:
            e = self._take_for_transition(name, "unload")
            dev = e.device
            try:
                self._free(e, reason="requested")
            finally:
                with self._lock:
                    e.moving = False
                    self._cond.notify_all()
        self._empty_cache(dev)

    def unload_all(self) -> list[str]:
        """Free every idle model; models in use are freed when their last user releases them.
        Returns the names freed now."""
        done: list[str] = []
        with self._load_lock:
            with self._lock:
                todo = []
                for e in self._entries.values():
                    if e.state == _UNLOADED:
                        continue
                    if e.in_use > 0:
                        e.unload_on_release = True
                        log.info("%s is in use: freed when released", e.name)
                        continue
                    e.moving = True
                    todo.append(e)
            for e in todo:
                try:
                    self._free(e, reason="unload all")
                    done.append(e.name)
                finally:
                    with self._lock:
                        e.moving = False
                        self._cond.notify_all()
        self._empty_cache()
        return done

    def evict_idle_all(self) -> list[str]:
        """Evict every idle resident model (pinned ones included). Returns their names."""
        with self._load_lock:
            return self._evict_all_idle(exclude=None, reason="requested")

    # ------------------------------------------------------------------ idle offload

    def offload_idle(self) -> list[str]:
        """Move models idle for longer than ``idle_offload_s`` off the device (pinned models
        stay). Returns their names."""
        with self._load_lock:
            with self._lock:
                now = self._clock()
                victims = [
                    e for e in self._evictable()
                    if e.pinned == 0 and e.last_used_mono is not None
                    and now - e.last_used_mono >= self.idle_offload_s
                ]
                for v in victims:
                    v.moving = True
            self._evict_many(victims, reason="idle")
        return [v.name for v in victims]

    def start_idle_thread(self, interval_s: float | None = None) -> None:
        """Start a daemon thread that calls ``offload_idle`` periodically (idempotent)."""
        if self._idle_thread is not None and self._idle_thread.is_alive():
            return
        if interval_s is None:
            interval_s = min(60.0, max(1.0, self.idle_offload_s / 5))
        self._idle_stop.clear()

        def loop() -> None:
            while not self._idle_stop.wait(interval_s):
                try:
                    self.offload_idle()
                except Exception:
                    log.exception("idle offload failed")

        self._idle_thread = threading.Thread(target=loop, name="vram-idle-offload", daemon=True)
        self._idle_thread.start()

    def stop(self) -> None:
        """Stop the idle thread (models stay where they are)."""
        self._idle_stop.set()
        t = self._idle_thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=5)
        self._idle_thread = None

    # ------------------------------------------------------------------ run with OOM handling

    def run(self, name: str, fn: Callable[[Any], Any], *, wait_s: float | None = None) -> Any:
        """``with acquire(name) as m: return fn(m)``; on a device OOM inside ``fn``, evict every
        other idle model, empty the cache and call ``fn`` once more; then raise VramError."""
        with self.acquire(name, wait_s=wait_s) as model:
            try:
                return fn(model)
            except Exception as exc:
                if not is_oom_error(exc):
                    raise
                log.warning("out of memory running %s (%s): evicting every idle model and retrying once",
                            name, str(exc)[:200])
            # outside the except block: the failed attempt's frames (and tensors) are released
            with self._lock:
                me = self._get(name) if name in self._entries else None
                dev = me.device if me is not None else None
            with self._load_lock:
                evicted = self._evict_all_idle(exclude=me, reason=f"out of memory running {name}",
                                               dev=dev if dev is not None else None)
            try:
                return fn(model)
            except Exception as exc:
                if not is_oom_error(exc):
                    raise
                with self._lock:
                    busy = [c.name for c in self._all_entries()
                            if c.state == _GPU and c.in_use > 0 and c.name != name
                            and (dev is None or c.device is dev)]
                    size = me.size if me is not None else 0
                probe_free = self._probe_free(dev) if dev is not None else None
                raise VramError(
                    f"out of GPU memory running {name}{self._on(dev)} (model {format_bytes(size)}), even after"
                    f" evicting {len(evicted)} idle model(s); other models in use: {', '.join(busy) or 'none'}"
                    + (f"; the device reports {format_bytes(probe_free)} free" if probe_free is not None else "")
                    + ". Try a smaller request (resolution, batch, length)."
                ) from exc

    # ------------------------------------------------------------------ introspection

    def size_of(self, name: str) -> int:
        with self._lock:
            return self._get(name).size

    def state_of(self, name: str) -> str:
        with self._lock:
            return self._get(name).state

    def device_of(self, name: str) -> str | None:
        """The device a model is resident on (None when it is not resident)."""
        with self._lock:
            e = self._get(name)
            return e.device.name if e.state == _GPU and e.device is not None else None

    def device_memory(self, device: str | None = None) -> tuple[int, int] | None:
        """(free, total) bytes as ``device`` (default: the first) reports them, counting every
        allocator on it; None without a probe."""
        dev = self._devices[0] if device is None else next((d for d in self._devices if d.name == device), None)
        if dev is None:
            raise ValueError(f"unknown device {device!r}; the offloader has {', '.join(self.device_names)}")
        if dev.probe is None:
            return None
        try:
            free, total = dev.probe()
        except Exception:
            log.warning("memory probe of %s failed", dev.name, exc_info=True)
            return None
        return int(free), int(total)

    def snapshot(self) -> dict:
        """Totals over every device (as before on one device), each device under ``devices``,
        each model with the device it is resident on."""
        probes: dict[int, tuple[int, int] | None] = {}
        for d in self._devices:
            probes[d.index] = None
            if d.probe is not None:
                try:
                    probes[d.index] = d.probe()
                except Exception:
                    pass
        with self._lock:
            devices = []
            for d in self._devices:
                used = self._used(d)
                free = max(0, d.budget_bytes - used)
                probe = probes[d.index]
                if probe is not None:
                    free = min(free, int(probe[0]))
                devices.append({
                    "name": d.name,
                    "budget_bytes": d.budget_bytes,
                    "used_bytes": used,
                    "free_bytes": free,
                    "peak_bytes": d.peak,
                    "swaps": d.swaps,
                    "device_free_bytes": int(probe[0]) if probe is not None else None,
                    "device_total_bytes": int(probe[1]) if probe is not None else None,
                    "models": [e.name for e in self._entries.values() if e.state == _GPU and e.device is d],
                })
            models = []
            for e in self._entries.values():
                models.append({
                    "name": e.name,
                    "family": e.family,
                    "runtime": e.runtime.value,
                    "state": e.state,
                    "device": e.device.name if e.state == _GPU and e.device is not None else None,
                    "bytes": e.size,
                    "measured": e.measured_bytes is not None,
                    "estimate_bytes": e.estimate_bytes,
                    "in_use": e.in_use,
                    "pinned": e.pinned,
                    "moving": e.moving,
                    "last_used": e.last_used_wall,
                    "loads": e.loads,
                    "moves": e.moves,
                    "load_seconds": e.load_seconds,
                    "move_seconds": e.move_seconds,
                })
            probed = [p for p in probes.values() if p is not None]
            every = len(probed) == len(self._devices)
            return {
                "device": self.device,
                "budget_bytes": self.budget_bytes,
                "reserve_bytes": self.reserve_bytes,
                "used_bytes": self._used(),
                "free_bytes": sum(d["free_bytes"] for d in devices),
                "peak_bytes": self._peak,
                "host_ram_used_bytes": self._host_used(),
                "host_ram_budget_bytes": self.host_ram_budget_bytes,
                "swaps": self._swaps,
                "device_free_bytes": sum(int(p[0]) for p in probed) if every else None,
                "device_total_bytes": sum(int(p[1]) for p in probed) if every else None,
                "devices": devices,
                "models": models,
            }

    def __repr__(self) -> str:
        s = self.snapshot()
        return (f"VramOffloader(device={s['device']!r}, used={format_bytes(s['used_bytes'])}"
                f"/{format_bytes(s['budget_bytes'])}, models={len(s['models'])})")
