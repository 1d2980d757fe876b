"""Build the C agent: check for libmosquitto first (one line naming the Debian package when the
header or the library is missing), then the generated Makefile's `agent` target. A build is
kept per device section and rebuilt when the model's weights change."""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

from ddnn.agent.generate import BINARY, sources_current, write_agent
from ddnn.errors import DdnnError
from ddnn.export.cexport import MANIFEST, build, model_id

log = logging.getLogger(__name__)

HEADER = "mosquitto.h"


def _package(cc: str) -> str:
    """The Debian package with libmosquitto's header and link library for this compiler."""
    arch = ":arm64" if "aarch64" in Path(cc).name else ""
    return f"libmosquitto-dev{arch}"


def check_libmosquitto(cc: str = "cc", header: str = HEADER) -> None:
    """Compile and link a two-line program against libmosquitto; a missing header or library
    raises a DdnnError naming the package to install."""
    if shutil.which(cc) is None:
        raise DdnnError(f"{cc!r} is not installed: install it (Debian: gcc) to build the agent")
    program = f"#include <{header}>\nint main(void) {{ return mosquitto_lib_init(); }}\n"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe.c"
        src.write_text(program)
        compiled = subprocess.run(
            [cc, "-c", str(src), "-o", str(Path(tmp) / "probe.o")], capture_output=True, check=False
        )
        if compiled.returncode != 0:
            raise DdnnError(
                f"libmosquitto's header ({header}) is missing for {cc}: install "
                f"{_package(cc)} (apt-get install {_package(cc)})"
            )
        linked = subprocess.run(
            [cc, str(Path(tmp) / "probe.o"), "-o", str(Path(tmp) / "probe"), "-lmosquitto"],
            capture_output=True,
            check=False,
        )
        if linked.returncode != 0:
            raise DdnnError(
                f"the libmosquitto library is missing for {cc}: install {_package(cc)} "
                f"(apt-get install {_package(cc)})"
            )


def build_agent(
    out_dir: str | Path, cc: str = "cc", build_dir: str = ".", ldflags: str | None = None
) -> Path:
    """Build the agent written by `write_agent`; returns the binary's path."""
    check_libmosquitto(cc)
    return build(out_dir, ("agent",), cc=cc, build_dir=build_dir, ldflags=ldflags) / BINARY


def ensure_agent(run_dir: str | Path, device: int, folder: str | Path, cc: str = "cc") -> Path:
    """The agent binary for device section `device` in `folder`, written and built unless a
    build of the same weights is there. Locked: `ddnn run` starts several agents at once."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        binary = folder / BINARY
        manifest = folder / MANIFEST
        current = manifest.is_file() and json.loads(manifest.read_text())["model"] == model_id(
            run_dir, device
        )
        if not (current and binary.is_file() and sources_current(folder)):
            write_agent(run_dir, folder, device)
            build_agent(folder, cc)
            log.info("built the C agent in %s", folder)
        return binary
