"""Live rollouts on a real Mosquitto: `ddnn deploy` loads a new version into a running server,
devices fetch their new section and switch between two samples, rollback, and every refusal
(corrupt, mismatched, unknown, not an operator) leaves the old version serving."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from ddnn.errors import DdnnError
from ddnn.rollout.operator import new_command, send_command
from ddnn.runtime.config import DeviceConfig, ServerConfig
from ddnn.runtime.control import RolloutControl
from ddnn.runtime.device import DeviceClient
from ddnn.runtime.metric_names import FETCH_FAILURES, SWITCHES
from ddnn.runtime.protocol import version_topic
from ddnn.runtime.rollout_wire import (
    DEPLOY,
    ROLLBACK,
    Announcement,
    ChunkHeader,
    Command,
    chunks,
    decode_chunk,
    decode_message,
    encode_message,
    pack_bundle,
    unpack_bundle,
)
from ddnn.runtime.security import acl_text, provision
from ddnn.runtime.server import InferenceServer
from ddnn.runtime.transport import create_transport
from ddnn.runtime.versions import DeployRefused, LiveModels
from ddnn.store.artifact import load_model, read_spec, save_model

from .test_deployment import views

pytestmark = pytest.mark.integration


class CountingModels(LiveModels):
    """Records the version every request named: the server answers with exactly that one."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.answered: Counter[int] = Counter()

    def used(self, name: str, version: int, device: str) -> None:
        super().used(name, version, device)
        self.answered[version] += 1


