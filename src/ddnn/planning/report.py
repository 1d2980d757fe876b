"""`ddnn profile`'s text: the layer times, the bytes at each cut and the exits per threshold,
with the predictions on the profile's link beside them."""

from __future__ import annotations

from typing import Any

from ddnn.planning.predict import predict_all
from ddnn.planning.records import RunProfile, ServerPath
from ddnn.runtime.protocol import SERVER_ONLY
from ddnn.tables import markdown_table

LAYER_COLUMNS = ("section", "layer", "where", "median ms", "p95 ms")
THRESHOLD_COLUMNS = (
    "T", "local exit", "accuracy", "payload B/sample", "MQTT B/sample", "T_total mean ms",
    "T_total p95 ms",
)  # fmt: skip


def _path(path: ServerPath) -> str:
    trip = path.round_trip
    return (
        f"round trip median {trip.median:.2f} / mean {trip.mean:.2f} / p95 {trip.p95:.2f} ms "
        f"(server's own {path.server.mean:.2f} ms mean)"
    )


def impl_text(device_impl: str) -> str:
    """What the device times are the times of."""
    if device_impl == "c":
        return "the C agent's (the generated C, timed in its harness as one call)"
    return "the Python device's (its torch layers)"


def profile_text(profile: RunProfile, link: Any) -> str:
    dev, cal = profile.device_profile, profile.calibration
    lines = [
        f"{profile.model} ({profile.run}) on {dev.get('name')} ({dev.get('gflops')} GFLOPS) "
        f"and {link.name} ({link.rate_mbit:g} Mbit/s, {link.delay_ms:g} ms one way)",
        f"calibration: host {cal.get('host_gflops', float('nan')):.3g} GFLOPS on "
        f"{cal.get('workload', '?')} at {cal.get('measured_at', '?')} "
        f"({cal.get('source', 'measured')}; median timing {cal.get('median_gflops', 0):.3g} "
        f"GFLOPS); device times: {impl_text(profile.device_impl)}, host wall + "
        f"({profile.slowdown:.3g} - 1) x host CPU time (the run's dilation); "
        f"{profile.repeats} samples one at a time, measured {profile.measured_at}",
        "server path (a real `ddnn serve` through a relay and a loopback broker, no link; "
        f"the planner adds the link to it): split {_path(profile.split_path)}; server-only "
        f"{_path(profile.server_only_path)}",
        "",
        markdown_table(LAYER_COLUMNS, profile.layer_rows()),
        "",
        markdown_table(
            ("section", "where", "median ms", "p95 ms", "mean ms"),
            [(s, w, t.median, t.p95, t.mean) for s, w, t in profile.section_times()],
        ),
        "",
        "per sample: device section on the device "
        + _stat(profile.device.summary())
        + "; upper sections' layers on the server, back to back (display only) "
        + _stat(profile.server.summary())
        + "; whole model's layers (server-only, display only) "
        + _stat(profile.server_only.summary()),
        "payload bytes past each section: "
        + ", ".join(f"{k} {v} B" for k, v in profile.exit_bytes.items()),
    ]
    for label, wire in (("offload", profile.split_wire), (SERVER_ONLY, profile.server_only_wire)):
        if wire is not None:
            lines.append(
                f"{label} request: frame {wire.request_frame} B, MQTT {wire.request_mqtt} B, "
                f"with TCP/IP {wire.request_wire} B; reply: {wire.reply_frame} / "
                f"{wire.reply_mqtt} / {wire.reply_wire} B (MQTT exact, TCP/IP derived)"
            )
    if profile.device_ram_bytes is not None:
        lines.append(
            f"device C export: {profile.device_ram_bytes} B static RAM, "
            f"{profile.device_flash_bytes} B weights (flash)"
        )
    preds = predict_all(profile, link.rate_mbit, link.delay_ms)
    split, only = preds[:-1], preds[-1]  # no device section: no split predictions
    rows: list[list[Any]] = []
    for i, r in enumerate(profile.thresholds):
        times = [None, None, None] if not split else [
            split[i].mqtt_bytes_per_sample, split[i].t_total_ms.mean, split[i].t_total_ms.p95
        ]  # fmt: skip
        rows.append([r.threshold, r.local_exit_fraction, r.accuracy, r.payload_bytes_per_sample,
                     *times])  # fmt: skip
    rows.append(
        [SERVER_ONLY, 0.0, only.accuracy, None, only.mqtt_bytes_per_sample,
         only.t_total_ms.mean, only.t_total_ms.p95]
    )  # fmt: skip
    lines += [
        "",
        f"exits per threshold on {profile.validation_samples} validation samples, "
        f"predicted on {link.name}:",
        "",
        markdown_table(THRESHOLD_COLUMNS, rows),
    ]
    return "\n".join(lines)


def _stat(s: dict[str, float]) -> str:
    return f"median {s['median']:.3g} ms, p95 {s['p95']:.3g} ms"
