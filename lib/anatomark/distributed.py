"""Data-parallel training in several processes (PyTorch DistributedDataParallel), the way MONAI Label does it.

MONAI Label's ``BasicTrainTask`` (0.8.5) trains on several GPUs when the request says ``multi_gpu`` and more than
one CUDA device is visible (``gpus``: ``all`` or ``"0,2"``): it spawns one process per GPU with
``torch.multiprocessing.spawn``, joins an NCCL process group, wraps the network in ``DistributedDataParallel``,
gives each rank a different part of the data, and only rank 0 validates, saves and publishes. This module does
the same for :func:`anatomark.training.train` (every model kind, cascade included):

- :func:`plan` turns the request options into a :class:`Plan` (or ``None``: one process, the default path).
  Without GPUs, ``cpu_processes`` (or the env var ``ANATOMARK_DDP_CPU_PROCESSES``) >= 2 runs the same code in that
  many CPU processes with the ``gloo`` backend: that is how the distributed path is tested here, and it can use
  several CPU sockets, though on one small machine it is not faster than one process.
- :func:`run` calls a function on every rank (:func:`anatomark.training.train_distributed` runs ``train(...)``) and returns rank 0's result plus a per-rank report
  (``result["distributed"]``: which items each rank trained on, a digest of its final weights).
- Inside a rank, :func:`anatomark.training.fit` asks this module for the device, the network wrapper, a
  ``DistributedSampler`` loader, the mean loss over ranks and rank 0's validation score; outside a rank every
  helper is a no-op and ``fit`` behaves exactly as in one process.

The processes meet through a temporary file (``file://`` init), so no TCP port has to be free.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from anatomark.errors import AnatomarkError
from anatomark.paths import atomic_write

logger = logging.getLogger(__name__)

ENV_CPU_PROCESSES = "ANATOMARK_DDP_CPU_PROCESSES"


@dataclass(frozen=True)
class Plan:
    """How to train: ``world_size`` processes, the ``backend`` (``nccl`` on GPUs, ``gloo`` on CPUs), the device of
    each rank."""

    world_size: int
    backend: str
    devices: tuple[str, ...]


@dataclass
class Context:
    """The rank this process is (set only inside a process started by :func:`run`)."""

    rank: int
    world_size: int
    backend: str
    device: torch.device
    report: dict[str, Any] = field(default_factory=dict)


_CTX: Context | None = None


def current() -> Context | None:
    return _CTX


def backend() -> str | None:
    """The process group's backend (``nccl``/``gloo``) inside a rank, else ``None``."""
    return _CTX.backend if _CTX else None


def rank() -> int:
    return _CTX.rank if _CTX else 0


def is_main() -> bool:
    """True on rank 0 and in a single-process run: the process that validates, saves and publishes."""
    return _CTX is None or _CTX.rank == 0


def plan(multi_gpu: Any = False, gpus: Any = "all", cpu_processes: Any = None) -> Plan | None:
    """The MONAI Label request options -> a :class:`Plan`, or ``None`` for one process.

    Args:
        multi_gpu: MONAI Label's ``multi_gpu`` option (bool or ``"true"``/``"false"``).
        gpus: ``"all"`` or comma-separated CUDA device indices (``"0,1"``), as in MONAI Label.
        cpu_processes: without CUDA devices, train in this many CPU processes (gloo) instead; default from
            ``ANATOMARK_DDP_CPU_PROCESSES``. Ignored when CUDA is available.

    Like MONAI Label, a request for several GPUs on a machine with fewer than two falls back to one process.
    """
    if not _truthy(multi_gpu):
        return None
    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n_cuda:
        if gpus in (None, "", "all"):
            ids = list(range(n_cuda))
        else:
            try:
                ids = [int(g) for g in (gpus if isinstance(gpus, list | tuple) else str(gpus).split(",")) if str(g)]
            except ValueError as e:
                raise AnatomarkError(f"gpus must be 'all' or comma-separated device numbers, got {gpus!r}") from e
            bad = [i for i in ids if not 0 <= i < n_cuda]
            if bad:
                raise AnatomarkError(f"gpus {bad} not available: this machine has {n_cuda} CUDA device(s)")
        ids = list(dict.fromkeys(ids))
        if len(ids) < 2:
            logger.info(f"multi_gpu requested but only {len(ids)} GPU selected: training in one process")
            return None
        return Plan(len(ids), "nccl", tuple(f"cuda:{i}" for i in ids))
    raw = cpu_processes if cpu_processes not in (None, "") else os.environ.get(ENV_CPU_PROCESSES, "0")
    try:
        n_cpu = int(raw)
    except (TypeError, ValueError) as e:
        raise AnatomarkError(f"cpu_processes must be a whole number, got {raw!r}") from e
    if n_cpu < 2:
        logger.info("multi_gpu requested but no CUDA device (and no cpu_processes >= 2): training in one process")
        return None
    return Plan(n_cpu, "gloo", ("cpu",) * n_cpu)


def _truthy(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "on")
    return bool(v)


# ------------------------------------------------------------------------------------------ helpers used by fit()
def device() -> torch.device | None:
    """This rank's device, or ``None`` outside a distributed run (``fit`` then picks the device itself)."""
    return _CTX.device if _CTX else None


