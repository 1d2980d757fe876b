"""The secure broker: passwords per identity, an ACL that keeps a device to its own topics, TLS;
and the access files the tiers connect with."""

from __future__ import annotations

import json
import logging
import os
import stat
import time

import numpy as np
import pytest

from ddnn.errors import DdnnError
from ddnn.runtime.broker import MosquittoBroker, find_mosquitto, parse_broker_url
from ddnn.runtime.client import Requester
from ddnn.runtime.config import DeploymentConfig, DeviceConfig, ServerConfig
from ddnn.runtime.device import DeviceClient
from ddnn.runtime.security import BrokerAccess, acl_text, provision
from ddnn.runtime.server import InferenceServer, ModelDB
from ddnn.runtime.transport import create_transport
from ddnn.runtime.wire import (
    Encoding,
    ErrorFrame,
    Reply,
    Request,
    Status,
    decode_frame,
    encode_frame,
    encode_tensor,
    reply_topic,
    request_topic,
)
from ddnn.store.artifact import read_spec, read_spec_doc


@pytest.fixture
def secure_broker(tmp_path):
    try:
        find_mosquitto()
    except DdnnError as exc:
        pytest.skip(str(exc))
    setup = provision(tmp_path / "secure", ["dev0", "dev1"])
    with MosquittoBroker(security=setup) as broker:
        yield broker, setup


def connect(setup, identity: str, client: str = "paho"):
    access = setup.access(identity)
    return create_transport(access.url, mqtt_client=client, **access.transport_kwargs())


def raw_request(run, device: str, rid: int) -> tuple[str, Request]:
    """A server-only request (the raw view) as `device` would send it: (topic, request)."""
    spec, doc = read_spec(run), read_spec_doc(run)
    view = np.zeros((1, *spec.view_shape), np.float32)  # [1, C, h, w]
    x = encode_tensor(view, Encoding.UNIT8, name="x")
    req = Request(rid, str(doc["name"]), int(doc["version"]), device, rid, 0, (x,))
    return request_topic(req.model, 0, device), req


def test_acl_keeps_each_identity_to_its_topics():
    text = acl_text(["server"], ["edge"])
    assert "pattern write dd/q/+/+/%u" in text and "pattern read dd/a/%u" in text
    server_part = text.split("user server")[1].split("user edge")[0]
    assert "topic read dd/q/#" in server_part and "topic write dd/a/#" in server_part
    assert "topic read dd/e/q/#" in text.split("user edge")[1]
    assert "$SYS" not in text and "topic readwrite" not in text


def test_access_files_are_private_and_checked(tmp_path):
    path = tmp_path / "a" / "dev0.json"
    BrokerAccess("mqtts://127.0.0.1:8883", "dev0", "pw", "ca.crt").save(path)
    (tmp_path / "a" / "ca.crt").write_text("a CA\n")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = BrokerAccess.load(path)
    assert loaded.ca_file == str(tmp_path / "a" / "ca.crt")  # relative to the file
    assert loaded.transport_kwargs()["tls"] == {"ca_certs": loaded.ca_file}
    with pytest.raises(DdnnError, match="ddnn broker --secure"):
        BrokerAccess.load(tmp_path / "missing.json")
    path.write_text(json.dumps({"url": "mqtt://h:1", "pasword": "typo"}))
    with pytest.raises(DdnnError, match="must be a JSON object"):
        BrokerAccess.load(path)
    with pytest.raises(DdnnError, match="not mqtts"):
        BrokerAccess("mqtt://h:1", "d", "p", "ca.crt").transport_kwargs()
    assert parse_broker_url("mqtts://broker.local") == ("broker.local", 8883)


def test_reprovisioning_keeps_passwords_and_the_ca(tmp_path):
    if not find_mosquitto():
        pytest.skip("no mosquitto")
    first = provision(tmp_path / "s", ["dev0"])
    ca = first.ca_file.read_bytes()
    second = provision(tmp_path / "s", ["dev0", "dev1"])
    assert second.identities["dev0"] == first.identities["dev0"]
    assert "dev1" in second.identities and second.ca_file.read_bytes() == ca
    assert "dev0:$7$" in second.password_file.read_text()  # hashed, never plain
    assert first.identities["dev0"][1] not in second.password_file.read_text()
    third = provision(tmp_path / "s", ["dev1"])
    assert "dev0" not in third.identities


