"""The spec of one layer block: what `nn.blocks` builds, and what a model spec lists per section.

It lives in nn/, below model/, because the block builder reads it; `ddnn.model.spec` re-exports
it with the rest of the model spec.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LayerSpec:
    """One block. conv: conv -> [bn] -> act -> [pool]; bconv (eBNN ConvP): binary conv ->
    [pool] -> bn -> sign; linear: linear -> [bn] -> act; blinear: binary linear -> bn -> act.
    `out = 0` on the last layer of an exit means "as many outputs as the exit has classes"."""

    type: str
    out: int = 0
    kernel: int = 3
    stride: int = 1
    padding: int | None = None  # None: "same" padding, kernel // 2
    pool: int = 1
    activation: str = "relu"
    batch_norm: bool = True
    p: float = 0.0  # dropout probability

    @property
    def conv_padding(self) -> int:
        """A conv's padding: unset means "same" for an odd kernel, kernel // 2."""
        return self.kernel // 2 if self.padding is None else self.padding
