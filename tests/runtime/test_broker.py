"""Broker URL parsing and the private Mosquitto launcher."""

from __future__ import annotations

import shutil
import socket

import pytest

from ddnn.errors import DdnnError
from ddnn.runtime.broker import (
    LOOPBACK,
    MosquittoBroker,
    find_mosquitto,
    free_port,
    parse_broker_url,
)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://127.0.0.1:1883", ("127.0.0.1", 1883)),
        ("mqtt://broker.lan", ("broker.lan", 1883)),
        ("mqtt://[::1]:1884/", ("::1", 1884)),
    ],
)
def test_parse_broker_url(url: str, expected: tuple[str, int]) -> None:
    assert parse_broker_url(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("127.0.0.1:1883", "must look like mqtt://127.0.0.1:1883"),
        ("tcp://h:1883", "must use mqtt://"),
        ("mqtt://user:secret@h:1883", "pass username=/password= instead"),
        ("mqtt://h:0", "port in 1..65535"),
        ("mqtt://h:70000", "port in 1..65535"),
        ("mqtt://h:abc", "port in 1..65535"),
        ("mqtt://:1883", "needs a host"),
        ("mqtt://h:1883/topic", "path or query"),
        ("mqtt://h:1883?x=1", "path or query"),
    ],
)
def test_parse_broker_url_errors(url: str, message: str) -> None:
    with pytest.raises(DdnnError, match=message):
        parse_broker_url(url)


def test_missing_mosquitto_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)
    with pytest.raises(DdnnError, match="apt-get install mosquitto"):
        find_mosquitto()
    with pytest.raises(DdnnError, match="apt-get install mosquitto"):
        MosquittoBroker()
    with pytest.raises(DdnnError, match="not executable"):
        find_mosquitto("/nonexistent/mosquitto")


def _accepts(port: int) -> bool:
    try:
        socket.create_connection((LOOPBACK, port), timeout=0.5).close()
    except OSError:
        return False
    return True


@pytest.mark.integration
def test_lifecycle_restart_and_cleanup(broker: MosquittoBroker) -> None:
    assert broker.url == f"mqtt://127.0.0.1:{broker.port}" and broker.running
    assert _accepts(broker.port)
    config = (broker.log_path.parent / "mosquitto.conf").read_text()  # type: ignore[union-attr]
    for line in ("allow_anonymous true", "persistence false", "set_tcp_nodelay true"):
        assert line in config
    assert "max_packet_size 65536" in config
    pid = broker._proc.pid  # type: ignore[union-attr]
    broker.restart()
    assert broker.running and broker._proc.pid != pid  # type: ignore[union-attr]
    assert _accepts(broker.port)
    assert "running" in broker.log_text()
    workdir = broker.log_path.parent  # type: ignore[union-attr]
    broker.close()
    assert not broker.running and not workdir.exists()
    assert not _accepts(broker.port)


@pytest.mark.integration
def test_busy_port_is_reported(broker: MosquittoBroker) -> None:
    with pytest.raises(DdnnError, match=f"port {broker.port} .* is in use"):
        MosquittoBroker(broker.port).start()


@pytest.mark.integration
def test_startup_failure_shows_the_log() -> None:
    try:
        find_mosquitto()
    except DdnnError as exc:
        pytest.skip(str(exc))
    broker = MosquittoBroker(free_port())
    broker._config = lambda: "this_is_not_an_option 1\n"  # type: ignore[method-assign]
    with pytest.raises(DdnnError, match="mosquitto exited with code"), broker:
        pass
    assert not broker.running and broker.log_path is None
