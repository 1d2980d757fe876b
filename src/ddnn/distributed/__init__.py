"""Data-parallel training across processes and hosts on torch.distributed (gloo), the way Park,
Lee and Kim trained LeNet-5 across Raspberry Pis: all-reduce (DDP) or a parameter server, plus an
emulated device cluster (network namespaces, rate-limited links, CPU quotas) to measure it.

Public entry points: `DistConfig`, `run_rank`, `launch_local`, `EmulatedCluster`, and the CLI
glue in `ddnn.distributed.cli`.
"""

from ddnn.distributed.config import DistConfig

__all__ = ["DistConfig"]
