"""Data-parallel training on several processes with PyTorch's own engine (torchrun + DDP).

``torchrun --nproc_per_node=N -m lmstudio_app train CONFIG.toml`` starts N copies of the CLI and
sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in each;
:func:`init_from_env` joins them into one process group (NCCL between GPUs, Gloo between CPU
processes) and the :class:`~lmstudio_app.training.trainer.Trainer` wraps its model in
``DistributedDataParallel``. See ``docs/distributed.md`` for what each rank does.

Every helper here is a no-op (or the identity) in a single process, so the engine calls them
unconditionally where that keeps its code simple.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import shlex
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError, LMStudioError, ParamError, TrainingError, cut, shown
from ..file_reads import read_text
from ..runs.rng_state import b64_to_byte_tensor, tensor_to_b64

if TYPE_CHECKING:
    from ..data.corpus import BatchSampler

T = TypeVar("T")

RANK_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
DEFAULT_PORT = 29500
# Rank 0 trains the tokenizer while the other ranks wait in a collective; a BPE tokenizer on a
# large corpus takes minutes, more than the default 10-minute collective timeout allows.
COLLECTIVE_TIMEOUT = timedelta(minutes=60)
# A rank that shows no sign of life for this long (stopped with kill -STOP, frozen, its machine
# gone) ends the job on every rank with a message naming it, instead of the others waiting in a
# collective for COLLECTIVE_TIMEOUT. Seconds; 0 turns the watch off. See docs/distributed.md.
STALL_ENV = "LMSTUDIO_STALL_TIMEOUT"
DEFAULT_STALL_TIMEOUT = 180.0


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the process group."""

    rank: int  # 0 .. world_size - 1, across all nodes
    world_size: int  # processes in all
    local_rank: int  # index on this node: the CUDA device this process trains on
    backend: str  # "nccl" or "gloo"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={shown(raw)} is not a whole number") from None
    if value < 0:
        raise ConfigError(f"environment variable {name}={value} is negative")
    return value


def ranks_from_env() -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) as torchrun set them; None when none of them is set."""
    values = {name: _env_int(name) for name in RANK_VARS}
    if all(v is None for v in values.values()):
        return None
    missing = [name for name, v in values.items() if v is None]
    if missing:
        raise ConfigError(f"{missing[0]} is not set but {', '.join(n for n in RANK_VARS if n not in missing)} "
                          "is; launch several processes with torchrun, which sets all three")
    rank, world, local = values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"]
    assert rank is not None and world is not None and local is not None
    if world < 1 or rank >= world:
        raise ConfigError(f"environment variable RANK={rank} is not below WORLD_SIZE={world}")
    return rank, world, local


def backend_for(device_type: str) -> str:
    """NCCL between GPUs (collectives on the device), Gloo between CPU processes."""
    return "nccl" if device_type == "cuda" else "gloo"


def init_from_env(device_type: str | None = None) -> DistInfo | None:
    """Join the process group torchrun describes in the environment (once per process).

    Returns None outside torchrun and for a world of one process, which then trains exactly
    like a plain single process. ``device_type`` ("cuda", "cpu"; default: CUDA if present)
    picks the backend; each CUDA rank is bound to ``cuda:LOCAL_RANK``.
    """
    ranks = ranks_from_env()
    if ranks is None or ranks[1] == 1:
        return None
    rank, world, local = ranks
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if device_type not in ("cuda", "cpu"):
        raise ConfigError(f"train.device: {device_type!r} cannot train on several processes; use 'cpu' or 'cuda'")
    if not dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed; train in a single process")
    backend = backend_for(device_type)
    device_id = None
    if device_type == "cuda":
        count = torch.cuda.device_count()
        if local >= count:
            raise ConfigError(f"environment variable LOCAL_RANK={local} but this node has {count} CUDA device(s); "
                              "start at most that many processes per node (--nproc_per_node)")
        device_id = torch.device("cuda", local)
        torch.cuda.set_device(device_id)  # NCCL and object collectives use the current device
    if not dist.is_initialized():
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if not os.environ.get(name):
                raise ConfigError(f"environment variable {name} is not set; launch with torchrun")
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT,
                                device_id=device_id)
    info = DistInfo(rank, world, local, backend)
    _start_watch(info)
    return info


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_main() -> bool:
    """True on rank 0, and in a single process: the one that writes files and prints."""
    return not is_initialized() or dist.get_rank() == 0


def device_for_rank(device: torch.device, info: DistInfo | None) -> torch.device:
    """The device this rank trains on: ``cuda:LOCAL_RANK`` on GPUs, the CPU otherwise."""
    if info is None:
        return device
    if device.type == "cuda":
        return torch.device("cuda", info.local_rank)
    if device.type != "cpu":
        raise ConfigError(f"train.device: {device.type!r} cannot train on several processes; use 'cpu' or 'cuda'")
    return device


def wrap_model(model: nn.Module, device: torch.device) -> nn.parallel.DistributedDataParallel:
    """DDP around ``model``: averages gradients over ranks during backward.

    Buffers are not re-broadcast at each forward (they are constants such as rotary tables);
    that broadcast would be a collective in every forward, evaluation included.
    """
    device_ids = [device.index] if device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel
    # PyTorch 2.13 renamed the switch (the old name warns); older versions know only broadcast_buffers.
    new_name = "forward_sync_buffers" in inspect.signature(ddp).parameters
    no_buffer_sync = {"forward_sync_buffers": False} if new_name else {"broadcast_buffers": False}
    return ddp(model, device_ids=device_ids, **no_buffer_sync)


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average ``tensor`` over all ranks, in place; returned for chaining (the identity alone)."""
    if is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(dist.get_world_size())
    return tensor


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (pickled in memory, never read from disk)."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def from_main(make: Callable[[], T], info: DistInfo | None) -> T:
    """``make()`` run on rank 0 only, its result sent to every rank.

    An error rank 0 can explain (an :class:`LMStudioError`) is raised on every rank, so the
    others stop at once with its message instead of waiting for a collective that never comes.
    """
    if info is None:
        return make()
    box: list[Any] = [None, None]
    if info.is_main:
        try:
            box[0] = make()
        except LMStudioError as exc:
            broadcast_object([None, f"{type(exc).__name__}: {exc}"])
            raise
    value, error = broadcast_object(box)
    if error is not None:
        raise TrainingError(f"rank 0 could not prepare the run ({error})")
    return value


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def cleanup(finished: bool = False) -> None:
    """Leave the process group (at the end of a command, also after an error).

    ``finished``: every rank got to the end, so they first wait for each other. A rank that tore
    its group down while another was still finishing its last write could abort at exit
    ("terminate called without an active exception", seen with Gloo on a loaded 2-core machine).
    After an error there is no waiting: another rank may be gone.
    """
    if is_initialized():
        if finished:
            dist.barrier()
        else:
            _post_failure()
        dist.destroy_process_group()
    _stop_watch()


