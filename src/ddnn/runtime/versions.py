"""The server's live model table: versions loaded, made current, rolled back and unloaded
while the server keeps answering.

A request names its model and version and is answered by exactly that version while it is
loaded, so a device that has not switched yet keeps getting answers from the sections that
match its own. A version stops being current when another is deployed, and is unloaded only
once no device (or edge) still uses it: none whose last request named it, and no request
named it for `grace_s` seconds. A device silent for `PIN_GRACES` grace periods no longer holds
its version (it may be gone for good). Workers read `models` without a lock: every
change builds a new dict and swaps it in (copy on write).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ddnn.errors import DdnnError
from ddnn.runtime.executor import SectionExecutor
from ddnn.runtime.server import ModelDB
from ddnn.store.artifact import StoredModel, open_model

log = logging.getLogger(__name__)

DEFAULT_GRACE_S = 30.0
PIN_GRACES = 10  # a silent device holds its version loaded for this many grace periods
Key = tuple[str, int]


class DeployRefused(DdnnError):
    """A deploy or rollback the server will not do; the message says why."""


@dataclass(frozen=True)
class Change:
    """What a deploy or rollback did: `model` now uses `version` (before: `previous`)."""

    model: str
    version: int
    previous: int
    stored: StoredModel
    message: str


def describe(stored: StoredModel) -> str:
    return f"{stored.name} v{stored.version}"


class LiveModels(ModelDB):
    """A `ModelDB` whose versions change at run time (`deploy`, `rollback`, `unload_idle`)."""

    def __init__(self, run_dirs: list[str | Path], *, grace_s: float = DEFAULT_GRACE_S) -> None:
        if not run_dirs:
            raise DdnnError("give the server at least one model folder")
        self.grace_s = grace_s
        self.models: dict[Key, SectionExecutor] = {}
        self.stored: dict[Key, StoredModel] = {}
        self.known: dict[Key, Path] = {}  # every version ever loaded: a deploy by number
        self.current: dict[str, int] = {}
        self.history: dict[str, list[int]] = {}  # versions in the order they became current
        self.last_used: dict[Key, float] = {}  # a request named it, or it stopped being current
        # (model, device) -> (the version it last named, when)
        self.devices: dict[tuple[str, str], tuple[int, float]] = {}
        self._lock = threading.Lock()
        for folder in run_dirs:
            stored = open_model(folder)
            self._add(stored, SectionExecutor(stored.load()))
            log.info("serving %s from %s", describe(stored), folder)
        for name in {n for n, _ in self.models}:
            newest = max(v for n, v in self.models if n == name)
            self.current[name] = newest
            self.history[name] = [newest]

    # -- reading ---------------------------------------------------------------------------

    def used(self, name: str, version: int, device: str) -> None:
        """A request named `name` v`version`: the version is in use (called per request)."""
        now = time.monotonic()
        self.last_used[(name, version)] = now
        self.devices[(name, device)] = (version, now)

    def known_versions(self, name: str) -> list[int]:
        return sorted(v for n, v in self.known if n == name)

    def served(self) -> list[str]:
        return [f"{n} v{v}" for n, v in sorted(self.models)]

    # -- changing --------------------------------------------------------------------------

    def deploy(self, folder: str | Path) -> Change:
        """Load the stored model in `folder` (every weight file checked against its hash) and
        make it current. DeployRefused, with the old version still serving, when it is corrupt,
        of a model this server does not serve, or does not fit the devices' input."""
        try:
            stored = open_model(folder)
        except DdnnError as exc:
            raise DeployRefused(f"refused {folder}: {exc}") from None
        with self._lock:
            self._check_fits(stored)
            key = (stored.name, stored.version)
            loaded = self.stored.get(key)
            if loaded is not None and loaded.hashes != stored.hashes:
                raise DeployRefused(
                    f"refused {folder}: {describe(stored)} is already served from "
                    f"{loaded.folder} with other weights; a new model needs a new version "
                    "(ddnn train --from makes version + 1)"
                )
        executor = None
        if loaded is None:  # load outside the lock: it reads and checks every weight file
            try:
                executor = SectionExecutor(stored.load())
            except DdnnError as exc:
                raise DeployRefused(f"refused {folder}: {exc}") from None
        with self._lock:
            if executor is not None and key not in self.models:
                self._add(stored, executor)
            return self._make_current(stored, self.history[stored.name] + [stored.version])

    def deploy_version(self, name: str, version: int) -> Change:
        """Make a version this server has loaded before current again (reloading it if it was
        unloaded); DeployRefused listing the known versions otherwise."""
        if name not in self.current:
            raise DeployRefused(f"this server does not serve {name}; it serves {self.served()}")
        folder = self.known.get((name, version))
        if folder is None:
            known = ", ".join(f"v{v}" for v in self.known_versions(name))
            raise DeployRefused(
                f"{name} v{version} is unknown here; known versions: {known} (deploy a new "
                "version by its folder: ddnn deploy RUN_DIR)"
            )
        return self.deploy(folder)

    def rollback(self, name: str) -> Change:
        """Back to the version that was current before the present one."""
        history = self.history.get(name)
        if history is None:
            raise DeployRefused(f"this server does not serve {name}; it serves {self.served()}")
        if len(history) < 2:
            raise DeployRefused(f"{name} v{history[-1]} is the only version deployed: no rollback")
        previous = history[-2]
        folder = self.known[(name, previous)]
        if (name, previous) not in self.models:
            self.deploy(folder)  # reload, checked again; then undo the history entry it made
        with self._lock:
            return self._make_current(self.stored[(name, previous)], history[:-1])

    def in_use(self, now: float) -> set[Key]:
        """Versions some device or edge heard from lately last named."""
        pin = PIN_GRACES * self.grace_s
        return {(n, v) for (n, _), (v, t) in list(self.devices.items()) if now - t < pin}

    def unload_idle(self, now: float | None = None) -> list[Key]:
        """Unload versions that are not current, that no device still uses and that no request
        named for `grace_s`."""
        now = time.monotonic() if now is None else now
        with self._lock:
            used = self.in_use(now)
            idle = [
                key
                for key in self.models
                if self.current.get(key[0]) != key[1]
                and key not in used
                and now - self.last_used.get(key, now) >= self.grace_s
            ]
            if idle:
                self.models = {k: e for k, e in self.models.items() if k not in idle}
                for key in idle:
                    del self.stored[key]
                self.__dict__.pop("request_limit", None)  # ModelDB's cached property
        for name, version in idle:
            log.info("unloaded %s v%d: no device used it for %.0f s", name, version, self.grace_s)
        return idle

    # -- under the lock --------------------------------------------------------------------

    def _add(self, stored: StoredModel, executor: SectionExecutor) -> None:
        key = (stored.name, stored.version)
        self.models = {**self.models, key: executor}
        self.stored[key] = stored
        self.known[key] = stored.folder
        self.__dict__.pop("request_limit", None)

    def _make_current(self, stored: StoredModel, history: list[int]) -> Change:
        name, version = stored.name, stored.version
        previous = self.current[name]
        if previous != version:
            self.last_used[(name, previous)] = time.monotonic()  # the grace period starts now
        self.current[name] = version
        self.history[name] = history if history[-1:] != history[-2:-1] else history[:-1]
        message = f"{name} v{version} is current (was v{previous})"
        log.info("%s", message)
        return Change(name, version, previous, stored, message)

    def _check_fits(self, stored: StoredModel) -> None:
        """The devices and the edge keep sending what the current version takes: a new version
        must take the same input, from as many devices, with the same classes."""
        name = stored.name
        if name not in self.current:
            raise DeployRefused(
                f"refused {stored.folder}: this server does not serve model {name}; it serves "
                f"{self.served()} (start a server for it with ddnn serve)"
            )
        now = self.stored[(name, self.current[name])].spec
        new = stored.spec
        for what, old_value, new_value in (
            ("devices", now.devices, new.devices),
            ("view shape", now.view_shape, new.view_shape),
            ("classes", now.num_classes, new.num_classes),
            ("sections", [s.name for s in now.sections], [s.name for s in new.sections]),
        ):
            if old_value != new_value:
                raise DeployRefused(
                    f"refused {stored.folder}: it does not match {name} v{self.current[name]}: "
                    f"{what} {new_value} instead of {old_value}; its devices could not switch"
                )
