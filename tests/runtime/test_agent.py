"""The C device agent (ddnn.agent) against a real Mosquitto and an InferenceServer: the same
answers as the Python device, sample for sample; the aarch64 build under qemu; one line and a
non-zero exit for what it cannot use; no crash on malformed replies. Its fault tests (broker
restart, server killed, server frozen) are in test_faults.py, parametrized over the device."""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings

from ddnn.agent.build import build_agent, check_libmosquitto, ensure_agent
from ddnn.agent.generate import write_agent
from ddnn.bench.fuzz import headed_bytes, mutated_frames, random_bytes
from ddnn.data.datasets import create_dataset
from ddnn.emulation.cpu import SLOWDOWN_ENV
from ddnn.errors import DdnnError
from ddnn.export.fileformat import write_inputs
from ddnn.model.views import device_view
from ddnn.runtime.config import DeviceConfig, ServerConfig
from ddnn.runtime.device import DeviceClient
from ddnn.runtime.mqtt import MqttTransport
from ddnn.runtime.protocol import reply_topic, request_topic
from ddnn.runtime.server import InferenceServer, ModelDB
from ddnn.runtime.wire import FrameError, decode_frame
from ddnn.store.artifact import read_spec

pytestmark = pytest.mark.integration

SAMPLES = 24
# what must agree with the Python device (times differ, of course)
SAME = (
    "device", "frame_id", "predicted", "exit_index", "local_predicted", "offloaded", "status",
    "frame_bytes", "packet_bytes", "label", "missing", "message", "threshold",
)  # fmt: skip


@pytest.fixture(scope="module")
def agent(tiny_ddnn, tmp_path_factory) -> Path:
    try:
        check_libmosquitto()
    except DdnnError as exc:
        pytest.skip(str(exc))
    return ensure_agent(tiny_ddnn, 0, tmp_path_factory.mktemp("agent"))


def views(run: Path, n: int = SAMPLES) -> tuple[np.ndarray, list[int]]:
    """The first n synthetic test samples as device views [n, C, h, w], and their labels."""
    test = create_dataset("synthetic").test.head(n)
    x = test.images.float().div(255)
    return device_view(x, read_spec(run), 0).numpy(), [int(y) for y in test.labels]


def feed(folder: Path, xs: np.ndarray, labels: list[int]) -> list[str]:
    """The agent's input flags: the views and a frames file (frame id, label per sample)."""
    write_inputs(folder / "inputs.bin", xs)
    (folder / "frames.txt").write_text("".join(f"{i} {y}\n" for i, y in enumerate(labels)))
    return ["--inputs", str(folder / "inputs.bin"), "--frames", str(folder / "frames.txt")]


def run_agent(command: list[str], *args: str, timeout: float = 60) -> tuple[list[dict], str]:
    """Run the agent to the end; its records (stdout) and its stderr."""
    done = subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()], done.stderr


@pytest.fixture
def served(tiny_ddnn, broker):
    """An InferenceServer for tiny_ddnn on the broker; yields the broker URL."""
    transport = MqttTransport.from_url(broker.url)
    server = InferenceServer(transport, ModelDB([tiny_ddnn]), ServerConfig(workers=1)).start()
    try:
        yield broker.url
    finally:
        server.close()
        transport.close()


def python_records(run: Path, url: str, xs: np.ndarray, labels: list[int], **config) -> list:
    transport = MqttTransport.from_url(url)
    try:
        with DeviceClient(transport, run, DeviceConfig(**config)) as device:
            pairs = enumerate(zip(xs, labels, strict=True))
            return [device.infer(x, i, y).to_dict() for i, (x, y) in pairs]
    finally:
        transport.close()


def same(ours: list[dict], theirs: list[dict]) -> None:
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert {k: a[k] for k in SAME} == {k: b[k] for k in SAME}


@pytest.mark.parametrize("threshold", [None, 0.0], ids=["calibrated", "offload-all"])
def test_the_agent_answers_as_the_python_device(agent, tiny_ddnn, served, tmp_path, threshold):
    xs, labels = views(tiny_ddnn)
    extra = [] if threshold is None else ["--threshold", str(threshold)]
    ours, _ = run_agent([str(agent), "--broker", served], *feed(tmp_path, xs, labels), *extra)
    given = None if threshold is None else (threshold,)
    theirs = python_records(tiny_ddnn, served, xs, labels, thresholds=given)
    same(ours, theirs)
    assert any(r["offloaded"] for r in ours)
    assert all(r["status"] == "ok" for r in ours)


def test_server_only_mode_matches_too(agent, tiny_ddnn, served, tmp_path):
    xs, labels = views(tiny_ddnn, 8)
    ours, _ = run_agent(
        [str(agent), "--broker", served, "--mode", "server-only"], *feed(tmp_path, xs, labels)
    )
    same(ours, python_records(tiny_ddnn, served, xs, labels, mode="server-only"))