def torchrun_command(
    config_path: str,
    nproc: int,
    nnodes: int = 1,
    extra: Sequence[str] = (),
    *,
    node_rank: int = 0,
    master_addr: str = "MASTER_HOST",
    master_port: int = DEFAULT_PORT,
) -> str:
    """The shell command that trains ``config_path`` on ``nproc`` processes per node.

    One node uses ``--standalone`` (a free local port); several nodes name the machine of node
    0 and this node's rank, and the same command (with its own ``--node_rank``) runs on each.
    ``extra`` are further ``lmstudio train`` arguments, e.g. ``["--out", "runs/big"]``.
    """
    if nproc < 1:
        raise ParamError(f"nproc: {nproc} must be at least 1 process per node")
    if nnodes < 1:
        raise ParamError(f"nnodes: {nnodes} must be at least 1")
    if not 0 <= node_rank < nnodes:
        raise ParamError(f"node_rank: {node_rank} must be between 0 and {nnodes - 1}")
    parts = ["torchrun"]
    if nnodes == 1:
        parts.append("--standalone")
    else:
        parts += [f"--nnodes={nnodes}", f"--node_rank={node_rank}", f"--master_addr={master_addr}",
                  f"--master_port={master_port}"]
    parts += [f"--nproc_per_node={nproc}", "-m", "lmstudio_app", "train", config_path, *extra]
    return " ".join(shlex.quote(p) for p in parts)


# -- each rank's batches, and its random streams in checkpoints -------------------------------

# The random streams of a run's batches. Rank r's stream i is seeded with seed + i + len(STREAMS) r,
# so a single process (rank 0) keeps seed, seed + 1, seed + 2 and no two streams of a run coincide.
STREAMS = ("train", "val", "train_eval")


def sampler_seed(seed: int, stream: str, rank: int = 0) -> int:
    return seed + STREAMS.index(stream) + len(STREAMS) * rank


def reseeded(seed: int, step: int, rank: int, stream: int) -> int:
    """A seed for a run resumed on another number of ranks, fixed by (seed, step, rank, stream)."""
    return int(np.random.SeedSequence([seed, step, rank, stream]).generate_state(1)[0])