def wrap(net: torch.nn.Module) -> torch.nn.Module:
    """``DistributedDataParallel(net)`` inside a rank (rank 0's weights are broadcast to all), else ``net``.

    Train through the wrapper (its backward averages the gradients over the ranks); validate and save the plain
    ``net``, which shares the parameters.
    """
    if _CTX is None:
        return net
    ids = [_CTX.device.index] if _CTX.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(net, device_ids=ids, output_device=ids[0] if ids else None)


class _RecordingSampler(DistributedSampler):
    """A DistributedSampler that notes which dataset indices this rank drew (for the per-rank report)."""

    def __iter__(self):  # noqa: ANN204
        idx = list(super().__iter__())
        if _CTX is not None:
            _CTX.report.setdefault("indices", []).append(idx)
        return iter(idx)


def data_loader(dataset: Dataset, batch_size: int, generator: torch.Generator, seed: int) -> DataLoader:
    """A shuffling loader: in a rank, over this rank's shard (``DistributedSampler``, reshuffled per epoch with
    :func:`set_epoch`); else the single-process loader ``fit`` always used."""
    if _CTX is None:
        return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator, drop_last=False)
    sampler = _RecordingSampler(dataset, num_replicas=_CTX.world_size, rank=_CTX.rank, shuffle=True, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=False)


def shard_size(n: int) -> int:
    """Items per rank per epoch (DistributedSampler pads the last shard by repeating items)."""
    return math.ceil(n / _CTX.world_size) if _CTX else n


def set_epoch(loader: DataLoader, epoch: int) -> None:
    if isinstance(getattr(loader, "sampler", None), DistributedSampler):
        loader.sampler.set_epoch(epoch)


def mean(value: float) -> float:
    """The mean of ``value`` over the ranks (e.g. the epoch loss), ``value`` itself outside a run."""
    if _CTX is None:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_reduce_device())
    tdist.all_reduce(t)
    return float(t.item()) / _CTX.world_size


def from_main(value: float) -> float:
    """Rank 0's ``value`` on every rank (the validation score decides checkpoints and the plateau schedule)."""
    if _CTX is None:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_reduce_device())
    tdist.broadcast(t, src=0)
    return float(t.item())


def finish(net: torch.nn.Module, dataset: Dataset | None = None) -> None:
    """End of ``fit`` in a rank: note a digest of the final weights (they must agree across ranks) and which items
    were drawn, then wait until rank 0 has written its files."""
    if _CTX is None:
        return
    h = hashlib.sha256()
    for k, v in net.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    drawn = _CTX.report.pop("indices", [])
    fit = {"weights_sha256": h.hexdigest()[:16], "samples_per_epoch": drawn}
    items = getattr(dataset, "items", None)
    if items is not None and dataset is not None and len(items) == len(dataset):  # one sample per image: name them
        fit["ids_per_epoch"] = [[str(items[i].get("id", i)) for i in epoch] for epoch in drawn]
    _CTX.report.setdefault("fits", []).append(fit)
    tdist.barrier()


def _reduce_device() -> torch.device:
    return _CTX.device if _CTX is not None and _CTX.backend == "nccl" else torch.device("cpu")


# ------------------------------------------------------------------------------------------ launching
def _worker(
    rank_: int, p: Plan, init_file: str, fn: Callable, args: tuple, kwargs: dict, result_path: str, threads: int
) -> None:
    global _CTX
    logging.basicConfig(
        level=logging.INFO, format=f"[%(asctime)s][rank {rank_}](%(name)s) %(message)s", datefmt="%H:%M:%S"
    )
    dev = torch.device(p.devices[rank_])
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if threads > 0:
        torch.set_num_threads(threads)
    tdist.init_process_group(p.backend, init_method=f"file://{init_file}", world_size=p.world_size, rank=rank_)
    _CTX = Context(rank_, p.world_size, p.backend, dev)
    try:
        logger.info(f"rank {rank_}/{p.world_size} on {dev} ({p.backend})")
        value = fn(*args, **kwargs)
        report = {"rank": rank_, "device": str(dev), "pid": os.getpid(), **_CTX.report}
        reports: list[Any] = [None] * p.world_size
        tdist.all_gather_object(reports, report)
        if rank_ == 0:
            with atomic_write(result_path) as tmp:
                torch.save({"value": value, "reports": reports}, tmp)
        tdist.barrier()
    finally:
        _CTX = None
        tdist.destroy_process_group()


def run(fn: Callable, p: Plan, *args: Any, **kwargs: Any) -> tuple[Any, list[dict[str, Any]]]:
    """Call ``fn(*args, **kwargs)`` in ``p.world_size`` new processes (one rank each; ``fn``, its arguments and
    its return value must be picklable). Returns rank 0's return value and every rank's report.

    CPU ranks share the cores: each gets ``cores // world_size`` threads (at least one, at most the current
    setting). A failing rank stops them all and raises here.
    """
    if p.world_size < 2:
        raise ValueError("a distributed run needs at least two processes")
    threads = 0
    if p.backend == "gloo":
        threads = max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) // p.world_size))
    with tempfile.TemporaryDirectory(prefix="anatomark-ddp-") as tmp:
        init_file, result_path = str(Path(tmp) / "init"), str(Path(tmp) / "result.pt")
        logger.info(f"Spawning {p.world_size} training processes ({p.backend} on {', '.join(p.devices)})")
        torch.multiprocessing.spawn(
            _worker, args=(p, init_file, fn, args, kwargs, result_path, threads), nprocs=p.world_size, join=True
        )
        out = torch.load(result_path, weights_only=False)
    return out["value"], out["reports"]