def test_roles_do_not_clash_and_new_names_keep_the_ca(tmp_path):
    with pytest.raises(DdnnError, match="both a device and a edge"):
        provision(tmp_path / "clash", ["edge", "dev1"])
    first = provision(tmp_path / "s", ["dev0"])
    ca = first.ca_file.read_bytes()
    cert = first.cert_file.read_bytes()
    again = provision(tmp_path / "s", ["dev0"], hostnames=["192.168.1.10"])
    assert again.ca_file.read_bytes() == ca  # devices keep trusting the broker
    assert again.cert_file.read_bytes() != cert  # a new certificate names the new address
    assert again.share_group == first.share_group and again.share_group.startswith("ddnn-")


def test_access_file_without_its_ca_is_a_clear_error(tmp_path):
    BrokerAccess("mqtts://h:8883", "dev0", "pw", "ca.crt").save(tmp_path / "dev0.json")
    with pytest.raises(DdnnError, match=r"ca_file .*ca\.crt does not exist; copy it"):
        BrokerAccess.load(tmp_path / "dev0.json")


def test_an_access_file_names_the_identity(tmp_path):
    import argparse

    from ddnn.runtime.cli import _identity

    BrokerAccess("mqtt://h:1", "cam1", "pw").save(tmp_path / "cam1.json")
    access = BrokerAccess.load(tmp_path / "cam1.json")
    assert _identity(argparse.Namespace(id=None), access, "dev0") == "cam1"
    with pytest.raises(DdnnError, match="differs from the access file's identity 'cam1'"):
        _identity(argparse.Namespace(id="cam2"), access, "dev0")
    assert _identity(argparse.Namespace(id=None), None, "dev0") == "dev0"


def test_a_device_in_the_servers_group_cannot_steal_requests(secure_broker, tiny_ddnn):
    """Mosquitto gives a shared group's messages round-robin to its members and drops those a
    member may not read; the servers' group is secret, so a device cannot join it."""
    _, setup = secure_broker
    with (
        connect(setup, "server") as st,
        connect(setup, "dev0") as d0,
        connect(setup, "dev1") as d1,
    ):
        group = setup.access("server").share_group
        server = InferenceServer(
            st, ModelDB([tiny_ddnn]), ServerConfig(workers=1, group=group)
        ).start()
        stolen: list[str] = []
        d0.subscribe("$share/ddnn-servers/dd/q/+/+/+", lambda t, p: stolen.append(t))
        requester = Requester(d1, "dev1").start()
        try:
            answers = []
            for rid in range(1, 11):
                topic, request = raw_request(tiny_ddnn, "dev1", rid)
                pending, _ = requester.send(topic, request)
                answers.append(requester.wait(rid, pending, 5.0))
        finally:
            requester.close()
            server.close()
    assert all(isinstance(a, Reply) for a in answers) and not stolen


def test_wrong_credentials_plain_tcp_and_unknown_ca_are_refused(secure_broker, mqtt_client):
    broker, setup = secure_broker
    good = setup.access("dev0")
    client = {"mqtt_client": mqtt_client}
    with pytest.raises(DdnnError, match=r"refused the connection.*check username"):
        create_transport(
            good.url, username="dev0", password="wrong", tls={"ca_certs": good.ca_file}, **client
        )
    assert broker.refused_connections() == 1  # and mosquitto's log says so
    with pytest.raises(DdnnError, match="certificate is not trusted"):
        create_transport(good.url, username="dev0", password=good.password, **client)
    with pytest.raises(DdnnError, match="does it need TLS"):
        create_transport(good.url.replace("mqtts", "mqtt"), connect_timeout=1.0, **client)


def test_a_device_is_served_through_the_secure_broker(secure_broker, tiny_ddnn, mqtt_client):
    _, setup = secure_broker
    with (
        connect(setup, "server", mqtt_client) as st,
        connect(setup, "dev0", mqtt_client) as dt,
    ):
        server = InferenceServer(st, ModelDB([tiny_ddnn]), ServerConfig(workers=1)).start()
        client = DeviceClient(
            dt, tiny_ddnn, DeviceConfig(device_id="dev0", mode="server-only", deadline_ms=5000)
        ).start()
        try:
            spec = read_spec(tiny_ddnn)
            record = client.infer(np.zeros(spec.view_shape, np.float32), frame_id=1)
        finally:
            client.close()
            server.close()
        assert record.status == "ok" and record.offloaded and record.predicted >= 0
        assert "ddnn_mqtt_connects_total 1" in server.metrics.render()


