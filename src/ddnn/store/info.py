"""A stored model described: what `ddnn info` shows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ddnn.evaluate.communication import CommCosts
from ddnn.store.artifact import load_model, part_names, read_spec_doc


def model_info(folder: str | Path) -> dict[str, Any]:
    doc = read_spec_doc(folder)
    model = load_model(folder)
    spec = model.spec
    parts = []
    for part in part_names(model):
        module = model.devices[int(part[6:])] if part.startswith("device") else model.upper[part]
        path = Path(folder) / "weights" / f"{part}.safetensors"
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
        "name": doc["name"],
        "version": doc["version"],
        "parent": doc["parent"],
        "created": doc["created"],
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
        "test": doc.get("metrics", {}).get("test"),
    }


def model_info_text(info: dict[str, Any]) -> str:
    from ddnn.evaluate.tables import markdown_table

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