def two_versions(run: Path, root: Path) -> tuple[Path, Path]:
    """v1 (a copy of `run`: devices write fetched versions into their folder) and v2,
    fine-tuned in the crudest way: every weight nudged, saved through the store as version 2."""
    v1 = Path(shutil.copytree(run, root / "v1"))
    model = load_model(v1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return v1, save_model(model, root / "v2", version=2, parent=str(v1))


@pytest.fixture(scope="module")
def versions(tiny_ddnn, tmp_path_factory) -> tuple[Path, Path]:
    return two_versions(tiny_ddnn, tmp_path_factory.mktemp("versions"))


def device_folder(v1: Path, tmp_path: Path) -> Path:
    """The device's own copy of v1: what it fetches goes beside it."""
    return Path(shutil.copytree(v1, tmp_path / "device"))


class Site:
    """A server with live rollouts and one following device, each its own MQTT client."""

    def __init__(self, url: str, v1: Path, device_run: Path, follow: str = "mqtt") -> None:
        self.url = url
        self.server_t = create_transport(url)
        self.db = CountingModels([v1], grace_s=0.5)
        self.server = InferenceServer(self.server_t, self.db, ServerConfig(workers=1)).start()
        self.control = RolloutControl(
            self.server_t, self.db, metrics=self.server.metrics, chunk_bytes=2048,
            check_every_s=0.1,
        ).start()  # fmt: skip
        self.device_t = create_transport(url)
        config = DeviceConfig(device_id="dev0", thresholds=(0.0,), follow=follow)  # all go up
        self.device = DeviceClient(self.device_t, device_run, config).start()
        self.xs = views(8, read_spec(v1))[0]
        self.records: list = []
        self.frame = 0

    def stream(self, n: int) -> list:
        out = []
        for _ in range(n):
            out.append(self.device.infer(self.xs[self.frame % len(self.xs)], self.frame))
            self.frame += 1
        self.records += out
        return out

    def stream_until(self, done, limit: float = 20.0) -> None:
        deadline = time.monotonic() + limit
        while not done():
            assert time.monotonic() < deadline, "the device never got there"
            self.stream(1)
            time.sleep(0.01)

    def command(self, action: str, **fields) -> object:
        with create_transport(self.url) as t:
            return send_command(t, new_command(action, **fields), operator="operator")

    def close(self) -> None:
        self.device.close()
        self.control.close()
        self.server.close()
        self.device_t.close()
        self.server_t.close()


@pytest.fixture
def site(broker, versions, tmp_path):
    running = Site(broker.url, versions[0], device_folder(versions[0], tmp_path))
    yield running
    running.close()


def check_no_loss_no_duplicate_no_mix(site: Site) -> None:
    records = site.records
    assert [r.frame_id for r in records] == list(range(len(records)))  # none lost or repeated
    assert all(r.status == "ok" and r.offloaded and r.predicted >= 0 for r in records)
    # every sample's request named the device's own version, and the server answered each
    # with the version it named: device and server sections always matched
    assert Counter(r.version for r in records) == site.db.answered


# -- the rollout on a running site -----------------------------------------------------------


def test_a_deploy_mid_stream_switches_between_samples_with_nothing_lost_or_mixed(site, versions):
    site.stream(5)
    reply = site.command(DEPLOY, run=str(versions[1]))
    assert reply.ok and reply.current == {"ddnn": 2}, reply.message
    site.stream_until(lambda: site.device.version == 2)
    site.stream(5)
    check_no_loss_no_duplicate_no_mix(site)
    seen = [r.version for r in site.records]
    assert seen == sorted(seen) and seen[0] == 1 and seen[-1] == 2  # one switch, at a boundary
    switch = next(r for r in site.records if r.version == 2)
    assert switch.rollout == "switched v1 -> v2"
    assert site.device.follower.metrics.counter(SWITCHES.name) == 1
    # v1 is unloaded once no request named it for the grace period
    deadline = time.monotonic() + 10
    while ("ddnn", 1) in site.db.models:
        assert time.monotonic() < deadline, "v1 was never unloaded"
        time.sleep(0.1)


def test_rollback_returns_devices_and_server_to_the_previous_version(site, versions):
    assert site.command(DEPLOY, run=str(versions[1])).ok
    site.stream_until(lambda: site.device.version == 2)
    time.sleep(1.0)  # past the grace period: v1 is unloaded and must be loaded again
    reply = site.command(ROLLBACK)
    assert reply.ok and reply.current == {"ddnn": 1}, reply.message
    site.stream_until(lambda: site.device.version == 1)
    site.stream(3)
    check_no_loss_no_duplicate_no_mix(site)
    assert [r.version for r in site.records][-1] == 1


def test_corrupt_and_mismatched_artifacts_are_refused_and_the_old_version_keeps_serving(
    site, versions, tiny_multiview, tmp_path
):
    corrupt = Path(shutil.copytree(versions[1], tmp_path / "corrupt"))
    weights = corrupt / "weights" / "cloud.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    reply = site.command(DEPLOY, run=str(corrupt))
    assert not reply.ok and "tampered or corrupt" in reply.message
    reply = site.command(DEPLOY, run=str(tiny_multiview))
    assert not reply.ok and "does not serve model ddnn-multiview" in reply.message
    reply = site.command(DEPLOY, run=str(tmp_path / "nowhere"))
    assert not reply.ok and "is not a folder" in reply.message
    reply = site.command(DEPLOY, model="ddnn", version=7)
    assert not reply.ok and "known versions: v1" in reply.message and reply.known == (1,)
    site.stream(4)
    check_no_loss_no_duplicate_no_mix(site)
    assert {r.version for r in site.records} == {1} and site.db.current == {"ddnn": 1}


def test_a_device_that_cannot_fetch_keeps_its_version_and_says_why(site, versions):
    with create_transport(site.url) as t:  # what a server announcing a version it lacks sends
        note = Announcement("ddnn", 9, "0" * 64, str(versions[1]))
        t.publish(version_topic("ddnn"), encode_message(note))
        deadline = time.monotonic() + 10
        while site.device.follower.metrics.counter(FETCH_FAILURES.name) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    records = site.stream(3)
    assert all(r.version == 1 and r.status == "ok" for r in records)
    assert "kept v1: could not get ddnn v9" in records[0].rollout
    assert "not loaded on this server" in records[0].rollout
    assert records[1].rollout == ""  # said once


def test_a_device_started_after_a_deploy_moves_to_the_announced_version(site, versions, tmp_path):
    """The announcement is retained: a device that subscribes after the deploy (started or
    reconnected late) hears it at once, not only at the next deploy."""
    assert site.command(DEPLOY, run=str(versions[1])).ok
    deadline = time.monotonic() + 10
    while ("ddnn", 1) in site.db.models:  # no device named v1: unloaded after the grace period
        assert time.monotonic() < deadline, "v1 was never unloaded"
        time.sleep(0.1)
    late_run = device_folder(versions[0], tmp_path / "late")
    config = DeviceConfig(device_id="late", thresholds=(0.0,), follow="mqtt")
    with create_transport(site.url) as t, DeviceClient(t, late_run, config) as late:
        deadline = time.monotonic() + 20
        while late.follower.wants() != 2:  # fetched and prepared, without another deploy
            assert time.monotonic() < deadline, "the late device never heard of v2"
            time.sleep(0.05)
        records = [late.infer(site.xs[i], i) for i in range(4)]
        assert late.follower.metrics.counter(SWITCHES.name) == 1
        assert late.follower.metrics.counter(FETCH_FAILURES.name) == 0
    assert [r.frame_id for r in records] == [0, 1, 2, 3]  # none lost
    assert all(r.status == "ok" and r.offloaded and r.version == 2 for r in records)
    assert records[0].rollout == "switched v1 -> v2" and records[1].rollout == ""
    assert site.db.answered == Counter({2: 4})  # the server answered each with v2


def test_a_device_reading_from_the_announced_path_checks_the_spec_hash(broker, versions, tmp_path):
    site = Site(broker.url, versions[0], device_folder(versions[0], tmp_path), follow="path")
    try:
        note = Announcement("ddnn", 2, "0" * 64, str(versions[1]))  # a hash that does not match
        with create_transport(site.url) as t:
            t.publish(version_topic("ddnn"), encode_message(note))
        site.stream_until(lambda: site.device.follower.metrics.counter(FETCH_FAILURES.name) > 0)
        assert site.command(DEPLOY, run=str(versions[1])).ok  # the real announcement
        site.stream_until(lambda: site.device.version == 2)
        check_no_loss_no_duplicate_no_mix(site)
        assert any("does not match the hash" in r.rollout for r in site.records)
    finally:
        site.close()


# -- the operator's control topic on a secure broker ------------------------------------------


def test_acl_lets_only_operators_command():
    text = acl_text(["server"], ["edge"], ["operator"])
    operator_part = text.split("user operator")[1]
    assert "topic write dd/c/q/operator" in operator_part
    assert "dd/c/q" not in text.split("user server")[0]  # no pattern lets anyone command
    assert "topic read dd/c/q/#" in text.split("user server")[1].split("user edge")[0]


def test_only_the_operator_may_deploy_on_a_secure_broker(tmp_path, versions):
    from ddnn.runtime.broker import MosquittoBroker, find_mosquitto

    try:
        find_mosquitto()
    except DdnnError as exc:
        pytest.skip(str(exc))
    setup = provision(tmp_path / "secure", ["dev0"], tls=False)

    def connect(identity: str):
        access = setup.access(identity)
        return create_transport(access.url, **access.transport_kwargs())

    with MosquittoBroker(security=setup), connect("server") as server_t:
        db = LiveModels([versions[0]])
        with RolloutControl(server_t, db, group=setup.share_group):
            with connect("dev0") as t, pytest.raises(DdnnError, match="operator"):
                command = new_command(DEPLOY, run=str(versions[1]))
                send_command(t, command, operator="dev0", timeout_s=2)
            assert db.current == {"ddnn": 1}
            with connect("operator") as t:
                reply = send_command(
                    t, new_command(DEPLOY, run=str(versions[1])), operator="operator"
                )
            assert reply.ok and db.current == {"ddnn": 2}
            # the generated ACL lets the server announce retained and a device hear it later
            with connect("dev0") as t:
                heard: list[bytes] = []
                t.subscribe(version_topic("ddnn"), lambda _, payload: heard.append(payload))
                deadline = time.monotonic() + 5
                while not heard:
                    assert time.monotonic() < deadline, "no retained announcement"
                    time.sleep(0.02)
            assert decode_message(Announcement, heard[0]).version == 2
            assert server_t.stats["publishes_refused"] == 0


# -- the pieces, without a broker --------------------------------------------------------------


def test_bundles_and_chunks_round_trip_and_name_damage():
    bundle = pack_bundle(b'{"spec": 1}', {"device0": b"w" * 5000, "cloud": b""})
    assert unpack_bundle(bundle) == (b'{"spec": 1}', {"device0": b"w" * 5000, "cloud": b""})
    parts = chunks("abc", bundle, 1000)
    assert len(parts) == 6
    header, data = decode_chunk(parts[0])
    assert header == ChunkHeader("abc", 0, 6, len(bundle), header.sha256) and len(data) == 1000
    with pytest.raises(DdnnError, match="damaged bundle"):
        unpack_bundle(bundle[:-1])
    with pytest.raises(DdnnError, match="unknown action"):
        decode_message(Command, b'{"id": "x", "action": "explode"}')


def test_live_models_refuse_a_version_clash_and_list_what_rollback_can_reach(versions, tmp_path):
    v1, v2 = versions
    db = LiveModels([v1])
    with pytest.raises(DeployRefused, match="only version deployed"):
        db.rollback("ddnn")
    clash = save_model(load_model(v2), tmp_path / "clash", version=1)  # v1 with v2's weights
    with pytest.raises(DeployRefused, match=r"already served .* with other weights"):
        db.deploy(clash)
    assert db.deploy(v2).version == 2 and db.deploy_version("ddnn", 1).version == 1
    assert db.rollback("ddnn").version == 2 and db.current == {"ddnn": 2}


# -- several devices: the edge sees to it that they switch together -----------------------------


@pytest.fixture(scope="module")
def multiview_versions(tiny_multiview, tmp_path_factory) -> tuple[Path, Path]:
    return two_versions(tiny_multiview, tmp_path_factory.mktemp("mv-versions"))


def test_the_devices_of_a_multi_device_model_switch_at_the_frame_the_edge_announces(
    broker, multiview_versions, tmp_path
):
    from concurrent.futures import ThreadPoolExecutor

    from ddnn.runtime.config import EdgeConfig
    from ddnn.runtime.edge import EdgeAggregator

    v1, v2 = multiview_versions
    spec = read_spec(v1)
    transports = [create_transport(broker.url) for _ in range(6)]
    db = CountingModels([v1], grace_s=0.5)
    server = InferenceServer(transports[0], db, ServerConfig(workers=1))
    control = RolloutControl(transports[0], db, chunk_bytes=4096, check_every_s=0.1)
    # generous deadlines: the assertion is about versions, and a loaded CI host must not turn a
    # slow frame (the fetch and engine build run beside it) into a degraded one
    edge_config = EdgeConfig(
        follow="mqtt", switch_after_frames=5, thresholds=(0.0,), frame_deadline_ms=3000.0,
        upstream_deadline_ms=5000.0,
    )  # fmt: skip
    edge = EdgeAggregator(transports[1], device_folder(v1, tmp_path / "edge"), edge_config)
    devices = [
        DeviceClient(
            transports[2 + i],
            device_folder(v1, tmp_path / f"dev{i}"),
            DeviceConfig(
                device_id=f"dev{i}", index=i, thresholds=(0.0,), follow="mqtt", deadline_ms=10_000.0
            ),
        )
        for i in range(4)
    ]
    xs = [views(4, spec, i)[0] for i in range(4)]
    records: list = []
    services = [server, control, edge, *devices]
    try:
        for s in services:
            s.start()
        with ThreadPoolExecutor(4) as pool:

            def frame(f: int) -> list:
                jobs = [pool.submit(d.infer, xs[i][f % 4], f) for i, d in enumerate(devices)]
                out = [j.result() for j in jobs]
                records.extend(out)
                return out

            for f in range(5):
                frame(f)
            with create_transport(broker.url) as t:
                command = new_command(DEPLOY, run=str(v2))
                assert send_command(t, command, operator="operator").ok
            f = 5
            deadline = time.monotonic() + 30
            while not all(r.version == 2 for r in frame(f)):
                assert time.monotonic() < deadline, "the devices never switched"
                f += 1
                time.sleep(0.02)
            for after in range(f + 1, f + 4):
                frame(after)
    finally:
        for s in reversed(services):
            s.close()
        for t in transports:
            t.close()
    by_frame: dict[int, set[int]] = {}
    for r in records:
        by_frame.setdefault(r.frame_id, set()).add(r.version)
        assert r.status == "ok", r  # none lost, none answered locally for a version clash
    assert all(len(v) == 1 for v in by_frame.values()), by_frame  # never mixed within a frame
    assert len(records) == 4 * len(by_frame)  # one record per device and frame
    # the edge forwarded each frame once, with the frame's version, and was answered with it
    frames_per_version = Counter(next(iter(v)) for v in by_frame.values())
    assert frames_per_version == db.answered and set(db.answered) == {1, 2}


def test_ddnn_deploy_reports_the_servers_answer_and_fails_on_a_refusal(site, versions, capsys):
    from ddnn.cli import main

    url = site.url
    assert main(["deploy", str(versions[1]), "--broker", url]) == 0
    assert "ddnn v2 is current (was v1)" in capsys.readouterr().out
    assert main(["deploy", "--model", "ddnn", "--version", "5", "--broker", url]) == 2
    assert "known versions: v1, v2" in capsys.readouterr().err
    (last,) = site.stream(1)  # v1 or, once fetched, v2: the server knows which
    assert main(["deploy", "--status", "--broker", url]) == 0
    out = capsys.readouterr().out
    assert "serving ddnn v1, ddnn v2" in out and f"ddnn/dev0 v{last.version}" in out
    assert main(["deploy", "--broker", url]) == 2  # nothing to do
    assert "give one of" in capsys.readouterr().err


def test_a_version_stays_loaded_while_a_device_still_uses_it(versions):
    v1, v2 = versions
    db = LiveModels([v1], grace_s=1.0)
    db.used("ddnn", 1, "dev0")
    db.deploy(v2)
    later = time.monotonic() + 5  # past the grace period, within the device's pin
    assert db.unload_idle(later) == [] and ("ddnn", 1) in db.models  # dev0 still on v1
    db.used("ddnn", 2, "dev0")  # dev0 switched
    assert db.unload_idle(time.monotonic() + 5) == [("ddnn", 1)]
    assert db.served() == ["ddnn v2"] and db.known_versions("ddnn") == [1, 2]


def test_a_device_still_fetching_at_the_announced_frame_waits_for_it(versions, tmp_path):
    """Found in a full-suite run on a loaded host: the edge announced the switch frame while a
    device was still building the new version, so that device reported the frame with the old
    version, the edge refused it and the frame was answered degraded. The device now waits for
    the due fetch (up to the fetch timeout) at that frame instead."""
    from ddnn.runtime.memory import MemoryTransport
    from ddnn.runtime.protocol import switch_topic
    from ddnn.runtime.rollout import Follower
    from ddnn.runtime.rollout_wire import Switch, sha256_of
    from ddnn.store.artifact import SPEC_FILE

    def slow_prepare(folder: Path) -> Path:
        time.sleep(0.5)  # building the new engine takes longer than the frames before the switch
        return folder

    v2 = versions[1]
    transport = MemoryTransport()
    follower = Follower(
        transport, model="ddnn", version=1, identity="dev0", parts=("device0",),
        folder=tmp_path / "dev0", prepare=slow_prepare, mode="path", coordinated=True,
    )  # fmt: skip
    with transport, follower.start():
        spec = (v2 / SPEC_FILE).read_bytes()
        note = Announcement("ddnn", 2, sha256_of(spec), str(v2))
        transport.publish(version_topic("ddnn"), encode_message(note))
        transport.publish(switch_topic("ddnn"), encode_message(Switch("ddnn", 2, 3)))
        time.sleep(0.05)  # the switch is recorded; the fetch is still preparing
        assert follower.take(2) == (None, "")  # before the switch frame: the old version
        ready, note_text = follower.take(3)
        assert ready is not None and ready.version == 2 and note_text == ""
        assert follower.version == 2


def test_announcements_are_retained_and_a_follower_ignores_the_version_it_runs(
    versions, hub_name, make_inbox, tmp_path
):
    from ddnn.runtime.memory import MemoryTransport
    from ddnn.runtime.protocol import fetch_filter
    from ddnn.runtime.rollout import Follower

    v1, v2 = versions
    with (
        MemoryTransport(hub_name) as server_t,
        RolloutControl(server_t, LiveModels([v1])),
        MemoryTransport(hub_name) as op,
    ):
        assert send_command(op, new_command(DEPLOY, run=str(v2)), operator="operator").ok
        first = make_inbox()
        op.subscribe(version_topic("ddnn"), first)  # subscribed after the deploy
        assert decode_message(Announcement, first.get()[1]).version == 2
        assert send_command(op, new_command(ROLLBACK), operator="operator").ok
        assert decode_message(Announcement, first.get()[1]).version == 1  # live, as before
        fetches = make_inbox()
        op.subscribe(fetch_filter(), fetches)
        with MemoryTransport(hub_name) as late_t:
            late = make_inbox()
            late_t.subscribe(version_topic("ddnn"), late)  # the rollback replaced the deploy's
            assert decode_message(Announcement, late.get()[1]).version == 1
            late.assert_empty()
            follower = Follower(
                late_t, model="ddnn", version=1, identity="dev0", parts=("device0",),
                folder=tmp_path / "dev0", prepare=lambda folder: folder,
            )  # fmt: skip
            with follower:  # hears the retained v1, which it runs: it does nothing
                fetches.assert_empty(0.3)
                assert follower.take(0) == (None, "") and follower.version == 1
                assert follower.metrics.counter(FETCH_FAILURES.name) == 0
