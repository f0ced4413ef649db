"""The run setup of every script: which process this is, on which device, with which settings.

A script started by itself is a world of one. Under `torchrun` (one node or several; under SLURM,
`srun` starts one torchrun per node) each process reads RANK, WORLD_SIZE and LOCAL_RANK, takes the
GPU of its local rank (`cuda:<LOCAL_RANK>`, made current with `torch.cuda.set_device` before it
joins the process group, as nanoGPT's train.py does), and joins the group: NCCL on GPUs, gloo on
the CPU. Work is split by chunk (utils/io.py Parts): each rank runs a share of the unfinished
chunks and saves each as a part; rank 0 merges them. A chunk's numbers depend on the chunk only,
so one process and N processes write the same bytes, and a killed job resumes with any number.
"""
import os
import random
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from utils.amp import amp_enabled
from utils.errors import UserError
from utils.io import Parts

DEFAULT_TIMEOUT_S = 1800


@dataclass(frozen=True)
class Run:
    """This process's place in the run and the settings decided once for it."""
    rank: int
    world: int
    local_rank: int
    device: torch.device
    amp: bool  # bf16 autocast takes effect here (utils/amp.py)
    pair_batch_size: int  # (reference, target) pairs per SAM2 forward
    num_workers: int  # image-decoding processes that feed the model

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def label(self, what: str) -> str:
        """A progress bar's label: which process's bar it is, when there are several."""
        return what if self.world == 1 else f"{what} (rank {self.rank})"


def setup_run(device: str | None = None, amp: bool = False, pair_batch_size: int | None = None,
              num_workers: int | None = None, seed: int = 0, timeout_s: float = DEFAULT_TIMEOUT_S,
              distributed: bool = True) -> Run:
    """Place this process (see the module docstring), seed every generator with `seed` (the same
    on every rank: random draws are the same in every process), and decide the settings that
    depend on the device. A step that is not `distributed` (reading and writing files only)
    refuses to run as several processes."""
    rank, world, local_rank = (int(os.environ.get(name, default)) for name, default in
                               (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
    if world > 1 and not distributed:
        raise UserError("this step runs as one process", f"WORLD_SIZE={world}",
                        "start it with python, not torchrun (only the GPU steps are split across processes)")
    chosen = choose_device(device, local_rank, world)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)  # before the process group: NCCL binds to the current GPU
    if world > 1 and not dist.is_initialized():
        _join(chosen, rank, world, timeout_s)
    seed_everything(seed)
    return Run(rank, world, local_rank, chosen, amp_enabled(amp, chosen),
               default_pair_batch_size(pair_batch_size, chosen), default_num_workers(num_workers, chosen))


def choose_device(name: str | None, local_rank: int = 0, world: int = 1) -> torch.device:
    """`--device`: cuda (this rank's GPU, `cuda:<LOCAL_RANK>`), cpu, or None for cuda when there
    is one. An explicit `cuda:N` is taken as it is by a single process only."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not name.startswith("cuda"):
        raise UserError(f"unknown device {name!r}", f"--device {name}", "pass --device cuda or --device cpu")
    if not torch.cuda.is_available():
        raise UserError("CUDA is not available", f"--device {name}", "use --device cpu, or run on a GPU machine")
    if name != "cuda":
        if world > 1:
            raise UserError("under torchrun each process uses the GPU of its LOCAL_RANK", f"--device {name}",
                            "pass --device cuda (CUDA_VISIBLE_DEVICES chooses which GPUs a node uses)")
        return torch.device(name)
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise UserError(f"process of local rank {local_rank} but this node has {count} GPU(s)", "LOCAL_RANK",
                        f"start at most {count} processes per node (torchrun --nproc_per_node {count})")
    return torch.device("cuda", local_rank)


def _join(device: torch.device, rank: int, world: int, timeout_s: float) -> None:
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
    except (dist.DistError, ValueError) as err:
        where = f"rank {rank} of {world}, MASTER_ADDR={os.environ.get('MASTER_ADDR')} " \
                f"MASTER_PORT={os.environ.get('MASTER_PORT')}"
        raise UserError(f"cannot join the other processes ({str(err).splitlines()[0][:160]})", where,
                        "start every rank (torchrun/srun), check the address, port and network between nodes, "
                        "or raise --dist_timeout") from None


def end_processes() -> None:
    """Leave the process group together, once every rank is done (as nanoGPT's train.py ends):
    a process that exits with the group still up can abort in its teardown."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_pair_batch_size(requested: int | None, device: torch.device) -> int:
    """Pairs per SAM2 forward pass: as asked, else 8 on a GPU and 1 on the CPU, where batching
    adds no throughput (each op already uses every core) and each new batch shape costs a
    warm-up (measured by bench.py)."""
    return requested if requested is not None else 8 if device.type == "cuda" else 1


def default_num_workers(requested: int | None, device: torch.device) -> int:
    """Decoding processes: as asked, else 4 beside a GPU (which encodes faster than one core
    decodes) and none on the CPU, where they would take cores from the model (bench.py: feed)."""
    if requested is not None:
        if requested < 0:
            raise UserError("--num_workers must be 0 or more", f"--num_workers {requested}", "pass 0 or more")
        return requested
    return min(4, os.cpu_count() or 1) if device.type == "cuda" else 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def sum_across_ranks(value: int | float) -> int | float:
    """The sum of every rank's `value`, on every rank."""
    if not dist.is_initialized():
        return value
    total = torch.tensor([value], dtype=torch.float64 if isinstance(value, float) else torch.int64,
                         device=_collective_device())
    dist.all_reduce(total)
    return type(value)(total.item())


def sum_gradients(parameters) -> None:
    """Sum each parameter's gradient over the ranks (a rank that had nothing to back-propagate
    gives zeros), so every rank takes the same optimizer step."""
    if not dist.is_initialized():
        return
    for parameter in parameters:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
        dist.all_reduce(parameter.grad)


def gather(value) -> list:
    """Every rank's `value` (any picklable object), in rank order, on every rank."""
    if not dist.is_initialized():
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def map_shared(function, items: list, run: Run) -> list:
    """[function(item) for item in items], each rank computing every world-th item (from its
    rank), all the results gathered in order on every rank."""
    shares = gather([function(item) for item in items[run.rank::run.world]])
    results = [None] * len(items)
    for rank, share in enumerate(shares):
        results[rank::run.world] = share
    return results


def broadcast(value):
    """Rank 0's `value` (any picklable object), on every rank."""
    if not dist.is_initialized():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def unfinished_share(parts: Parts, count: int, run: Run) -> list[int]:
    """Open the parts of a long stage of `count` chunks on every rank and return this rank's
    share of the chunks not saved yet (every world-th, from its rank). The parts' settings are
    checked by every rank and written by rank 0; every rank lists the finished chunks before any
    rank saves one, so the ranks agree on what is left (with any number of processes)."""
    parts.check()
    barrier()
    if run.is_main:
        parts.start()
    todo = [c for c in range(count) if not parts.done(c)]
    barrier()
    return todo[run.rank::run.world]
