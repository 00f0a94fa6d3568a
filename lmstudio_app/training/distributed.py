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

import inspect
import os
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError, LMStudioError, ParamError, TrainingError
from ..runs.rng_state import b64_to_byte_tensor, tensor_to_b64

if TYPE_CHECKING:
    from ..data.corpus import BatchSampler

T = TypeVar("T")

RANK_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
DEFAULT_PORT = 29500
# Rank 0 trains the tokenizer while the other ranks wait in a collective; a BPE tokenizer on a
# large corpus takes minutes, more than the default 10-minute collective timeout allows.
COLLECTIVE_TIMEOUT = timedelta(minutes=60)


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
        raise ConfigError(f"environment variable {name}={raw!r} is not a whole number") from None
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
    return DistInfo(rank, world, local, backend)


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
        dist.destroy_process_group()


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
