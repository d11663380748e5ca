"""Training on several processes through ``torch.distributed`` (see docs/distributed.md).

``python -m recserve.training`` started by ``torchrun`` calls :func:`init_from_environment`,
which joins the process group torchrun describes (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``): gloo on the CPU, NCCL with
``--device cuda``. The trainers then ask :func:`current` where they stand. It reads
torch's own process-group state, so code that never initialised one (``recserve train``,
the Python API, the tests) gets one worker and runs exactly as before.

The rules the ranker trainer (``training.trainer.fit``) follows with ``W`` workers:

- every worker draws the same epoch order (one shuffle generator, same seed) and cuts it
  into the same global batches of ``batch_size`` rows as one process does; worker ``r``
  trains on the ``r``-th contiguous part of each global batch (:func:`shard`), so every
  worker sees a disjoint ``1/W`` of each epoch and their union is the one-process epoch;
- each worker's loss is weighted by its share of the global batch (:func:`share_weight`)
  before ``DistributedDataParallel`` averages the gradients, so one optimizer step gets
  the gradient of the global batch's mean loss, as with one process: same learning rate,
  same number of steps per epoch;
- the training loss is summed and counted on each worker and reduced
  (:func:`all_reduce_sums`); validation and test rows are scored in ``W`` parts and the
  scores gathered (:func:`gather_rows`), so AUC is computed over all rows on every worker;
- worker 0 alone writes checkpoints, curves and the artifact; the others wait at a
  barrier (:func:`barrier`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import distributed as dist

# the torchrun variables that say this process is one worker of a group
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

CPU = torch.device("cpu")
_device = CPU  # the device of this worker, set by init_from_environment


@dataclass(frozen=True)
class Workers:
    """Where this process stands in its group: one worker unless a group was initialised."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = CPU

    @property
    def is_main(self) -> bool:
        """Worker 0: the one that writes checkpoints, curves, artifacts and progress."""
        return self.rank == 0

    @property
    def grouped(self) -> bool:
        """True when a process group is initialised (also with one worker under torchrun)."""
        return dist.is_available() and dist.is_initialized()


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in LAUNCH_VARIABLES)


def requested_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset): how many workers were launched."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def current() -> Workers:
    """This process's place in the initialised process group, or one worker."""
    if not (dist.is_available() and dist.is_initialized()):
        return Workers(device=_device)
    return Workers(
        dist.get_rank(),
        dist.get_world_size(),
        int(os.environ.get("LOCAL_RANK", "0")),
        _device,
    )


def init_from_environment(device: str = "cpu") -> Workers:
    """Join the process group torchrun describes (when it launched us) on ``device``.

    ``device`` is ``cpu`` (backend gloo) or ``cuda`` (backend NCCL, one GPU per worker:
    ``cuda:LOCAL_RANK``). Without torchrun's variables this only selects the device.
    """
    global _device
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: this PyTorch sees no CUDA device; use --device cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        _device = torch.device("cuda", local_rank)
    else:
        _device = CPU
    if launched_by_torchrun() and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    return current()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every worker (nothing to do without a group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shard(index: torch.Tensor, workers: Workers) -> torch.Tensor:
    """Worker ``rank``'s contiguous part of a global batch (sizes differ by at most one)."""
    if workers.world_size == 1:
        return index
    return torch.tensor_split(index, workers.world_size)[workers.rank]


def share_weight(rows: int, global_rows: int, workers: Workers) -> float:
    """The factor on a worker's mean loss that makes DDP's gradient average the gradient of
    the global batch's mean: ``W * rows / global_rows``."""
    return workers.world_size * rows / global_rows


def all_reduce_sums(values: Sequence[float], workers: Workers) -> list[float]:
    """Element-wise sums over the workers (float64), e.g. a loss sum and a row count."""
    if not workers.grouped:
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().tolist()


def broadcast_floats(values: Sequence[float], workers: Workers) -> list[float]:
    """Worker 0's values on every worker (so decisions such as early stopping agree)."""
    if not workers.grouped:
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64, device=_collective_device())
    dist.broadcast(tensor, src=0)
    return tensor.cpu().tolist()


def broadcast_object(value: object, workers: Workers) -> object:
    """Worker 0's (picklable) value on every worker."""
    if not workers.grouped:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def split_rows(rows: np.ndarray, workers: Workers) -> np.ndarray:
    """Worker ``rank``'s contiguous part of ``rows`` for scoring."""
    return np.array_split(rows, workers.world_size)[workers.rank]


def gather_rows(part: np.ndarray, total: int, workers: Workers) -> np.ndarray:
    """The parts of :func:`split_rows` scored on each worker, concatenated in row order."""
    if not workers.grouped:
        return part
    sizes = [p.size for p in np.array_split(np.empty(total), workers.world_size)]
    padded = torch.zeros(max(sizes), dtype=torch.float32, device=_collective_device())
    padded[: part.size] = torch.from_numpy(np.ascontiguousarray(part, dtype=np.float32))
    gathered = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded)
    return np.concatenate([g[:n].cpu().numpy() for g, n in zip(gathered, sizes, strict=True)])


def worker_seed(seed: int, rank: int, epoch: int) -> int:
    """The dropout seed of worker ``rank`` > 0 at the start of ``epoch``: a function of the
    settings alone, so a resumed run draws what an uninterrupted one would."""
    return (seed * 1_000_003 + rank * 10_007 + epoch) % (2**63)


def _collective_device() -> torch.device:
    # NCCL reduces CUDA tensors only; gloo takes CPU tensors
    return _device if dist.get_backend() == "nccl" else CPU
