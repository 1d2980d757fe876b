"""Shared fixtures; every test here must leave no thread, child process or socket behind."""

from __future__ import annotations

import gc
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ddnn.errors import DdnnError
from ddnn.runtime.broker import MosquittoBroker, find_mosquitto
from ddnn.runtime.transport import mqtt_client_names
from ddnn.store.artifact import load_model, save_model


def _children() -> set[int]:
    """Pids whose parent is this process (zombies included: they were never reaped)."""
    if not os.path.isdir("/proc"):
        return set()
    me, found = os.getpid(), set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == me:
            found.add(int(entry))
    return found


def _sockets() -> set[str]:
    """Open socket inodes of this process."""
    if not os.path.isdir("/proc/self/fd"):
        return set()
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail the test if it leaves threads (daemon or not), child processes or sockets."""
    threads, children, sockets = set(threading.enumerate()), _children(), _sockets()
    yield
    deadline = time.monotonic() + 2.0
    while True:
        gc.collect()  # paho's socketpair is closed when its client is collected
        leaked = {
            "threads": [t.name for t in threading.enumerate() if t not in threads],
            "child processes": sorted(_children() - children),
            "sockets": sorted(_sockets() - sockets),
        }
        if not any(leaked.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    problems = {k: v for k, v in leaked.items() if v}
    if problems:
        pytest.fail(f"test leaked {problems}")


@pytest.fixture
def hub_name() -> str:
    """A memory hub name no other test uses."""
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    """A private Mosquitto on a free loopback port, with a 64 KiB packet limit."""
    try:
        find_mosquitto()
    except DdnnError as exc:
        pytest.skip(str(exc))
    with MosquittoBroker(max_packet_size=65536) as running:
        yield running


@pytest.fixture(params=mqtt_client_names())
def mqtt_client(request: pytest.FixtureRequest) -> str:
    """Each MQTT client library in turn (`--mqtt-client`): the tests that take it are the
    ones a transport must pass whichever library speaks MQTT."""
    return str(request.param)


class Inbox:
    """A handler that records (topic, payload) pairs for assertions."""

    def __init__(self) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()

    def __call__(self, topic: str, payload: bytes) -> None:
        self.messages.put((topic, payload))

    def get(self, timeout: float = 2.0) -> tuple[str, bytes]:
        return self.messages.get(timeout=timeout)

    def take(self, count: int, timeout: float = 2.0) -> list[tuple[str, bytes]]:
        return [self.get(timeout) for _ in range(count)]

    def assert_empty(self, wait: float = 0.1) -> None:
        with pytest.raises(queue.Empty):
            self.messages.get(timeout=wait)


@pytest.fixture
def inbox() -> Inbox:
    return Inbox()


@pytest.fixture
def make_inbox() -> type[Inbox]:
    """For tests that need several inboxes."""
    return Inbox


@pytest.fixture(scope="module")
def offloading(tiny_ddnn, tmp_path_factory) -> Path:
    """tiny_ddnn with a local threshold of 0: every sample goes to the server, so every sample
    meets the fault (and has a local answer to fall back on)."""
    model = load_model(tiny_ddnn)
    model.spec = model.spec.with_thresholds({"device": 0.0})
    return save_model(model, tmp_path_factory.mktemp("offloading") / "run")
