"""Starting ranks: N local processes through torch elastic (torchrun's engine) with a c10d
rendezvous on a free loopback port, or joining a run that torchrun / `ddnn cluster` started."""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, record
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from ddnn import logs
from ddnn.data.datasets import Dataset
from ddnn.distributed.config import DistConfig
from ddnn.distributed.trainer import run_rank
from ddnn.errors import DdnnError
from ddnn.net import free_port
from ddnn.train.config import Experiment

log = logging.getLogger(__name__)


def in_distributed_env() -> bool:
    """True inside a rank started by torchrun or `ddnn cluster` (RANK and WORLD_SIZE are set)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


@record
def _rank_entry(
    experiment: Experiment,
    run_dir: str,
    dist_cfg: DistConfig,
    init_from: str | None,
    resume: bool,
    progress: bool,
    dataset: Dataset | None,
    log_level: int,
) -> dict[str, Any] | None:
    """A spawned rank: it has no CLI to configure logging, so it does so here."""
    logs.configure(log_level)
    return run_rank(experiment, run_dir, dist_cfg, init_from, resume, progress, dataset)


def launch_local(
    experiment: Experiment,
    run_dir: str | Path,
    dist_cfg: DistConfig,
    workers: int,
    init_from: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    dataset: Dataset | None = None,
) -> dict[str, Any]:
    """Train with `workers` local worker processes (plus a server process for ps); returns rank
    0's test report. A failed rank stops every rank; the error names the rank and its cause."""
    dist_cfg.validate()
    if workers < 1:
        raise DdnnError("--nproc must be at least 1")
    nproc = dist_cfg.processes(workers)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"ddnn-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{free_port()}",
        rdzv_configs={"timeout": int(dist_cfg.timeout)},
        max_restarts=dist_cfg.max_restarts,
        monitor_interval=0.2,
        start_method="spawn",
        local_addr="127.0.0.1",
    )
    log.info("launching %d local processes (%s)", nproc, dist_cfg.strategy)
    args = (
        experiment, str(run_dir), dist_cfg, None if init_from is None else str(init_from),
        resume, progress, dataset, logging.getLogger().getEffectiveLevel(),
    )  # fmt: skip
    try:
        with _fresh_store_per_round():
            results = elastic_launch(config, _rank_entry)(*args)
    except ChildFailedError as exc:
        raise DdnnError(failure_message(exc)) from None
    return results[0]


# With the c10d rendezvous the agent by default lends the workers its own store and keeps it for
# the whole run, while the workers' env:// setup assumes a fresh store per round: after an elastic
# restart gloo read the dead round's addresses and failed with "connectFullMesh ... Connection
# refused" (torch 2.13). With this set, rank 0 hosts a new store on a new port every round.
# torchrun users set it themselves (docs/distributed.md).
FRESH_STORE_ENV = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"


@contextlib.contextmanager
def _fresh_store_per_round() -> Iterator[None]:
    """The agent reads FRESH_STORE_ENV from this process's environment; restored afterwards."""
    old = os.environ.get(FRESH_STORE_ENV)
    os.environ[FRESH_STORE_ENV] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(FRESH_STORE_ENV, None)
        else:
            os.environ[FRESH_STORE_ENV] = old


def failure_message(exc: ChildFailedError) -> str:
    """The first failed rank's own error, without the launcher's traceback."""
    rank, failure = exc.get_first_failure()
    detail = failure.message
    if isinstance(detail, dict):
        detail = detail.get("message", str(detail))
    detail = str(detail).strip()
    for marker in ("DdnnError: ", "Error: "):  # the recorded message is "<Type>: <text>"
        if marker in detail:
            detail = detail.split(marker, 1)[1]
            break
    if not detail or detail.startswith("To enable traceback"):
        detail = f"exit code {failure.exitcode} (killed or crashed; see its output above)"
    return f"distributed training failed on rank {rank}: {detail}"
