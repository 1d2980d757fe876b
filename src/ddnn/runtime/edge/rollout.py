"""How the devices of a multi-device model switch versions together: the edge decides the frame.

The edge follows the server's announcements like a device does (fetching its upper sections).
Once the new version is ready it picks a frame a little ahead of the newest it has seen,
publishes it (`Switch` on `switch_topic`), and from then on judges every frame by its id: frames
before the switch are fused, computed and forwarded with the old version, frames from it on with
the new one. A device that reports a frame with a version other than the frame's is refused
(UNKNOWN_MODEL) and answers locally, so no frame ever mixes versions. Frame ids are the devices'
shared sample numbers; devices that restart from frame 0 after a switch are judged by the old
version until they pass it again (restart the edge with them).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ddnn.runtime.edge.compute import EdgeCompute
from ddnn.runtime.executor import exit_thresholds
from ddnn.runtime.metrics import Metrics
from ddnn.runtime.protocol import switch_topic
from ddnn.runtime.replies import publish_quietly
from ddnn.runtime.rollout import Follower
from ddnn.runtime.rollout_wire import Switch, encode_message
from ddnn.runtime.transport import Transport
from ddnn.store.artifact import open_model

log = logging.getLogger(__name__)

_KEEP = 3  # versions an edge keeps: late reports for frames before the last switch still fit


class EdgeVersions:
    """The version (and its compute) that judges each frame id: spans opened by switches."""

    def __init__(self, version: int, compute: EdgeCompute) -> None:
        self._spans: list[tuple[int, int, EdgeCompute]] = [(0, version, compute)]

    def for_frame(self, frame_id: int) -> tuple[int, EdgeCompute]:
        for first, version, compute in reversed(self._spans):
            if frame_id >= first:
                return version, compute
        return self._spans[0][1], self._spans[0][2]

    @property
    def latest(self) -> int:
        return self._spans[-1][1]

    def switch(self, first_frame: int, version: int, compute: EdgeCompute) -> None:
        self._spans = [*self._spans, (first_frame, version, compute)][-_KEEP:]


class EdgeRollout:
    """Follows the rollouts of the edge's model and opens a new span of `versions` when one is
    ready. Call `tick(newest_frame)` from the edge's thread (it owns `versions`)."""

    def __init__(
        self,
        transport: Transport,
        versions: EdgeVersions,
        *,
        model: str,
        identity: str,
        run_dir: str | Path,
        mode: str,
        thresholds: tuple[float, ...] | None,
        margin: int,
        metrics: Metrics,
    ) -> None:
        self.transport, self.versions, self.model = transport, versions, model
        self.thresholds, self.margin = thresholds, margin
        spec = open_model(run_dir).spec
        self.parts = tuple(s.name for s in spec.sections[1:])  # the edge needs no device weights
        self.follower = Follower(
            transport, model=model, version=versions.latest, identity=identity,
            parts=self.parts, folder=Path(run_dir) / "fetched" / identity,
            prepare=self._prepare, mode=mode, metrics=metrics,
        )  # fmt: skip

    def _prepare(self, folder: Path) -> EdgeCompute:
        stored = open_model(folder)
        return EdgeCompute(stored.load(self.parts), exit_thresholds(stored.spec, self.thresholds))

    def start(self) -> None:
        self.follower.start()

    def close(self) -> None:
        self.follower.close()

    def tick(self, newest_frame: int) -> None:
        ready, note = self.follower.take(newest_frame)
        if note:
            log.warning("edge: %s", note)
        if ready is None:
            return
        first = newest_frame + self.margin
        self.versions.switch(first, ready.version, ready.payload)
        switch = Switch(self.model, ready.version, first)
        publish_quietly(self.transport, switch_topic(self.model), encode_message(switch))
        log.info("edge: devices of %s switch to v%d at frame %d", self.model, ready.version, first)
