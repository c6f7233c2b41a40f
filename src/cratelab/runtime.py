"""The machine a command runs on, one home for every module: device resolution and validation, the
autocast dtype, CPU threads, torchrun's rank and world size, and system memory. Models and stages ask
here instead of looking at the machine themselves."""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass

import torch

from .errors import ConfigError, CratelabError

DEVICE_HELP = "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
# torch's intra-op thread pool beyond a few times the cores only slows down; far beyond, it crashes
MAX_THREADS_PER_CORE = 4


def is_device_name(name: str) -> bool:
    """Whether a device setting is spelled right (checked without touching any device)."""
    return name in ("auto", "cpu", "mps", "cuda") or (name.startswith("cuda:") and name[5:].isdigit())


def resolve_device(name: str, local_rank: int = 0, setting: str = "train.device") -> torch.device:
    """A device setting (``train.device`` unless ``setting`` names another) as a torch device; 'auto'
    picks CUDA, then MPS, then the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"  # under torchrun: one GPU per process
    try:
        device = torch.device(name)
    except RuntimeError:  # 'cuda:x', 'tpu': torch's own message lists every backend it knows
        raise CratelabError(f"{setting} = {name!r} is not a device: use {DEVICE_HELP}") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise CratelabError(f"{setting} = {name!r}: use {DEVICE_HELP}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CratelabError(f"{setting} = {name!r} but no CUDA GPU is available; use 'auto' or 'cpu'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise CratelabError(f"{setting} = {name!r} but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise CratelabError(f"{setting} = 'mps' but MPS is not available; use 'auto' or 'cpu'")
    return device


def has_native_bf16(device: torch.device) -> bool:
    """bf16 matrix units: NVIDIA GPUs from Ampere (compute capability 8.0) on, and AMD GPUs.
    torch.cuda.is_bf16_supported() also says yes where bf16 is only emulated (V100, T4)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return bool(torch.version.hip) or torch.cuda.get_device_properties(device).major >= 8


def autocast_dtype(name: str, device: torch.device, setting: str = "train.dtype") -> torch.dtype | None:
    """The autocast dtype, or None for plain float32. Low precision only on CUDA: a CPU without bf16
    units emulates bf16 hundreds of times slower than fp32."""
    bf16_ok = has_native_bf16(device)
    if name == "auto":
        return torch.bfloat16 if bf16_ok else None
    if name == "float32":
        return None
    if name == "bfloat16" and not bf16_ok:
        raise CratelabError(f"{setting} = 'bfloat16' needs a CUDA GPU with bf16 support (device: {device}); "
                            "use 'auto' or 'float32'")
    if name == "float16" and device.type != "cuda":
        raise CratelabError(f"{setting} = 'float16' needs a CUDA GPU (device: {device}); use 'auto' or 'float32'")
    return getattr(torch, name)


def visible_gpus() -> list[str]:
    """The CUDA GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (indices or UUIDs); none
    without CUDA."""
    if not torch.cuda.is_available():
        return []
    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [d.strip() for d in listed.split(",") if d.strip()] if listed is not None else []
    return names[:count] if len(names) >= count else [str(i) for i in range(count)]


def spread_over_gpus(n_workers: int, gpus: list[str]) -> list[str]:
    """The GPU of each of n worker processes, round robin over ``gpus`` (so ceil(n / len(gpus)) workers share
    a GPU); [] when there is no choice to make (one GPU or none)."""
    return [gpus[k % len(gpus)] for k in range(n_workers)] if len(gpus) > 1 else []


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def max_threads() -> int:
    return MAX_THREADS_PER_CORE * cpu_count()


def check_threads(threads: int, setting: str) -> int:
    """A thread or worker count within what this machine can run (checked here, where the work starts,
    not when a config is read: a run folder made on a bigger machine must stay readable on this one)."""
    if threads > max_threads():
        raise ConfigError(setting, f"must be at most {max_threads()} on this machine ({MAX_THREADS_PER_CORE} per "
                                   f"CPU core, {cpu_count()} cores), got {threads}")
    return threads


# torch's own choice for this process (its cores, or OMP_NUM_THREADS), before any stage set another
DEFAULT_THREADS = torch.get_num_threads()


def set_threads(threads: int, setting: str = "train.threads") -> None:
    """torch's intra-op threads on the CPU; 0 = torch's default. Set every time, 0 included: a stage never
    runs on the count an earlier stage of the same process set (results and speed depend on it)."""
    torch.set_num_threads(check_threads(threads, setting) or DEFAULT_THREADS)


# glibc's malloc hands a freed block above its mmap threshold (which it raises to at most 32 MiB) back to the
# OS, so tensors of that size (the LM head's logits and their gradient: 2,048 x 4,096 floats = 32 MiB at the
# seed ablation's shape) are mapped, page-faulted in and unmapped again every step. Keeping blocks up to
# 256 MiB in the heap, and the heap's free top up to 1 GiB, made a CPU training step ~25% faster
# (docs/performance.md); it changes no number.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
HEAP_BLOCK_LIMIT = 256 * 2**20
HEAP_TRIM_LIMIT = 2**30


def keep_freed_memory() -> bool:
    """Keep big freed blocks in this process's heap for reuse (glibc only; a no-op elsewhere, and where the
    user tunes malloc through its environment variables). Whether it took effect."""
    if not sys.platform.startswith("linux") or any(name in os.environ for name in (
            "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and other C libraries
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, HEAP_BLOCK_LIMIT)) and bool(mallopt(M_TRIM_THRESHOLD, HEAP_TRIM_LIMIT))


def end_with(pid: int) -> None:
    """Kill this process (SIGKILL, as `kill -9` would) as soon as process ``pid`` ends, however it ends; at
    once if it has ended already. The sweep's workers and its local jobs end with the sweep process: an
    orphan would go on training a run whose folder it locks, and the rerun of the sweep would fail that run
    as in use. POSIX only (on Windows an orphan finishes its run)."""
    if os.name != "posix":
        return
    import select
    import signal
    import threading
    import time

    try:
        watched = os.pidfd_open(pid)  # Linux 5.3+: readable once the process has ended

        def wait() -> None:
            select.select([watched], [], [])
    except ProcessLookupError:
        os.kill(os.getpid(), signal.SIGKILL)
    except (AttributeError, OSError):  # another POSIX system, or an older kernel: look every second

        def wait() -> None:
            while True:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    return
                time.sleep(1)

    def watch() -> None:
        wait()
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name=f"end-with-{pid}", daemon=True).start()


@dataclass(frozen=True)
class Distributed:
    """This process's place under torchrun (which sets RANK, LOCAL_RANK and WORLD_SIZE in each process
    it starts); a single process otherwise."""
    under_torchrun: bool = False
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1


def distributed() -> Distributed:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return Distributed(True, int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)),
                           int(os.environ["WORLD_SIZE"]))
    return Distributed()


def is_main_process() -> bool:
    """Rank 0 under torchrun, or the only process: the one that evaluates, scores and reports."""
    return os.environ.get("RANK", "0") == "0"


def system_memory_bytes() -> int | None:
    """Physical memory, or None where the OS does not say (Windows: let the allocator decide)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def require_memory(need_bytes: int, setting: str, what: str, use: str) -> None:
    """A ConfigError naming ``setting`` when ``what`` needs more than this machine's physical memory for ``use``."""
    memory = system_memory_bytes()
    if memory is not None and need_bytes > memory:
        raise ConfigError(setting, f"{what} need at least {need_bytes / 2**30:,.1f} GiB for {use}, more than this "
                                   f"machine's {memory / 2**30:,.1f} GiB")