def test_the_aarch64_build_runs_under_qemu_against_the_live_broker(
    agent, tiny_ddnn, served, tmp_path
):
    cross, qemu = "aarch64-linux-gnu-gcc", shutil.which("qemu-aarch64")
    if shutil.which(cross) is None or qemu is None:
        pytest.skip("needs gcc-aarch64-linux-gnu and qemu-user")
    try:
        check_libmosquitto(cross)
    except DdnnError as exc:
        pytest.skip(str(exc))
    binary = build_agent(agent.parent, cross, build_dir="arm64")
    assert b"aarch64" in subprocess.run(["file", str(binary)], capture_output=True).stdout
    xs, labels = views(tiny_ddnn, 12)
    flags = [*feed(tmp_path, xs, labels), "--threshold", "0.3"]
    # the multiarch loader (/lib/ld-linux-aarch64.so.1) finds the arm64 libmosquitto
    arm, _ = run_agent([qemu, "-L", "/", str(binary), "--broker", served], *flags, timeout=120)
    host, _ = run_agent([str(agent), "--broker", served], *flags)
    same(arm, host)


def test_an_emulated_slowdown_dilates_the_device_time_and_keeps_the_answers(
    agent, tiny_ddnn, served, tmp_path
):
    """DDNN_EMULATED_SLOWDOWN, as `ddnn run --device-profile` sets it: each inference sleeps
    (slowdown - 1) x its CPU time, inside the device time; the answers stay the same."""
    xs, labels = views(tiny_ddnn)
    command = [str(agent), "--broker", served, *feed(tmp_path, xs, labels)]
    host, _ = run_agent(command)
    slow, err = run_agent(["env", f"{SLOWDOWN_ENV}=20", *command])
    same(slow, host)
    ratio = np.median([r["device_ms"] for r in slow]) / np.median([r["device_ms"] for r in host])
    # 20x, loosely: the machine is shared, and each sleep's wake-up (and the caches it cools)
    # adds to an inference of ~0.1 ms; measured 19-37x on a busy 2-core host
    assert 10 < ratio < 60, ratio
    assert SLOWDOWN_ENV not in err


def test_a_slowdown_that_is_not_a_number_is_ignored_with_one_warning(
    agent, tiny_ddnn, served, tmp_path
):
    xs, labels = views(tiny_ddnn, 4)
    command = [str(agent), "--broker", served, *feed(tmp_path, xs, labels)]
    records, err = run_agent(["env", f"{SLOWDOWN_ENV}=fast", *command])
    assert err.count(f'ignoring {SLOWDOWN_ENV}="fast": not a number') == 1, err
    same(records, run_agent(command)[0])


# -- bad input: one line, a non-zero exit --------------------------------------------------------


def one_line_failure(command: list[str], code: int) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert done.returncode == code, done.stderr
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    return done.stderr


def write_access(tmp_path: Path, doc: dict) -> str:
    path = tmp_path / "dev0.json"
    path.write_text(json.dumps(doc))
    return str(path)


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--broker", "http://127.0.0.1:1883"], "not supported"),
        (["--broker", "memory://hub"], "not supported"),
        (["--broker", "mqtt://127.0.0.1:99999"], "bad port"),
        (["--broker", "mqtt://127.0.0.1:1883", "--threshold", "2"], "--threshold"),
        (["--broker", "mqtt://127.0.0.1:1883", "--mode", "edge"], "--mode"),
        ([{"url": "mqtt://127.0.0.1:1883", "token": "x"}], "unknown key token"),
        ([{"url": "mqtts://127.0.0.1:8883", "ca_file": "nowhere.crt"}], "does not exist"),
        ([{"url": "mqtt://127.0.0.1:1883", "ca_file": "dev0.json"}], "not mqtts://"),
        ([{"url": "mqtt://127.0.0.1:1883", "password": "p"}], "no username"),
        ([{"username": "dev0"}], "no url"),
    ],
)
def test_what_the_agent_cannot_use_is_refused_in_one_line(agent, tmp_path, flags, says):
    if isinstance(flags[0], dict):
        flags = ["--auth", write_access(tmp_path, flags[0])]
    inputs = feed(tmp_path, np.zeros((1, 1, 28, 28), np.float32), [0])
    err = one_line_failure([str(agent), *flags, *inputs], 2)
    assert says in err


def test_an_input_of_another_model_is_refused_in_one_line(agent, tmp_path):
    write_inputs(tmp_path / "wrong.bin", np.zeros((2, 1, 20, 20), np.float32))
    err = one_line_failure(
        [str(agent), "--broker", "mqtt://127.0.0.1:1", "--inputs", str(tmp_path / "wrong.bin")], 2
    )
    assert "the model takes 784" in err


def test_an_unreachable_broker_is_one_line(agent, tmp_path):
    flags = feed(tmp_path, np.zeros((1, 1, 28, 28), np.float32), [0])
    err = one_line_failure([str(agent), "--broker", "mqtt://127.0.0.1:1", *flags], 1)
    assert "cannot connect to the MQTT broker at mqtt://127.0.0.1:1" in err


def test_a_model_the_agent_cannot_run_is_refused(tiny_multiview, tmp_path):
    with pytest.raises(DdnnError, match="single-device models only"):
        write_agent(tiny_multiview, tmp_path)


