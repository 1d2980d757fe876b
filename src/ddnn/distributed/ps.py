"""A parameter server on torch.distributed point-to-point messages, in the seed's (MXNet) design:
rank 0 holds the parameters and the optimizer; workers push gradients and pull parameters.

Messages are flat float32 tensors. Push: [gradients..., floating buffers...]; pull:
[parameters..., floating buffers...] (buffers: batch-norm statistics, averaged like gradients).
Sync mode averages one push from every worker per step; async mode applies each push on arrival
(recv from any source) and answers only its sender.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
from torch import Tensor

from ddnn.nn.binary import clip_latent_weights
from ddnn.train.trainer import StepContext


def _floating_buffers(model: torch.nn.Module) -> list[Tensor]:
    return [b for b in model.buffers() if b.is_floating_point()]


def pack_state(model: torch.nn.Module) -> Tensor:
    """Parameters then floating buffers (batch-norm statistics) as one flat tensor."""
    parts = [p.detach().reshape(-1) for p in model.parameters()]
    parts += [b.reshape(-1) for b in _floating_buffers(model)]
    return torch.cat(parts).float()


def unpack_state(model: torch.nn.Module, flat: Tensor, params: bool = True) -> None:
    """Copy a packed state into the model; params=False skips to the buffers."""
    offset = 0 if params else gradient_numel(model)
    targets = [*model.parameters()] if params else []
    with torch.no_grad():
        for t in [*targets, *_floating_buffers(model)]:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


def gradient_numel(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class PSClient:
    """A worker's stand-in for its optimizer: `step()` pushes the gradients and pulls the new
    parameters, so the trainer's own train_step runs unchanged on a worker."""

    def __init__(self, model: torch.nn.Module, server: int = 0) -> None:
        self.model = model
        self.server = server
        self.comm_seconds = 0.0
        self._push = torch.zeros(pack_state(model).numel())
        self._pull = torch.zeros_like(self._push)
        self.param_groups: list[dict] = []  # what schedulers expect; the server owns the lr

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.model.parameters():
            p.grad = None

    def step(self) -> None:
        t0 = time.perf_counter()
        grads = [
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
            for p in self.model.parameters()
        ]
        buffers = [b.reshape(-1) for b in _floating_buffers(self.model)]
        torch.cat([*grads, *buffers], out=self._push)
        dist.send(self._push, self.server)
        dist.recv(self._pull, self.server)
        unpack_state(self.model, self._pull)
        self.comm_seconds += time.perf_counter() - t0


class ParameterServer:
    """Rank 0's side: applies pushed gradients with the trainer's optimizer (StepContext)."""

    def __init__(self, ctx: StepContext, workers: int, mode: str) -> None:
        self.ctx = ctx
        self.workers = workers
        self.mode = mode
        self.n_grad = gradient_numel(ctx.model)
        self._inbox = [torch.zeros(pack_state(ctx.model).numel()) for _ in range(workers)]

    def updates_per_step(self) -> int:
        """Optimizer updates per worker step: 1 in sync mode, one per worker in async mode."""
        return 1 if self.mode == "sync" else self.workers

    def serve(self, steps: int) -> None:
        """Serve `steps` steps of every worker (all ranks agree on the count: no deadlock)."""
        self.ctx.model.train()
        if self.mode == "sync":
            for _ in range(steps):
                for r in [dist.irecv(self._inbox[w], w + 1) for w in range(self.workers)]:
                    r.wait()
                state = self._apply(torch.stack(self._inbox).mean(0))
                for r in [dist.isend(state, w + 1) for w in range(self.workers)]:
                    r.wait()
            return
        msg = self._inbox[0]
        for _ in range(steps * self.workers):
            sender = dist.recv(msg)  # any source: whoever pushes first is served first
            dist.send(self._apply(msg), sender)

    def _apply(self, push: Tensor) -> Tensor:
        """One optimizer step with the pushed gradient; returns the state workers pull."""
        offset = 0
        for p in self.ctx.model.parameters():
            p.grad = push[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        self.ctx.optimizer.step()
        if self.ctx.scheduler is not None:
            self.ctx.scheduler.step()
        if self.ctx.has_binary:
            clip_latent_weights(self.ctx.model)
        unpack_state(self.ctx.model, push, params=False)  # the workers' batch-norm statistics
        return pack_state(self.ctx.model)