def gather_rank_streams(samplers: Mapping[str, BatchSampler], device: torch.device,
                        dist: DistInfo | None) -> dict[str, Any] | None:
    """Every rank's sampler and torch RNG states (a collective), for ``extra["ranks"]``; None alone."""
    if dist is None:
        return None  # a single process: capture_rng holds all of it
    mine = {f"sampler.{name}": tensor_to_b64(s.get_state()) for name, s in samplers.items()}
    mine["torch"] = tensor_to_b64(torch.get_rng_state())
    if device.type == "cuda":
        mine["cuda"] = tensor_to_b64(torch.cuda.get_rng_state(device))
    streams = all_gather_objects(mine)
    return {"world_size": dist.world_size, "streams": {str(r): s for r, s in enumerate(streams)}}


def restore_rank_streams(saved: Mapping[str, Any] | None, samplers: Mapping[str, BatchSampler], seed: int,
                          step: int, device: torch.device, dist: DistInfo | None) -> str | None:
    """Each rank's own streams from ``extra["ranks"]`` when the number of ranks is the one saved;
    otherwise re-seed them from (seed, step, rank) and return a warning saying so."""
    world, rank = (dist.world_size, dist.rank) if dist else (1, 0)
    saved_world = int(saved["world_size"]) if saved else 1
    if saved_world == world:  # each rank continues its own streams exactly
        mine = saved["streams"][str(rank)] if saved and rank > 0 else None
        if mine is not None:
            for name, sampler in samplers.items():
                sampler.set_state(b64_to_byte_tensor(mine[f"sampler.{name}"]))
            torch.set_rng_state(b64_to_byte_tensor(mine["torch"]))
            if "cuda" in mine and device.type == "cuda":
                torch.cuda.set_rng_state(b64_to_byte_tensor(mine["cuda"]), device)
        return None
    # Rank r's saved streams do not map onto a different set of ranks: start fresh, reproducibly.
    for index, name in enumerate(STREAMS):
        if name in samplers:
            state = torch.Generator().manual_seed(reseeded(seed, step, rank, index)).get_state()
            samplers[name].set_state(state)
    if rank > 0:
        torch.manual_seed(reseeded(seed, step, rank, len(STREAMS)))
    return (f"resumed on {world} rank(s) from a checkpoint saved by {saved_world}: the batch samplers were "
            f"re-seeded from (seed {seed}, step {step}, rank), so later batches differ from an uninterrupted run")


# -- a stalled or dead rank ------------------------------------------------------------------


def stall_timeout_from_env() -> float:
    """``LMSTUDIO_STALL_TIMEOUT`` in seconds (default :data:`DEFAULT_STALL_TIMEOUT`); 0 = no watch."""
    raw = os.environ.get(STALL_ENV, "").strip()
    if not raw:
        return DEFAULT_STALL_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"environment variable {STALL_ENV}={shown(raw)} is not a number of seconds") from None
    if not 0 <= value <= 7 * 24 * 3600 or value != value:
        raise ConfigError(f"environment variable {STALL_ENV}={shown(raw)}: give 0 (off) or a number of seconds "
                          "up to a week")
    return value


def _is_collective_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective or the process group failing (a peer gone, a timeout)."""
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc)
    markers = ("gloo", "Gloo", "NCCL", "ProcessGroup", "Connection closed by peer", "Connection reset by peer",
               "c10d", "Broken pipe")
    return isinstance(exc, RuntimeError) and any(m in text for m in markers)


def collective_error_in(exc: BaseException) -> BaseException | None:
    """The collective failure behind ``exc`` (itself, or what it wraps), if there is one."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if _is_collective_error(current):
            return current
        todo += [current.__cause__, current.__context__, getattr(current, "original", None)]
    return None


def rank_failure(exc: BaseException) -> TrainingError | None:
    """``exc`` explained as another rank's failure, or None if it is not a collective error.

    A rank killed (or failing) mid-step makes the others' collective raise deep inside DDP's
    backward, which would otherwise read as the model plugin's error. The rank is named from
    the watch (its heartbeats stopped, its process is gone, or it posted its own error)."""
    cause = collective_error_in(exc)
    if cause is None or _WATCH is None:
        return None if cause is None else TrainingError(
            f"another rank stopped during training ({_error_detail(cause)}); every rank stops. The run's last "
            "checkpoint is kept: resume it with --resume")
    return TrainingError(_WATCH.explain_failure(cause))