def test_a_missing_libmosquitto_names_the_debian_package():
    with pytest.raises(DdnnError, match=r"install libmosquitto-dev \(apt-get"):
        check_libmosquitto(header="mosquitto_not_here.h")
    with pytest.raises(DdnnError, match="libmosquitto-dev:arm64"):
        check_libmosquitto("aarch64-linux-gnu-gcc", header="mosquitto_not_here.h")


# -- malformed replies -----------------------------------------------------------------------------


def drawn(strategy, n: int) -> list[bytes]:
    found: list[bytes] = []

    @settings(
        max_examples=n, database=None, phases=[Phase.generate], deadline=None,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    @given(strategy)
    def collect(value: bytes) -> None:
        found.append(value)

    collect()
    return found


def malformed_answers(request_id: int, frames: list[bytes]) -> list[bytes]:
    """The fuzz frames aimed at a request: its id in bytes 4..12 where there is room; only
    those the Python decoder rejects."""
    out = []
    for data in frames:
        if len(data) >= 12:
            data = data[:4] + request_id.to_bytes(8, "little") + data[12:]
        try:
            decode_frame(data)
        except FrameError:
            out.append(data)
    return out


def test_malformed_replies_never_crash_the_agent(agent, tiny_ddnn, broker, tmp_path):
    """No server: a spy answers each request with the decoder fuzz tests' malformed frames
    (random, behind a valid header, mutated valid frames), aimed at the request's id. The agent
    keeps going and answers every sample locally at its deadline."""
    samples = 8
    frames = [*drawn(random_bytes, 60), *drawn(headed_bytes, 60), *drawn(mutated_frames, 120)]
    spy = MqttTransport.from_url(broker.url)
    requests: queue.Queue[bytes] = queue.Queue()
    spy.subscribe(request_topic("ddnn", 1, "fuzz"), lambda t, p: requests.put(p))
    xs, labels = views(tiny_ddnn, samples)
    command = [str(agent), "--broker", broker.url, "--id", "fuzz", "--threshold", "0"]
    log = (tmp_path / "agent.log").open("w")
    proc = subprocess.Popen(
        [*command, "--deadline-ms", "600", *feed(tmp_path, xs, labels)],
        stdout=subprocess.PIPE, stderr=log, text=True,
    )  # fmt: skip
    sent = 0
    try:
        for _ in range(samples):
            rid = decode_frame(requests.get(timeout=30)).request_id
            for data in malformed_answers(rid, frames):
                spy.publish(reply_topic("fuzz"), data)
                sent += 1
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        spy.close()
        log.close()
    err = (tmp_path / "agent.log").read_text()
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["frame_id"] for r in records] == list(range(samples))
    assert all(r["status"] == "degraded" and r["message"] == "deadline passed" for r in records)
    assert sent > 100 * samples // 2
    assert "malformed reply" in err
    assert f"{sent} malformed" in err  # every one seen and refused


def test_ddnn_run_deploys_the_c_agent_as_its_devices(agent, tiny_ddnn, tmp_path):
    from ddnn.runtime.config import DeploymentConfig
    from ddnn.runtime.runner import run_deployment

    config = DeploymentConfig(devices=2, samples=12, mode="device+server", device_impl="c")
    report = run_deployment(tiny_ddnn, tmp_path, config)
    assert report["device_impl"] == "c"
    assert report["configurations"]["device+server"]["samples"] == 12
    logs = sorted((tmp_path / "logs").glob("device-*-dev*.log"))
    assert len(logs) == 2 and all("ddnn_agent: dev" in p.read_text() for p in logs)
    records = (tmp_path / "records-device+server.jsonl").read_text().splitlines()
    assert sorted(json.loads(r)["frame_id"] for r in records) == list(range(12))


def test_the_agent_uses_an_access_file_on_a_tls_password_acl_broker(agent, tiny_ddnn, tmp_path):
    """The access file `ddnn broker --secure` writes: TLS with its CA, username and password;
    the ACL lets dev0 publish only as dev0, so answers prove all three were used."""
    from ddnn.runtime.broker import MosquittoBroker, find_mosquitto
    from ddnn.runtime.security import provision

    try:
        find_mosquitto()
    except DdnnError as exc:
        pytest.skip(str(exc))
    setup = provision(tmp_path / "secure", ["dev0"])
    with MosquittoBroker(security=setup) as broker:
        access = setup.access("server")
        transport = MqttTransport.from_url(access.url, **access.transport_kwargs())
        config = ServerConfig(workers=1, group=access.share_group)
        try:
            with InferenceServer(transport, ModelDB([tiny_ddnn]), config):
                xs, labels = views(tiny_ddnn, 6)
                auth = ["--auth", str(setup.access_file("dev0")), "--threshold", "0"]
                ours, _ = run_agent([str(agent), *auth], *feed(tmp_path, xs, labels))
        finally:
            transport.close()
        assert broker.url.startswith("mqtts://")
    assert [r["status"] for r in ours] == ["ok"] * 6
    assert all(r["device"] == "dev0" and r["exit_index"] == 1 for r in ours)
