"""The tier configs: one source of defaults, flags that round-trip, values checked on build."""

from __future__ import annotations

import argparse

import pytest

from ddnn.errors import DdnnError
from ddnn.runtime.config import (
    ConnectionConfig,
    DeploymentConfig,
    DeviceConfig,
    EdgeConfig,
    ServerConfig,
    StreamConfig,
    add_flags,
    from_args,
    to_argv,
)

CONFIGS = [
    ServerConfig(workers=3, max_batch=8, max_wait_ms=1.5, queue_limit=9, inline=False),
    EdgeConfig(device_ids=("cam1", "cam2"), identity="e1", frame_deadline_ms=120.0),
    DeviceConfig(device_id="cam1", index=1, engine="onnx", mode="server-only", deadline_ms=300),
    StreamConfig(samples=5, offset=1, stride=2, rate=4.0, records="r.jsonl"),
    DeploymentConfig(devices=2, samples=9, mode="server-only", workers=1, secure=True),
    DeploymentConfig(mqtt_client="libmosquitto"),
    DeploymentConfig(device_impl="c", device_profile="pi3", link="wifi"),  # the agent dilates too
    ConnectionConfig(mqtt_client="libmosquitto"),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__)
def test_a_config_survives_its_command_line(config):
    parser = argparse.ArgumentParser()
    add_flags(parser, type(config))
    assert from_args(type(config), parser.parse_args(to_argv(config))) == config
    assert from_args(type(config), parser.parse_args([])) == type(config)()


@pytest.mark.parametrize(
    ("build", "named"),
    [
        (lambda: ServerConfig(workers=0), "--workers"),
        (lambda: EdgeConfig(frame_deadline_ms=0), "--frame-deadline-ms"),
        (lambda: DeviceConfig(mode="edge-only"), "device+server, server-only"),
        (lambda: DeviceConfig(deadline_ms=-1), "--deadline-ms"),
        (lambda: StreamConfig(stride=0), "--stride"),
        (lambda: DeploymentConfig(secure=True, broker="mqtt://h:1"), "drop --broker"),
        # issue 15: `ddnn edge --devices 'dev0,#'` started, and '#' widened its topic filters
        (lambda: EdgeConfig(device_ids=("dev0", "#")), "--devices"),
        (lambda: EdgeConfig(identity="a/b"), "--id"),
        (lambda: DeviceConfig(device_id=""), "--id"),
        (lambda: DeviceConfig(device_id="cam+1"), "--id"),
        (lambda: ConnectionConfig(mqtt_client="mosquitto"), "--mqtt-client"),
        (lambda: DeploymentConfig(mqtt_client="pahoo"), "paho, libmosquitto"),
    ],
)
def test_a_bad_value_is_refused_naming_what_is_wrong(build, named):
    with pytest.raises(DdnnError, match=named.replace("+", r"\+")):
        build()


def test_configs_are_frozen_and_keyword_only():
    with pytest.raises(TypeError):
        ServerConfig(2)  # type: ignore[misc]
    with pytest.raises(AttributeError):
        ServerConfig().workers = 3  # type: ignore[misc]


def test_an_empty_device_id_on_the_command_line_is_refused_not_replaced_by_dev0(tiny_ddnn, capsys):
    """issue 15: `ddnn device --id ''` silently became dev0."""
    from ddnn.cli import main

    code = main(["device", str(tiny_ddnn), "--id", "", "--broker", "mqtt://127.0.0.1:9"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "(--id)" in err[0] and err[0].endswith("got ''")