def _error_detail(exc: BaseException) -> str:
    """A collective error's first line without the ``[.../pair.cc:553]`` source prefix, cut short."""
    lines = str(exc).strip().splitlines()
    text = re.sub(r"^\[[^\]]*\]\s*", "", lines[0]) if lines else type(exc).__name__
    return cut(text, 80)


class RankWatch:
    """Heartbeats between the ranks through the process group's key-value store.

    A daemon thread on every rank bumps its own counter in the store every ``interval`` seconds
    and reads the others'. A rank whose counter has not moved for ``timeout`` seconds (its
    process stopped or frozen: its threads stop with it) is stalled: this rank prints one line
    naming it and ends, as every healthy rank does within about ``interval`` of the others; a
    stalled rank on this machine is sent SIGTERM and SIGCONT so that it ends too (torchrun
    ends one elsewhere). A rank that itself was stopped and continued sees a gap in its own
    loop and starts counting afresh rather than accusing the others. Checkpoints are written
    atomically, so ending mid-run keeps the last one.
    """

    def __init__(self, info: DistInfo, store: Any, timeout: float, interval: float | None = None,
                 on_stall: Callable[[str], None] | None = None) -> None:
        self.info = info
        self.store = store
        self.timeout = timeout
        self.interval = interval if interval is not None else min(10.0, max(0.2, timeout / 6))
        self.on_stall = on_stall or _end_process
        self.host = socket.gethostname()
        self._beats = 0
        self._seen: dict[int, tuple[str, float]] = {}  # rank -> (its last beat, when it last changed)
        self._store_down_since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lmstudio-rank-watch", daemon=True)
        self.run_folder: Path | None = None  # rank 0's run: the messages name its last checkpoint

    # -- the store ------------------------------------------------------------------------
    def _key(self, kind: str, rank: int) -> str:
        return f"lmstudio/{kind}/{rank}"

    def _get(self, kind: str, rank: int) -> str | None:
        key = self._key(kind, rank)
        if not self.store.check([key]):  # get() would wait for a missing key
            return None
        return self.store.get(key).decode("utf-8", "replace")

    def beat(self) -> None:
        self._beats += 1
        self.store.set(self._key("beat", self.info.rank), f"{self._beats} {os.getpid()} {self.host}")

    def post_failure(self, message: str) -> None:
        self.store.set(self._key("failed", self.info.rank), cut(message, 300))

    # -- watching -------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _ranks(self) -> range:
        return range(self.info.world_size)

    def check(self, now: float) -> tuple[int, float] | None:
        """Read every other rank's beat; (rank, seconds idle) of one idle for ``timeout``, else None."""
        worst: tuple[int, float] | None = None
        for rank in self._ranks():
            if rank == self.info.rank:
                continue
            beat = self._get("beat", rank) or ""
            last = self._seen.get(rank)
            if last is None or last[0] != beat:
                self._seen[rank] = (beat, now)
                continue
            idle = now - last[1]
            if idle >= self.timeout and (worst is None or idle > worst[1]):
                worst = (rank, idle)
        return worst

    def _run(self) -> None:
        previous = time.monotonic()
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            if now - previous > max(3 * self.interval, self.interval + 2.0):
                # This process was itself stopped (or the machine slept): what it saw is stale.
                self._seen = {r: (b, now) for r, (b, _) in self._seen.items()}
                self._store_down_since = None
            previous = now
            try:
                self.beat()
                stalled = self.check(now)
                self._store_down_since = None
            except Exception as exc:  # the store (torchrun's agent, or rank 0) does not answer
                self._store_down_since = self._store_down_since or now
                if now - self._store_down_since >= self.timeout:
                    self.on_stall(
                        f"rank {self.info.rank}: the ranks' rendezvous store at {_store_address()} has not "
                        f"answered for {now - self._store_down_since:.0f} s ({cut(str(exc), 120)}); torchrun or "
                        "the machine holding it is gone or stalled — stopping this rank; the run's last "
                        "checkpoint is kept, resume it with --resume")
                    return
                continue
            if stalled is not None and not self._stop.is_set():
                rank, idle = stalled
                self.on_stall(self._stall_message(rank, idle))
                return

    def _who(self, rank: int) -> tuple[str, int | None, str | None]:
        """``rank 1 (pid 123 on host)``, its pid and host, from its last beat."""
        parts = (self._seen.get(rank, ("", 0.0))[0] or "").split(" ", 2)
        if len(parts) == 3 and parts[1].isdigit():
            return f"rank {rank} (pid {parts[1]} on {parts[2]})", int(parts[1]), parts[2]
        return f"rank {rank}", None, None

    def _stall_message(self, rank: int, idle: float) -> str:
        who, pid, host = self._who(rank)
        ended = ""
        if pid is not None and host == self.host and pid != os.getpid():
            ended = "; it was sent SIGTERM" if _signal_stalled(pid) else ""
        setting = f"{STALL_ENV}={self.timeout:g}"
        return (f"{who} has stalled: no sign of life for {idle:.0f} s ({setting}); stopping every rank{ended}. "
                f"{self._kept()}")

    def _kept(self) -> str:
        """What survives: the run's last checkpoint (named where this rank knows the run folder)."""
        folder = self.run_folder
        if folder is not None:
            with contextlib.suppress(LMStudioError, OSError):
                latest = read_text(folder / "checkpoints" / "latest", what="latest checkpoint pointer",
                                   max_bytes=4096).strip()
                if latest:
                    return f"The run's last checkpoint, {latest}, is kept: resume it with --resume {folder}"
                return f"No checkpoint was saved yet in {folder}"
        return "The run's last checkpoint is kept: resume it with --resume"

    def explain_failure(self, cause: BaseException) -> str:
        """Which rank a failed collective lost, waiting a few beats for the evidence."""
        detail = _error_detail(cause)
        deadline = time.monotonic() + min(self.timeout, max(3 * self.interval, 2.0))
        while True:
            for rank in self._ranks():
                if rank == self.info.rank:
                    continue
                with contextlib.suppress(Exception):
                    failed = self._get("failed", rank)
                    if failed:
                        return f"rank {rank} failed: {failed} (this is rank {self.info.rank}; every rank stops)"
                who, pid, host = self._who(rank)
                if pid is not None and host == self.host and not _process_alive(pid):
                    return f"{who} ended during training ({detail}); every rank stops. {self._kept()}"
            now = time.monotonic()
            with contextlib.suppress(Exception):
                stalled = self.check(now)
                if stalled is not None:
                    return self._stall_message(*stalled)
            if now >= deadline:
                break
            time.sleep(self.interval / 2)
        return f"another rank stopped during training ({detail}); every rank stops. {self._kept()}"


