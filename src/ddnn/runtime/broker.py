"""Private Mosquitto brokers on a loopback port, for tests, demos and `ddnn broker`.

Each broker gets its own generated config, log and temp dir, so runs never depend on (or
disturb) a system-wide Mosquitto.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Self
from urllib.parse import urlsplit

from ddnn.errors import DdnnError
from ddnn.net import LOOPBACK, free_port
from ddnn.runtime.lifecycle import Service
from ddnn.runtime.transport import DEFAULT_MAX_PACKET_SIZE

if TYPE_CHECKING:
    from ddnn.runtime.security import SecureSetup

logger = logging.getLogger(__name__)

DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883
SCHEMES = {"mqtt": DEFAULT_PORT, "mqtts": DEFAULT_TLS_PORT}
_SEARCH_DIRS = ("/usr/sbin", "/usr/local/sbin", "/opt/homebrew/sbin")


def parse_broker_url(url: str) -> tuple[str, int]:
    """`mqtt://host[:port]` or `mqtts://host[:port]` (TLS) -> (host, port); the port defaults
    to 1883 and 8883."""
    example = "mqtt://127.0.0.1:1883"
    if not isinstance(url, str) or "://" not in url:
        raise DdnnError(f"broker URL {url!r} must look like {example}")
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise DdnnError(f"broker URL {url!r} must use mqtt:// or mqtts:// (TLS), as in {example}")
    if "@" in parts.netloc:
        raise DdnnError(
            f"broker URL {url!r} contains credentials; pass username=/password= instead "
            "so they never end up in logs"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise DdnnError(f"broker URL {url!r} has a path or query; use only {example}")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 or not parts.hostname:
        raise DdnnError(f"broker URL {url!r} needs a host and a port in 1..65535, e.g. {example}")
    return parts.hostname, port or SCHEMES[parts.scheme]


@contextmanager
def broker_or_own(url: str | None) -> Iterator[str]:
    """`url` when given, else the URL of a private broker started for this block's lifetime."""
    if url:
        yield url
        return
    with MosquittoBroker() as broker:
        yield broker.url


def find_mosquitto(binary: str | None = None) -> str:
    """Path of the mosquitto executable (it lives in sbin, often not on a user's PATH)."""
    if binary is not None:
        if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
            raise DdnnError(f"mosquitto binary {binary!r} does not exist or is not executable")
        return binary
    found = shutil.which("mosquitto") or shutil.which(
        "mosquitto", path=os.pathsep.join(_SEARCH_DIRS)
    )
    if found is None:
        raise DdnnError(
            "mosquitto is not installed (looked in PATH and "
            f"{', '.join(_SEARCH_DIRS)}); install it with `sudo apt-get install mosquitto` "
            "(or `brew install mosquitto`), or point --broker at an existing broker"
        )
    return found