def test_a_device_cannot_act_for_another_device(
    secure_broker, tiny_ddnn, caplog, make_inbox, mqtt_client
):
    _, setup = secure_broker
    with (
        connect(setup, "server", mqtt_client) as st,
        connect(setup, "dev0", mqtt_client) as d0,
        connect(setup, "dev1", mqtt_client) as d1,
    ):
        server = InferenceServer(st, ModelDB([tiny_ddnn]), ServerConfig(workers=1)).start()
        spy, own = make_inbox(), make_inbox()
        d0.subscribe(reply_topic("dev1"), spy)  # granted, but the broker delivers nothing
        d0.subscribe("dd/#", spy)
        requester = Requester(d1, "dev1").start()
        try:
            with caplog.at_level(logging.ERROR, logger="ddnn.runtime"):
                topic, forged = raw_request(tiny_ddnn, "dev1", 7)
                d0.publish(topic, encode_frame(forged))  # a request in dev1's name
                d0.publish(reply_topic("dev1"), b"forged reply")
                d1.subscribe("dd/a/dev1/#", own)
                # dev1's own request is answered, and only dev1 sees the answer
                topic, request = raw_request(tiny_ddnn, "dev1", 8)
                pending, _ = requester.send(topic, request)
                answer = requester.wait(8, pending, 5.0)
            assert isinstance(answer, Reply) and answer.request_id == 8
            spy.assert_empty(0.3)
            own.get(1.0)  # dev1 got its reply (and no forged one before it)
            own.assert_empty(0.1)
            assert d0.stats["publishes_refused"] == 2
            refusals = [r.getMessage() for r in caplog.records if "refused a publish" in r.message]
            assert any("dd/q/" in m and "dev1" in m and "as dev0" in m for m in refusals)
            assert server.metrics.counter("requests_received_total") == 1  # only dev1's own
        finally:
            requester.close()
            server.close()


def test_secure_deployment_with_an_edge(tiny_multiview, tmp_path):
    from ddnn.runtime.runner import run_deployment

    config = DeploymentConfig(samples=12, mode="device+server", secure=True)
    report = run_deployment(tiny_multiview, tmp_path / "out", config)
    c = report["configurations"]["device+server"]
    assert report["secure"] and c["samples"] == 12
    assert c["lost"] == 0
    out = tmp_path / "out"
    records = [
        json.loads(x) for x in (out / "records-device+server.jsonl").read_text().splitlines()
    ]
    # the edge and the server answered through the ACL (not only the devices' local fallback)
    assert any(r["status"] == "ok" and r["offloaded"] for r in records)
    assert not [p.name for p in (out / "logs").glob("*.log") if "refused" in p.read_text()]
    access = json.loads((out / "secure" / "access" / "dev0.json").read_text())
    assert access["url"].startswith("mqtts://") and access["username"] == "dev0"


def test_a_forged_error_cannot_reach_another_device_on_the_secure_broker(
    secure_broker, tiny_ddnn, make_inbox
):
    """The report's case, through Mosquitto's ACL: dev1 waits on 4242 and gets its real answer."""
    _, setup = secure_broker
    with (
        connect(setup, "server") as st,
        connect(setup, "dev0") as d0,
        connect(setup, "dev1") as d1,
    ):
        server = InferenceServer(st, ModelDB([tiny_ddnn]), ServerConfig(workers=1)).start()
        own = make_inbox()
        d0.subscribe(reply_topic("dev0"), own)
        requester = Requester(d1, "dev1").start()
        try:
            request = raw_request(tiny_ddnn, "dev1", 4242)[1]
            d0.publish(request_topic(request.model, 0, "dev0"), encode_frame(request))  # first
            pending, _ = requester.send(request_topic(request.model, 0, "dev1"), request)
            answer = requester.wait(4242, pending, 5.0)
            _, error = own.get(5.0)
        finally:
            requester.close()
            server.close()
    assert isinstance(answer, Reply) and answer.status is Status.OK
    assert decode_frame(error) == ErrorFrame(4242, Status.MALFORMED, decode_frame(error).message)
    assert requester.dropped_replies == 0


