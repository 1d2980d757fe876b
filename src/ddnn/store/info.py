"""A stored model described: what `ddnn info` shows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ddnn.evaluate.communication import CommCosts
from ddnn.store.artifact import open_model


def model_info(folder: str | Path) -> dict[str, Any]:
    stored = open_model(folder)
    model = stored.load()
    spec = model.spec
    parts = []
    for part in stored.parts:
        module = model.devices[int(part[6:])] if part.startswith("device") else model.upper[part]
        path = stored.weights_path(part)
        parts.append(
            {
                "part": part,
                "tier": module.spec.tier,
                "input": list(module.in_shape),
                "output": list(module.out_shape),
                "parameters": sum(p.numel() for p in module.parameters()),
                "file_bytes": path.stat().st_size,
                "exit": module.spec.exit is not None,
            }
        )
    costs = CommCosts.of(model)
    return {
        "name": stored.name,
        "version": stored.version,
        "parent": stored.parent,
        "created": stored.created,
        "devices": spec.devices,
        "classes": list(spec.class_names),
        "input_shape": list(spec.input_shape),
        "view_shape": list(spec.view_shape),
        "normalization": {"mean": spec.mean, "std": spec.std},
        "thresholds": spec.thresholds,
        "parts": parts,
        "bytes": {
            "uplink_per_device": costs.uplink_bytes,
            "scores_per_device": costs.score_bytes,
            "raw_per_device": costs.raw_bytes,
        },
        "test": stored.metrics.get("test"),
    }


def model_info_text(info: dict[str, Any]) -> str:
    from ddnn.tables import markdown_table

    lines = [
        f"{info['name']} v{info['version']} (created {info['created']})"
        + (f", fine-tuned from {info['parent']}" if info["parent"] else ""),
        f"devices: {info['devices']}; input {info['input_shape']}, each device sees "
        f"{info['view_shape']}; classes: {', '.join(info['classes'])}",
        f"thresholds: {info['thresholds'] or 'none (single exit)'}",
        f"bytes per device: uplink {info['bytes']['uplink_per_device']}, scores "
        f"{info['bytes']['scores_per_device']}, raw input {info['bytes']['raw_per_device']}",
        "",
        markdown_table(
            ("part", "tier", "input", "output", "parameters", "file bytes", "exit"),
            [
                (
                    p["part"],
                    p["tier"],
                    p["input"],
                    p["output"],
                    p["parameters"],
                    p["file_bytes"],
                    "yes" if p["exit"] else "no",
                )
                for p in info["parts"]
            ],
        ),
    ]
    test = info.get("test")
    if test:
        acc = test["accuracy"]
        lines += [
            "",
            f"test: overall {acc['overall']:.4f}, cloud-only {acc['cloud_only']:.4f}, local exit "
            f"fraction {test['local_exit_fraction']:.3f}, "
            f"{test['bytes_per_sample']:.1f} bytes/sample",
        ]
    return "\n".join(lines)