def _store_address() -> str:
    return f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"


def _process_alive(pid: int) -> bool:
    """False for a pid that is gone or a zombie (killed, not yet reaped by torchrun)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def _signal_stalled(pid: int) -> bool:
    """End a stopped rank on this machine: SIGTERM, then SIGCONT so that it can act on it."""
    try:
        os.kill(pid, signal.SIGTERM)
        if hasattr(signal, "SIGCONT"):
            os.kill(pid, signal.SIGCONT)
    except OSError:
        return False
    return True


def _end_process(message: str) -> None:
    """The watch's verdict: one line, then this process ends (its main thread is stuck in a
    collective that would wait for COLLECTIVE_TIMEOUT; nothing half-written stays: every run
    file is replaced atomically)."""
    first = message.strip().splitlines()[0]
    try:
        sys.stderr.write(f"lmstudio: error: {first}\n")
        sys.stderr.flush()
        sys.stdout.flush()
    finally:
        os._exit(1)


_WATCH: RankWatch | None = None


def _watch_store() -> Any:
    """A client of the store the process group rendezvoused through (torchrun's agent, or rank 0)."""
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=timedelta(seconds=30))
    prefix = f"{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
    return dist.PrefixStore(prefix, store)


def note_run_folder(path: Path | None) -> None:
    """Tell the watch where this rank's run folder is (rank 0), so that its messages name the
    checkpoint a resume continues from."""
    if _WATCH is not None:
        _WATCH.run_folder = path


def _start_watch(info: DistInfo) -> None:
    global _WATCH
    timeout = stall_timeout_from_env()
    if timeout <= 0 or _WATCH is not None:
        return
    try:
        watch = RankWatch(info, _watch_store(), timeout)
        watch.beat()
    except Exception as exc:  # training still works; only a stalled rank would go unnoticed
        if info.is_main:
            print(f"note: cannot watch the ranks for a stall through the store at {_store_address()} "
                  f"({cut(str(exc), 120)}); a stalled rank will hold the others up", file=sys.stderr)
        return
    _WATCH = watch
    watch.start()


def _stop_watch() -> None:
    global _WATCH
    if _WATCH is not None:
        _WATCH.stop()
        _WATCH = None


def _post_failure() -> None:
    """Leave this rank's error (the one being raised) in the store, so the others can name it."""
    exc = sys.exc_info()[1]
    if _WATCH is not None and exc is not None and collective_error_in(exc) is None:
        with contextlib.suppress(Exception):
            _WATCH.post_failure(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
