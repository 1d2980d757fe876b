"""Request checks shared by the server and the edge: each refusal is a typed error carrying the
status of its error reply."""

from __future__ import annotations

import numpy as np
import pytest

from ddnn.runtime.checks import (
    BadInput,
    MalformedRequest,
    UnknownModel,
    check_device_report,
    read_request,
    server_inputs,
)
from ddnn.runtime.wire import Encoding, Request, Status, encode_frame, encode_tensor, request_topic

SCORES = encode_tensor(np.zeros(4, np.float32), Encoding.FLOAT32, name="scores")


def report(**changes) -> Request:
    fields = dict(request_id=1, model="m", model_version=1, device_id="dev0", frame_id=0)
    fields.update(changes)
    return Request(**fields, section=1, tensors=(SCORES,))


def check(request: Request) -> None:
    check_device_report(request, version=1, devices=["dev0", "dev1"], row=(2,), classes=4)


def test_undecodable_or_misrouted_messages_are_malformed():
    topic = request_topic("m", 1, "dev0")
    with pytest.raises(MalformedRequest) as bad:
        read_request(topic, b"\x00garbage")
    assert bad.value.status is Status.MALFORMED
    with pytest.raises(MalformedRequest, match="does not match its topic"):
        read_request(request_topic("m", 1, "dev1"), encode_frame(report()))
    assert read_request(topic, encode_frame(report())) == report()


def test_a_device_report_for_another_version_is_an_unknown_model():
    with pytest.raises(UnknownModel, match="v2 is not served by this edge") as err:
        check(report(model_version=2))
    assert err.value.status is Status.UNKNOWN_MODEL


def test_a_report_from_an_unknown_device_or_of_the_wrong_shape_is_bad_input():
    with pytest.raises(BadInput, match="unknown device 'dev9'") as err:
        check(report(device_id="dev9"))
    assert err.value.status is Status.BAD_INPUT
    wrong = encode_tensor(np.zeros(3, np.float32), Encoding.FLOAT32, name="scores")
    with pytest.raises(BadInput, match="'scores' must have shape"):
        check_device_report(
            Request(1, "m", 1, "dev0", 0, 1, (wrong,)),
            version=1, devices=["dev0"], row=(2,), classes=4,
        )  # fmt: skip
    check(report())


def test_server_inputs_need_x_of_the_sections_shape_and_someone_present():
    x = encode_tensor(np.zeros((2, 3), np.float32), Encoding.FLOAT32, name="x")
    nobody = encode_tensor(np.zeros(2, np.float32), Encoding.FLOAT32, name="present")
    with pytest.raises(BadInput, match="needs 'x'"):
        server_inputs(report(), (2, 3))
    with pytest.raises(BadInput, match="expects"):
        server_inputs(Request(1, "m", 1, "dev0", 0, 1, (x,)), (2, 4))
    with pytest.raises(BadInput, match="no device"):
        server_inputs(Request(1, "m", 1, "dev0", 0, 1, (x, nobody)), (2, 3))
    got, present = server_inputs(Request(1, "m", 1, "dev0", 0, 1, (x,)), (2, 3))
    assert got.shape == (2, 3) and present is None