def _port_is_free(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as mosquitto does
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _reap(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Terminate politely, then kill; always wait so no zombie is left."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("mosquitto (pid %d) ignored SIGTERM; killing it", proc.pid)
            proc.kill()
    proc.wait()


class MosquittoBroker(Service):
    """A mosquitto process on 127.0.0.1:<port>, stopped and cleaned up on exit.

    >>> with MosquittoBroker() as broker:
    ...     transport = create_transport(broker.url)
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
        binary: str | None = None,
        startup_timeout: float = 5.0,
        stop_timeout: float = 5.0,
        security: SecureSetup | None = None,
        host: str = LOOPBACK,
        public_host: str | None = None,
    ) -> None:
        if port is not None and not 0 < port < 65536:
            raise DdnnError(f"broker port {port} is not in 1..65535")
        if max_packet_size < 64:
            raise DdnnError(f"max_packet_size={max_packet_size} is too small; use at least 64")
        self.binary = find_mosquitto(binary)
        self.host = host
        self.public_host = public_host  # the name clients use (access files), if not host
        self.security = security
        self.port = port or free_port()
        self.max_packet_size = max_packet_size
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def url(self) -> str:
        """What clients on this machine connect to: mqtts:// when the broker speaks TLS."""
        return self._url_for(self.url_host)

    def _url_for(self, host: str) -> str:
        scheme = "mqtts" if self.security is not None and self.security.tls else "mqtt"
        return f"{scheme}://{host}:{self.port}"

    @property
    def url_host(self) -> str:
        """Where local clients reach it (a wildcard bind is reached on loopback)."""
        return LOOPBACK if self.host in ("0.0.0.0", "") else self.host

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The mosquitto process, while running (benchmarks read its CPU time)."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def log_path(self) -> Path | None:
        return self._dir / "mosquitto.log" if self._dir else None

    def log_text(self) -> str:
        """Mosquitto's log and stderr, for error messages and debugging."""
        if self._dir is None:
            return ""
        files = (self._dir / "mosquitto.log", self._dir / "stderr.log")
        return "".join(p.read_text(errors="replace") for p in files if p.exists())

    def start(self) -> Self:
        """Launch mosquitto and wait (bounded) until its port accepts connections."""
        if self.running:
            return self
        if not _port_is_free(self.port, self.host):
            raise DdnnError(f"port {self.port} on {self.host} is in use; pick another port")
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="ddnn-mosquitto-"))
            weakref.finalize(self, shutil.rmtree, self._dir, ignore_errors=True)
        config = self._dir / "mosquitto.conf"
        config.write_text(self._config())
        with open(self._dir / "stderr.log", "ab") as err:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                cwd=self._dir,
            )
        # Reap even if the owner forgets to stop us (crash, missing `with`).
        self._finalizer = weakref.finalize(self, _reap, self._proc, self.stop_timeout)
        self._wait_ready()
        logger.info("mosquitto pid %d listening on %s", self._proc.pid, self.url)
        if self.security is not None:
            self.security.write_access_files(self._url_for(self.public_host or self.url_host))
        return self

    def _config(self) -> str:
        assert self._dir is not None
        lines = [
            "# generated by ddnn.runtime.broker; removed when the broker stops",
            f"listener {self.port} {self.host}",
            *self._security_lines(),
            "persistence false",
            "set_tcp_nodelay true",
            f"max_packet_size {self.max_packet_size}",
            f"log_dest file {self._dir / 'mosquitto.log'}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            # Only applies when started as root: keep our uid so the temp dir stays writable.
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
        ]
        return "\n".join(lines) + "\n"

    def _security_lines(self) -> list[str]:
        """Anonymous access without `security` (meant for loopback: `ddnn broker` warns
        otherwise); passwords, ACL and TLS with it."""
        sec = self.security
        if sec is None:
            return ["allow_anonymous true"]
        # mosquitto runs in its temp dir: a relative path would be read from there
        lines = [
            "allow_anonymous false",
            # the client id becomes the username: no identity can take over another's session
            # (a CONNECT with a used id drops the older connection), so one live connection
            # per identity: give each server process its own (`--servers s1,s2`)
            "use_username_as_clientid true",
            f"password_file {Path(sec.password_file).resolve()}",
            f"acl_file {Path(sec.acl_file).resolve()}",
        ]
        if sec.tls:
            files = {"cafile": sec.ca_file, "certfile": sec.cert_file, "keyfile": sec.key_file}
            lines += [f"{key} {Path(str(path)).resolve()}" for key, path in files.items()]
            lines.append("tls_version tlsv1.2")
        return lines

    def refused_connections(self) -> int:
        """Clients the broker turned away for bad credentials (from its log)."""
        return self.log_text().count("disconnected, not authorised")

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self.stop()
                raise DdnnError(f"mosquitto exited with code {code} at startup:\n{self.log_text()}")
            try:
                socket.create_connection((self.url_host, self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise DdnnError(
                        f"mosquitto did not accept connections on {self.url} within "
                        f"{self.startup_timeout:.1f} s:\n{self.log_text()}"
                    ) from None
                time.sleep(0.02)

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after `stop_timeout`); keeps the temp dir."""
        if self._finalizer is not None:
            self._finalizer()  # runs _reap once
            self._finalizer = None
        self._proc = None

    def restart(self) -> None:
        """Stop and start again on the same port: clients see a broker outage."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop and remove the temp dir (config and logs)."""
        self.stop()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __repr__(self) -> str:
        return f"MosquittoBroker({self.url}, {'running' if self.running else 'stopped'})"
