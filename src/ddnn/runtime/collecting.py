"""The server's hook into the collection store (`store/collection.py`): `--collect DIR`.

One call per answered batch turns each request and its answer into a `Record` and offers it to
the store's queue: no disk work, no lock held across requests, nothing that can raise into the
serving path (a failure is logged and counted as a dropped record).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from ddnn.model.spec import ModelSpec
from ddnn.nn.entropy import normalized_entropy_np
from ddnn.runtime.checks import decoded, tensors_by_name
from ddnn.runtime.config import ServerConfig
from ddnn.runtime.executor import Answer
from ddnn.runtime.metrics import Metrics
from ddnn.runtime.wire import Request
from ddnn.store.collection import Collector, Record

log = logging.getLogger(__name__)

_MB = 1 << 20


def open_collector(config: ServerConfig, metrics: Metrics) -> Collector | None:
    """The store `config.collect` names (None: collection is off), its counters in `metrics`
    as `ddnn_collect_<name>_total`. Built inert: the server starts and closes it."""
    if config.collect is None:
        return None
    collector = Collector(
        config.collect,
        max_bytes=int(config.collect_max_mb * _MB),
        max_count=config.collect_max_count,
    )
    metrics.add_source("collect", lambda: collector.stats)
    return collector


def _local_answer(request: Request) -> tuple[int, float]:
    """The device's own exit, when its frame carries its logits (`scores`); else (-1, NaN)."""
    scores = tensors_by_name(request).get("scores")
    if scores is None:
        return -1, float("nan")
    logits = decoded(scores).reshape(-1)  # [C]
    return int(logits.argmax()), float(normalized_entropy_np(logits))


def collect_answers(
    collector: Collector,
    spec: ModelSpec,
    section: int,
    requests: Sequence[tuple[Request, np.ndarray, np.ndarray | None]],
    answers: Sequence[Answer],
) -> None:
    """Offer each (request, x [D, ...], present [D]) with its answer to the store."""
    raw = section == 0 or spec.sections[section].input == "raw"
    try:
        for (request, x, present), answer in zip(requests, answers, strict=True):
            local_pred, local_entropy = _local_answer(request)
            collector.offer(
                Record(
                    model=request.model,
                    version=request.model_version,
                    section=section,
                    kind="raw" if raw else "features",
                    x=x,
                    present=present,
                    cloud_pred=answer.predicted,
                    cloud_exit=answer.exit_index,
                    cloud_entropy=answer.entropy,
                    local_pred=local_pred,
                    local_entropy=local_entropy,
                    frame_id=request.frame_id,
                )
            )
    except Exception:  # the store must never cost a reply
        log.exception("collecting %d answered requests failed", len(requests))
        collector.counts_failed(len(requests))
