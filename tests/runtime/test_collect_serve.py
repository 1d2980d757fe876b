"""`ddnn serve --collect` on a real Mosquitto: every answered request becomes one record."""

from __future__ import annotations

import numpy as np
import pytest

from ddnn.runtime.config import DeviceConfig, ServerConfig, to_argv
from ddnn.runtime.device import DeviceClient
from ddnn.runtime.metric_names import exposed
from ddnn.runtime.metrics import parse_samples
from ddnn.runtime.mqtt import MqttTransport
from ddnn.runtime.server import InferenceServer, ModelDB
from ddnn.store.artifact import read_spec
from ddnn.store.collected import load_collection

pytestmark = pytest.mark.integration


def stream(url: str, run, server_config: ServerConfig, device_config: DeviceConfig, n: int):
    """Serve `run` with `server_config`, send n samples from one device; (records, metrics)."""
    spec = read_spec(run)
    rng = np.random.default_rng(0)
    views = rng.random((n, *spec.view_shape), dtype=np.float32)
    with MqttTransport.from_url(url) as st, MqttTransport.from_url(url) as dt:
        server = InferenceServer(st, ModelDB([run]), server_config).start()
        client = DeviceClient(dt, run, device_config).start()
        try:
            records = [client.infer(v, frame_id=i) for i, v in enumerate(views)]
        finally:
            client.close()
            server.close()  # writes what the store buffered
    return records, parse_samples(server.metrics.render())


def test_each_answered_offload_is_one_record_with_the_clouds_answer(broker, tiny_ddnn, tmp_path):
    store = tmp_path / "store"
    device = DeviceConfig(device_id="dev0", thresholds=(0.0,), deadline_ms=5000)  # all go up
    records, metrics = stream(broker.url, tiny_ddnn, ServerConfig(collect=str(store)), device, 5)
    assert all(r.status == "ok" and r.offloaded for r in records)
    coll = load_collection(store)
    (group,) = coll.groups
    spec = read_spec(tiny_ddnn)
    assert (group.model, group.version, group.section, group.kind) == (spec.name, 1, 1, "features")
    cols = group.columns
    assert list(cols["frame_id"]) == [0, 1, 2, 3, 4]
    assert list(cols["cloud_pred"]) == [r.predicted for r in records]
    assert list(cols["cloud_exit"]) == [r.exit_index for r in records]
    assert set(np.unique(cols["x"])) <= {-1, 1}  # the binary features, as the device sent them
    assert np.isnan(cols["local_entropy"]).all() and (cols["local_pred"] == -1).all()
    assert metrics[exposed("collect_written_total")] == 5
    assert metrics[exposed("collect_full_total")] == 0


def test_server_only_requests_keep_the_raw_input_and_a_full_store_says_so(
    broker, tiny_ddnn, tmp_path
):
    store = tmp_path / "store"
    config = ServerConfig(collect=str(store), collect_max_count=3)
    device = DeviceConfig(device_id="dev0", mode="server-only", deadline_ms=5000)
    records, metrics = stream(broker.url, tiny_ddnn, config, device, 5)
    assert all(r.status == "ok" for r in records)  # a full store costs no answer
    (group,) = load_collection(store).groups
    assert group.kind == "raw" and len(group) == 3
    assert metrics[exposed("collect_full_total")] == 1
    assert metrics[exposed("collect_skipped_full_total")] == 2


def test_collection_is_off_by_default(broker, tiny_ddnn, tmp_path):
    assert ServerConfig().collect is None and "--collect" not in to_argv(ServerConfig())
    device = DeviceConfig(device_id="dev0", mode="server-only", deadline_ms=5000)
    with MqttTransport.from_url(broker.url) as st:
        assert InferenceServer(st, ModelDB([tiny_ddnn])).collector is None
    records, metrics = stream(broker.url, tiny_ddnn, ServerConfig(), device, 2)
    assert all(r.status == "ok" for r in records)
    assert not any("collect" in name for name in metrics)
    assert not list(tmp_path.iterdir())
