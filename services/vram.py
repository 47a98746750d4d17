"""The VRAM offloader: one arbiter for every model of every runtime on one device.

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
"""

from __future__ import annotations

import gc
import itertools
import logging
import sys
import threading
import time
from contextlib import contextmanager
from enum import Enum
from typing import Any, Callable, Iterator

__all__ = [
    "Runtime",
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


class _Entry:
    __slots__ = (
        "name", "loader", "runtime", "estimate_bytes", "family", "to_device", "unload_fn",
        "obj", "state", "measured_bytes", "in_use", "pinned", "moving", "retired",
        "unload_on_release", "seq", "last_used_mono", "last_used_wall", "loads", "moves",
        "load_seconds", "move_seconds",
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
    ) -> None:
        self.device = str(device)
        self.is_cuda = self.device.startswith("cuda")
        if not self.is_cuda and self.device != "cpu":
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
        if mem_probe is None and self.is_cuda:
            mem_probe = self._cuda_mem_get_info
        self._probe = mem_probe
        if budget_bytes is None:
            if self._probe is None:
                raise ValueError("budget_bytes is required on a CPU device (no memory probe)")
            budget_bytes = int(self._probe()[1])
        if budget_bytes <= 0:
            raise ValueError("budget_bytes must be positive")
        self.budget_bytes = int(budget_bytes)
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

    def _cuda_mem_get_info(self) -> tuple[int, int]:
        import torch

        free, total = torch.cuda.mem_get_info(torch.device(self.device))
        return int(free), int(total)

    def _empty_cache(self) -> None:
        if not self.is_cuda:
            return
        torch = sys.modules.get("torch")
        if torch is None:
            return
        try:
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.synchronize(torch.device(self.device))
                torch.cuda.empty_cache()
        except Exception:  # pragma: no cover - best effort
            log.debug("empty_cache failed", exc_info=True)

    def _probe_free(self) -> int | None:
        if self._probe is None:
            return None
        try:
            return int(self._probe()[0])
        except Exception:
            log.warning("memory probe failed", exc_info=True)
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
                self._free(old_to_free, reason="re-registered")
                with self._lock:
                    old_to_free.moving = False
                    self._cond.notify_all()
                self._empty_cache()
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

    def _used(self) -> int:
        return sum(e.size for e in self._all_entries() if e.state == _GPU)

    def _host_used(self) -> int:
        return sum(e.size for e in self._all_entries() if e.state == _CPU)

    def _touch(self, e: _Entry) -> None:
        e.seq = next(self._seq)
        e.last_used_mono = self._clock()
        e.last_used_wall = time.time()

    def _note_peak(self) -> None:
        used = self._used()
        if used > self._peak:
            self._peak = used

    # ------------------------------------------------------------------ acquire

    @contextmanager
    def acquire(self, name: str, *, wait_s: float | None = None) -> Iterator[Any]:
        """Yield the model resident on the device, marked in use until the block exits."""
        e = self._acquire_entry(name, wait_s)
        try:
            yield e.obj
        finally:
            self._release(e)

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
                victims = self._plan_room(e)  # raises ModelTooLarge / ModelsBusy
                e.moving = True  # nobody evicts / frees it while we work on it
            try:
                self._evict_many(victims, reason=f"room for {name}")
                self._bring_on(e)
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
            with self._load_lock:
                self._free(e, reason="retired" if e.retired else "unload requested")
                with self._lock:
                    e.moving = False
                    e.unload_on_release = False
                    if e.retired and e in self._retired:
                        self._retired.remove(e)
                    self._cond.notify_all()
            self._empty_cache()

    # ------------------------------------------------------------------ planning

    def _limit(self) -> int:
        return self.budget_bytes - self.reserve_bytes

    def _available(self) -> tuple[int, int | None]:
        """Room on the device for one more model: (available, probe_free or None)."""
        avail = self._limit() - self._used()
        probe_free = self._probe_free()
        if probe_free is not None:
            avail = min(avail, probe_free - self.reserve_bytes)
        return avail, probe_free

    def _evictable(self, exclude: _Entry | None = None) -> list[_Entry]:
        """Resident idle models in eviction order: unpinned LRU first, pinned LRU last."""
        cands = [
            c for c in self._all_entries()
            if c is not exclude and c.state == _GPU and c.in_use == 0 and not c.moving
        ]
        cands.sort(key=lambda c: (c.pinned > 0, c.seq))
        return cands

    def _plan_room(self, e: _Entry) -> list[_Entry]:
        """Decide (before evicting anything) which idle models to evict so ``e`` fits.
        Called with the lock held; marks the victims as moving."""
        need = e.size
        limit = self._limit()
        if need > limit:
            raise ModelTooLarge(
                f"model {e.name} needs {format_bytes(need)}, budget is {format_bytes(self.budget_bytes)}"
                f" minus a {format_bytes(self.reserve_bytes)} reserve = {format_bytes(limit)}:"
                " it can never fit on this device",
                name=e.name, need_bytes=need, budget_bytes=self.budget_bytes,
                reserve_bytes=self.reserve_bytes, free_bytes=max(0, limit - self._used()),
            )
        avail, probe_free = self._available()
        if avail >= need:
            return []
        cands = self._evictable(exclude=e)
        evictable = sum(c.size for c in cands)
        if avail + evictable < need:
            busy = [c for c in self._all_entries()
                    if c is not e and c.state == _GPU and (c.in_use > 0 or c.moving)]
            busy_bytes = sum(c.size for c in busy)
            busy_txt = ", ".join(f"{c.name} ({format_bytes(c.size)}, in use)" for c in busy) or "none"
            probe_txt = f"; the device reports {format_bytes(probe_free)} free" if probe_free is not None else ""
            common = dict(
                name=e.name, need_bytes=need, budget_bytes=self.budget_bytes,
                reserve_bytes=self.reserve_bytes, free_bytes=max(0, avail), evictable_bytes=evictable,
                busy=tuple(c.name for c in busy),
            )
            detail = (
                f"model {e.name} needs {format_bytes(need)}; {format_bytes(max(0, avail))} free of a"
                f" {format_bytes(limit)} budget ({format_bytes(self.budget_bytes)} minus"
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
        for v in victims:
            v.moving = True
        return victims

    # ------------------------------------------------------------------ transitions
    # All of these run with self._load_lock held and self._lock NOT held, on entries that the
    # caller marked as moving.

    def _bring_on(self, e: _Entry) -> None:
        """Load or move ``e`` onto the device, with one evict-everything retry on OOM."""
        for attempt in (1, 2):
            try:
                self._load_or_move(e)
                return
            except Exception as exc:
                if not is_oom_error(exc):
                    log.error("loading %s failed: %s", e.name, exc)
                    raise
                if attempt == 2:
                    self._settle_failed_move(e)
                    with self._lock:
                        busy = [c.name for c in self._all_entries() if c.state == _GPU and c.in_use > 0]
                    probe_free = self._probe_free()
                    raise VramError(
                        f"not enough GPU memory to load {e.name} (about {format_bytes(e.size)})"
                        f" even after evicting every idle model; busy: {', '.join(busy) or 'none'}"
                        + (f"; the device reports {format_bytes(probe_free)} free" if probe_free is not None else "")
                        + f" ({type(exc).__name__}: {str(exc)[:200]})"
                    ) from exc
                log.warning("out of memory loading %s (%s): evicting every idle model and retrying once",
                            e.name, str(exc)[:200])
            # outside the except block, so the failed attempt's frames can be collected
            self._evict_all_idle(exclude=e, reason=f"out of memory loading {e.name}")

    def _settle_failed_move(self, e: _Entry) -> None:
        """A parked model that failed to move onto the device may be half there: send it back."""
        if e.state == _CPU and e.obj is not None:
            try:
                res = e.to_device(e.obj, "cpu")
                e.obj = e.obj if res is None else res
            except Exception:
                log.warning("could not move %s back to cpu: freeing it", e.name, exc_info=True)
                self._free(e, reason="failed move")
        self._empty_cache()

    def _load_or_move(self, e: _Entry) -> None:
        measure = e.measured_bytes is None and self._probe is not None
        if measure:
            self._empty_cache()
            before = self._probe_free()
        t0 = time.perf_counter()
        if e.state == _CPU and e.obj is not None:
            obj = e.to_device(e.obj, self.device)
            kind = "moved"
        else:
            if e.state == _CPU:  # parked without an object: treat as unloaded
                e.state = _UNLOADED
            obj = e.loader(self.device)
            kind = "loaded"
        dt = time.perf_counter() - t0
        if kind == "moved" and obj is None:
            obj = e.obj
        measured: int | None = None
        how = ""
        if measure:
            self._empty_cache()
            after = self._probe_free()
            if before is not None and after is not None and before - after > 0:
                measured, how = before - after, "measured"
        if measured is None and e.measured_bytes is None:
            tb = _tensor_bytes(obj)
            if tb is not None:
                measured, how = tb, "parameter bytes"
        with self._lock:
            e.obj = obj
            e.state = _GPU
            if measured is not None:
                e.measured_bytes = measured
            if kind == "loaded":
                e.loads += 1
                e.load_seconds = dt
            else:
                e.moves += 1
                e.move_seconds = dt
            self._swaps += 1
            self._note_peak()
        size_txt = f"{format_bytes(e.size)} {how}" if how else (
            f"{format_bytes(e.size)}" + ("" if e.measured_bytes is not None else " estimated"))
        log.info("%s %s on %s in %.1f s (%s)", kind, e.name, self.device, dt, size_txt)

    def _evict_many(self, victims: list[_Entry], *, reason: str) -> None:
        try:
            for v in victims:
                self._evict_one(v, reason=reason)
        finally:
            with self._lock:
                for v in victims:
                    v.moving = False
                self._cond.notify_all()
        if victims:
            self._empty_cache()

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
            log.info("evicted %s (%s) to cpu in %.1f s (%s)", e.name, reason, dt, format_bytes(e.size))
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
            del obj
            if self.gc_collect:
                gc.collect()
        where = "from the device" if prev == _GPU else "from host RAM"
        log.info("freed %s %s (%s)", e.name, where, reason)

    def _evict_all_idle(self, *, exclude: _Entry | None, reason: str) -> list[str]:
        with self._lock:
            victims = self._evictable(exclude=exclude)
            for v in victims:
                v.moving = True
        self._evict_many(victims, reason=reason)
        self._empty_cache()
        return [v.name for v in victims]

    def _fix_overcommit(self, *, exclude: _Entry) -> None:
        """After a measurement larger than the estimate, evict LRU idle models to get back
        under the budget."""
        with self._lock:
            over = self._used() - self._limit()
            if over <= 0:
                return
            victims: list[_Entry] = []
            for c in self._evictable(exclude=exclude):
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
            log.warning("over the VRAM budget by %s: the models holding it are in use", format_bytes(over))

    # ------------------------------------------------------------------ explicit control

    def resident_used_since(self, wall_time: float) -> list[str]:
        """Models on the device that were used at or after `wall_time` (unix time) or are in use now."""
        with self._lock:
            return [e.name for e in self._entries.values() if e.state == _GPU
                    and (e.in_use > 0 or (e.last_used_wall is not None and e.last_used_wall >= wall_time))]

    def pin(self, name: str) -> None:
        with self._lock:
            self._get(name).pinned += 1

    def unpin(self, name: str) -> None:
        with self._lock:
            e = self._get(name)
            if e.pinned <= 0:
                log.warning("unpin(%s) without a matching pin", name)
                return
            e.pinned -= 1

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
                return
            self._evict_many([e], reason="requested")

    def unload(self, name: str) -> None:
        """Free a model completely (device and host RAM)."""
        with self._load_lock:
            e = self._take_for_transition(name, "unload")
            try:
                self._free(e, reason="requested")
            finally:
                with self._lock:
                    e.moving = False
                    self._cond.notify_all()
        self._empty_cache()

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
            with self._load_lock:
                evicted = self._evict_all_idle(exclude=me, reason=f"out of memory running {name}")
            try:
                return fn(model)
            except Exception as exc:
                if not is_oom_error(exc):
                    raise
                with self._lock:
                    busy = [c.name for c in self._all_entries()
                            if c.state == _GPU and c.in_use > 0 and c.name != name]
                    size = me.size if me is not None else 0
                probe_free = self._probe_free()
                raise VramError(
                    f"out of GPU memory running {name} (model {format_bytes(size)}), even after evicting"
                    f" {len(evicted)} idle model(s); other models in use: {', '.join(busy) or 'none'}"
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

    def device_memory(self) -> tuple[int, int] | None:
        """(free, total) bytes as the device reports them, counting every allocator on it; None without a probe."""
        if self._probe is None:
            return None
        try:
            free, total = self._probe()
        except Exception:
            log.warning("memory probe failed", exc_info=True)
            return None
        return int(free), int(total)

    def snapshot(self) -> dict:
        probe = None
        if self._probe is not None:
            try:
                probe = self._probe()
            except Exception:
                probe = None
        with self._lock:
            used = self._used()
            free = max(0, self.budget_bytes - used)
            if probe is not None:
                free = min(free, int(probe[0]))
            models = []
            for e in self._entries.values():
                models.append({
                    "name": e.name,
                    "family": e.family,
                    "runtime": e.runtime.value,
                    "state": e.state,
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
            return {
                "device": self.device,
                "budget_bytes": self.budget_bytes,
                "reserve_bytes": self.reserve_bytes,
                "used_bytes": used,
                "free_bytes": free,
                "peak_bytes": self._peak,
                "host_ram_used_bytes": self._host_used(),
                "host_ram_budget_bytes": self.host_ram_budget_bytes,
                "swaps": self._swaps,
                "device_free_bytes": int(probe[0]) if probe is not None else None,
                "device_total_bytes": int(probe[1]) if probe is not None else None,
                "models": models,
            }

    def __repr__(self) -> str:
        s = self.snapshot()
        return (f"VramOffloader(device={s['device']!r}, used={format_bytes(s['used_bytes'])}"
                f"/{format_bytes(s['budget_bytes'])}, models={len(s['models'])})")
