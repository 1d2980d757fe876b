"""The protocol's vocabulary: the topic scheme, and one owner for every prefix, mode and id."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ddnn
from ddnn.errors import DdnnError
from ddnn.runtime import codec, fields, frames, protocol, tensors, wire
from ddnn.runtime.protocol import (
    EDGE_PREFIX,
    MODES,
    TOPIC_PREFIX,
    default_device_ids,
    parse_request_topic,
    replies_root,
    reply_topic,
    request_filter,
    request_topic,
    requests_root,
    topic_of,
)
from ddnn.runtime.transport import topic_matches
from ddnn.runtime.wire import Request, encode_tensor

SRC = Path(ddnn.__file__).parent
VOCABULARY_NAMES = {
    "TOPIC_PREFIX", "EDGE_PREFIX", "EDGE_TOPIC_PREFIX", "SERVER_GROUP", "MODES", "CONFIGURATIONS",
    "DEVICE_SERVER", "SERVER_ONLY", "SERVER_IDENTITY", "EDGE_IDENTITY",
}  # fmt: skip
VOCABULARY_VALUES = {
    protocol.TOPIC_PREFIX, protocol.EDGE_PREFIX, requests_root(), replies_root(),
    protocol.SERVER_GROUP, *protocol.MODES, protocol.default_device_id(0),
}  # fmt: skip


# --- topics ----------------------------------------------------------------------------------


def test_topic_scheme() -> None:
    assert request_topic("ddnn", 1, "dev0") == "dd/q/ddnn/1/dev0"
    assert reply_topic("dev0") == "dd/a/dev0"
    assert request_filter("ddnn", 1) == "dd/q/ddnn/1/+"
    assert request_filter("ddnn", 2, group="workers") == "$share/workers/dd/q/ddnn/2/+"
    assert request_topic("m", 0, "d", prefix="lab/7") == "lab/7/q/m/0/d"
    assert topic_matches(request_filter("ddnn", 1), request_topic("ddnn", 1, "dev9"))
    assert not topic_matches(request_filter("ddnn", 1), request_topic("ddnn", 2, "dev9"))


def test_parse_request_topic_inverts_request_topic() -> None:
    assert parse_request_topic(request_topic("ddnn", 12, "cam-3")) == ("ddnn", 12, "cam-3")
    with pytest.raises(DdnnError, match="not a request topic"):
        parse_request_topic("dd/a/dev0")


def test_topic_helpers_reject_unsafe_names() -> None:
    for bad in ("", "a/b", "+", "#", "x" * 65, "-lead"):
        with pytest.raises(DdnnError, match="invalid"):
            reply_topic(bad)
    with pytest.raises(DdnnError, match="prefix"):
        reply_topic("dev0", prefix="$SYS")


def test_edge_requests_have_their_own_prefix_under_the_topic_prefix() -> None:
    assert EDGE_PREFIX != TOPIC_PREFIX and EDGE_PREFIX.startswith(TOPIC_PREFIX + "/")
    assert requests_root(EDGE_PREFIX) == "dd/e/q" and replies_root() == "dd/a"
    assert request_topic("m", 1, "d", prefix=EDGE_PREFIX).startswith(requests_root(EDGE_PREFIX))


@pytest.mark.parametrize("prefix", [TOPIC_PREFIX, EDGE_PREFIX, "lab/7"])
def test_the_acl_roots_agree_with_every_topic_layout(prefix: str) -> None:
    """The ACL is built from the roots, the topics from their own f-strings: the same layout."""
    q, a = requests_root(prefix), replies_root(prefix)
    tensor = encode_tensor(np.ones(2), name="x")
    assert request_topic("m", 1, "d", prefix=prefix) == f"{q}/m/1/d"
    assert topic_of(Request(1, "m", 1, "d", 0, 1, (tensor,)), prefix=prefix) == f"{q}/m/1/d"
    assert request_filter("m", 1, prefix=prefix) == f"{q}/m/1/+"
    assert parse_request_topic(f"{q}/m/1/d", prefix=prefix) == ("m", 1, "d")
    assert reply_topic("d", prefix=prefix) == f"{a}/d"


def test_default_device_ids_count_from_dev0() -> None:
    assert default_device_ids(4) == ["dev0", "dev1", "dev2", "dev3"]
    assert default_device_ids(0) == []
    assert MODES == ("device+server", "server-only")


def _vocabulary_outside_protocol(path: Path) -> list[str]:
    """Definitions of the vocabulary's names, and its values spelled as literals, in `path`."""
    found = []
    tree = ast.parse(path.read_text())
    pieces = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        found += [
            f"{path.name}:{node.lineno} defines {t.id}"
            for t in targets
            if isinstance(t, ast.Name) and t.id in VOCABULARY_NAMES
        ]
        if (
            isinstance(node, ast.Constant)
            and id(node) not in pieces
            and node.value in VOCABULARY_VALUES
        ):
            found.append(f"{path.name}:{node.lineno} spells {node.value!r}")
        if isinstance(node, ast.JoinedStr) and node.values:
            head = node.values[0]
            text = str(head.value) if isinstance(head, ast.Constant) else ""
            if text == "dev" or text.startswith(f"{TOPIC_PREFIX}/"):
                found.append(f"{path.name}:{node.lineno} builds f{head.value!r}...")
    return found


def test_the_protocol_vocabulary_has_one_owner() -> None:
    """Prefixes, layouts, modes and default ids are written only in runtime/protocol.py: a
    second copy (as device.py and security.py once had for the edge prefix) drifts."""
    found = [
        hit
        for path in sorted(SRC.rglob("*.py"))
        if path != SRC / "runtime" / "protocol.py"
        for hit in _vocabulary_outside_protocol(path)
    ]
    assert not found, "use ddnn.runtime.protocol instead:\n" + "\n".join(found)


@pytest.mark.parametrize("name", wire.__all__)
def test_wire_re_exports_each_name_from_its_one_home(name: str) -> None:
    homes = [m for m in (codec, fields, frames, protocol, tensors) if name in vars(m)]
    owners = {id(getattr(m, name)) for m in homes}
    assert homes and owners == {id(getattr(wire, name))}


def test_the_protocol_module_imports_no_numpy_or_torch() -> None:
    """The CLI's argument parser reads the modes from it; numpy alone costs ~0.1 s a command."""
    code = "import sys, ddnn.runtime.protocol; print(sorted({'numpy', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
