"""Layer-by-layer timing of a stored model, in a child process of its own.

`time_layers` starts `python -m ddnn.planning.timer` (optionally in a cgroup via its
`preexec_fn`), hands it one JSON line on stdin, waits for `loaded`, lets the caller set the CPU
quota, says `go` and reads one JSON object back. The child runs one sample at a time on one
torch thread, as a device or server process does (runtime/cli.py), and times every layer of
every repeat, so a sample's time is the sum of its own layers' times. The quota comes after the
imports because importing torch at 2 % of a core takes minutes; only the timed loop counts.

Each layer's wall time and its process CPU time are both kept ("samples_ms", "cpu_ms"): an
emulated device's inference takes its wall time plus (slowdown - 1) x its CPU time
(emulation/cpu.py `dilated`), so the profile composes the same two (planning/profile.py); wall
time alone x the slowdown multiplied every moment of waiting for a core on a busy host by 50.

`idle_factor`: after each sample the child sleeps that multiple of the sample's CPU time, as an
emulated device sleeps out its dilation and waits on the network between samples. Back to
back, a small section runs from warm caches: measured here, deep's device section took 0.6 ms
of CPU back to back and 1.2-1.6 ms after 10-60 ms of idling.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from ddnn.errors import DdnnError

log = logging.getLogger(__name__)

WHERE = ("device", "server")


def time_layers(
    run_dir: str,
    where: str,
    *,
    repeats: int,
    warmup: int = 10,
    idle_factor: float = 0.0,
    preexec_fn: Callable[[], None] | None = None,
    on_loaded: Callable[[], None] | None = None,
    timeout_s: float = 1800.0,
) -> list[dict[str, Any]]:
    """[{section, layer, samples_ms}] in execution order: the device section only ("device"),
    or every section ("server": the device section too, for the server-only deployment).
    `on_loaded` runs once the child has imported torch and loaded the model, before it warms up
    and times: the moment to apply a CPU quota, so the imports are not slowed by it."""
    if where not in WHERE:
        raise ValueError(f"where must be one of {WHERE}, got {where!r}")
    config = {"run": str(run_dir), "where": where, "repeats": repeats, "warmup": warmup,
              "idle_factor": idle_factor}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "ddnn.planning.timer"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=preexec_fn,  # the cgroup placement precedes exec
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(config) + "\n")
        proc.stdin.flush()
        if proc.stdout.readline().strip() == "loaded" and on_loaded is not None:
            on_loaded()
        out, err = proc.communicate("go\n", timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise DdnnError(f"timing {run_dir} on the {where} took over {timeout_s:.0f} s") from exc
    except BrokenPipeError:  # it died before reading its config: stderr says why
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        tail = "\n".join(err.strip().splitlines()[-8:])
        raise DdnnError(f"timing {run_dir} on the {where} failed:\n{tail}")
    return json.loads(out)["layers"]


def _layer_name(section: Any, i: int) -> str:
    if i < len(section.spec.layers):
        layer = section.spec.layers[i]
        return f"{i}: {layer.type}" + (f" {layer.out}" if layer.out else "")
    return f"{i}"


def _steps(model: Any, where: str) -> list[tuple[str, str, Callable[[Any], Any]]]:
    """(section, layer, function) in the order one sample meets them."""
    from ddnn.model.fusion import fuse

    steps: list[tuple[str, str, Callable[[Any], Any]]] = []
    spec = model.spec
    dev = spec.device_section
    if dev is not None:
        section = model.devices[0]
        steps.append((dev.name, "input", model.normalize))
        steps += [(dev.name, _layer_name(section, i), b) for i, b in enumerate(section.body)]
        if section.exit_head is not None:
            steps.append((dev.name, "exit", _keep(section.exit_head)))
    if where == "device":
        return steps
    for name, section in model.upper.items():
        s = section.spec

        def enter(x: Any, s: Any = s) -> Any:
            x = model.normalize(x) if s.input == "raw" else x
            return fuse(x.unsqueeze(1), None, s.aggregate)  # one device row: [1, 1, ...]

        steps.append((name, "input", enter))
        steps += [(name, _layer_name(section, i), b) for i, b in enumerate(section.body)]
        if section.exit_head is not None:
            steps.append((name, "exit", _keep(section.exit_head)))
    return steps


def _keep(head: Any) -> Callable[[Any], Any]:
    """An exit head's call that passes the features on (the next section reads them)."""

    def run(x: Any) -> Any:
        head(x)
        return x

    return run


def _child() -> None:
    """The timing child: config on stdin, {"layers": [...]} on stdout."""
    import torch

    from ddnn.store.artifact import open_model

    torch.set_num_threads(1)
    config = json.loads(sys.stdin.readline())
    model = open_model(config["run"]).load().eval()
    steps = _steps(model, config["where"])
    sys.stdout.write("loaded\n")
    sys.stdout.flush()
    sys.stdin.readline()  # "go": the parent has set the quota
    raw = torch.rand(1, *model.spec.view_shape, generator=torch.Generator().manual_seed(0))
    first_raw = {s.name for s in model.spec.sections if s.input == "raw"}
    wall: list[list[float]] = [[] for _ in steps]
    cpu: list[list[float]] = [[] for _ in steps]
    idle = float(config.get("idle_factor", 0.0))
    with torch.inference_mode():
        for r in range(config["warmup"] + config["repeats"]):
            x, took = raw, 0
            for i, (section, _, fn) in enumerate(steps):
                if section in first_raw and steps[i][1] == "input":
                    x = raw  # Big-Little's big net reads the raw view
                c0, t0 = time.process_time_ns(), time.perf_counter_ns()
                x = fn(x)
                t1, c1 = time.perf_counter_ns(), time.process_time_ns()
                took += c1 - c0
                if r >= config["warmup"]:
                    wall[i].append((t1 - t0) / 1e6)
                    cpu[i].append((c1 - c0) / 1e6)
            if idle > 0:
                time.sleep(took / 1e9 * idle)
    layers = [
        {"section": s, "layer": name, "samples_ms": w, "cpu_ms": c}
        for (s, name, _), w, c in zip(steps, wall, cpu, strict=True)
    ]
    sys.stdout.write(json.dumps({"layers": layers}))


if __name__ == "__main__":
    _child()