def _expired_certificate(folder, signer=None):
    """A certificate that expired yesterday, signed by `signer` (key, cert) or by itself;
    returns (cert file, key file)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    sign_key, issuer = signer if signer else (key, None)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=10))
        .not_valid_after(now - datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(sign_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    cert_file, key_file = folder / "expired.crt", folder / "expired.key"
    cert_file.write_bytes(cert.public_bytes(pem))
    key_file.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


def test_a_relative_folder_works_from_any_working_directory(tmp_path, monkeypatch):
    """As the README writes it: `ddnn broker --secure secure/`; mosquitto runs in its own temp
    dir, so every path in its config must be absolute."""
    try:
        find_mosquitto()
    except DdnnError as exc:
        pytest.skip(str(exc))
    monkeypatch.chdir(tmp_path)
    setup = provision("secure", ["cam0"])
    assert setup.folder.is_absolute()
    with MosquittoBroker(security=setup) as broker, connect(setup, "cam0") as transport:
        assert transport.connected and broker.running


def test_a_refused_provisioning_leaves_no_half_made_folder(tmp_path):
    with pytest.raises(DdnnError, match="both a device and a edge"):
        provision(tmp_path / "new", ["edge", "cam1"])
    assert not (tmp_path / "new").exists()
    with pytest.raises(DdnnError, match="does not exist"):
        provision(tmp_path / "new", ["cam0"], cert_file="x.crt", key_file="x.key", ca_file="c")
    assert not (tmp_path / "new").exists()


def test_a_broker_that_does_not_start_removes_the_folder_it_made(tmp_path):
    import socket

    from ddnn.cli import build_parser
    from ddnn.runtime.cli import cmd_broker

    try:
        find_mosquitto()
    except DdnnError as exc:
        pytest.skip(str(exc))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["broker", "--secure", str(tmp_path / "s"), "--devices", "cam0"]
        args = build_parser().parse_args([*argv, "--port", str(port)])
        with pytest.raises(DdnnError, match="in use"):
            cmd_broker(args)
    assert not (tmp_path / "s").exists()


def test_an_expired_certificate_is_reissued_if_ours_and_refused_if_given(tmp_path, caplog):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    first = provision(tmp_path / "s", ["cam0"])
    ca_bytes = first.ca_file.read_bytes()
    ca_key = serialization.load_pem_private_key(
        (first.ca_file.parent / "ca.key").read_bytes(), password=None
    )
    expired, _ = _expired_certificate(tmp_path, (ca_key, x509.load_pem_x509_certificate(ca_bytes)))
    first.cert_file.write_bytes(expired.read_bytes())
    with caplog.at_level(logging.WARNING, logger="ddnn.runtime.security"):
        again = provision(tmp_path / "s", ["cam0"])
    assert any("has expired: issuing a new one" in r.getMessage() for r in caplog.records)
    renewed = x509.load_pem_x509_certificate(again.cert_file.read_bytes())
    assert renewed.not_valid_after_utc > expired_after(expired)
    assert again.ca_file.read_bytes() == ca_bytes  # devices keep trusting the broker
    cert, key = _expired_certificate(tmp_path)
    with pytest.raises(DdnnError, match=r"^certificate .*expired\.crt has expired"):
        provision(tmp_path / "mine", ["cam0"], cert_file=cert, key_file=key, ca_file=cert)


def expired_after(path):
    from cryptography import x509

    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc


def test_a_client_cannot_take_over_another_identitys_client_id(secure_broker):
    """Mosquitto drops the older connection when a client id is reused; with the username as
    client id, cam1's credentials cannot knock dev0 off by using dev0's id."""
    _, setup = secure_broker
    with connect(setup, "dev0") as victim:
        dev1 = setup.access("dev1")
        with create_transport(
            dev1.url, client_id=victim.client_id, **dev1.transport_kwargs()
        ) as intruder:
            assert intruder.connected
            time.sleep(1.0)  # a take-over would drop dev0 now, and dev0's reconnect dev1
            assert victim.connected and victim.stats["connection_losses"] == 0
            assert intruder.stats["connection_losses"] == 0
