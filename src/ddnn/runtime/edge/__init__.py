"""The edge tier (DDNN's local aggregator, and the edge section of 3-tier models).

Devices of one model report each event (frame id) here with their exit scores only (DDNN's
4|C| bytes a device). When all have reported, or the frame's deadline passes, the edge fuses the
scores of the devices present and answers when the fused local exit is confident. Otherwise it
asks the devices for their features (a FEATURES reply), waits for them up to the frame deadline
again, runs its own section and exit if the model has one, and forwards what is still not
confident to the server. A device that did not report in time is left out and the reply names
it. A device may also send its features with its scores; then nothing is asked.

`frames` holds the per-frame state machine (pure, on any clock), `compute` the tensor work and
the replies, `aggregator` the transport glue and threads.
"""

from ddnn.runtime.edge.aggregator import EdgeAggregator

__all__ = ["EdgeAggregator"]
