"""The protocol's vocabulary: topic prefixes and layouts, the servers' group, device modes and
default identities. Every tier, the ACL and the benches take these from here, never a copy.

Topics are sent with every PUBLISH, so they are short: `dd/q/<model>/<section>/<device>` for
requests, `dd/a/<device>` for replies and errors, and requests to an edge under `dd/e/q/...`.
Live rollouts add `dd/c/...` (control: an operator's commands and their answers, the servers'
version announcements, the edges' switch frames) and `dd/f/...` (fetching a new version's files).
The layouts are spelled out only in this module, in each function's f-string rather than
through `requests_root` / `replies_root` (the server builds a topic per message: no extra
call); the ACL in `security` derives from those two, so a layout change here must change them
too (tests/runtime/test_protocol.py checks that they agree). This module imports no numpy or
torch: the CLI's argument parser reads it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ddnn.errors import DdnnError
from ddnn.runtime.fields import _uint, check_identifier

if TYPE_CHECKING:
    from ddnn.runtime.frames import Request

TOPIC_PREFIX = "dd"
EDGE_PREFIX = f"{TOPIC_PREFIX}/e"  # requests for the edge (local aggregator): their own prefix
SERVER_GROUP = "ddnn-servers"  # the shared subscription the servers of a site answer from

DEVICE_SERVER = "device+server"  # the device runs its section, offloads when unsure
SERVER_ONLY = "server-only"  # the conventional system: the device sends raw views
MODES = (DEVICE_SERVER, SERVER_ONLY)

SERVER_IDENTITY = "server"  # default MQTT identities (usernames on a secure broker)
EDGE_IDENTITY = "edge"
OPERATOR_IDENTITY = "operator"  # who may deploy and roll back (`ddnn deploy`)

FOLLOW_MQTT = "mqtt"  # a following device fetches a new version's files from a server
FOLLOW_PATH = "path"  # ... or reads them from the folder the server announced (shared disk)
FOLLOW_MODES = (FOLLOW_MQTT, FOLLOW_PATH)

_PREFIX = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")


def default_device_id(index: int) -> str:
    """The id of device `index` when none is given: dev0, dev1, ..."""
    return f"dev{index}"


def default_device_ids(count: int) -> list[str]:
    """dev0..dev<count-1>: a model's devices when their ids are not given."""
    return [default_device_id(i) for i in range(count)]


def _check_prefix(prefix: str) -> None:
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise DdnnError(f"topic prefix {prefix!r} is invalid: use levels of [A-Za-z0-9._-]")


def requests_root(prefix: str = TOPIC_PREFIX) -> str:
    """The level every request topic under `prefix` starts with ('dd/q')."""
    _check_prefix(prefix)
    return f"{prefix}/q"


def replies_root(prefix: str = TOPIC_PREFIX) -> str:
    """The level every reply topic under `prefix` starts with ('dd/a')."""
    _check_prefix(prefix)
    return f"{prefix}/a"


def request_topic(model: str, section: int, device_id: str, *, prefix: str = TOPIC_PREFIX) -> str:
    """Where `device_id` publishes requests for `section` of `model`."""
    _check_prefix(prefix)
    check_identifier("model", model)
    section = _uint("section", section, 8)
    check_identifier("device_id", device_id)
    return f"{prefix}/q/{model}/{section}/{device_id}"


def topic_of(request: Request, *, prefix: str = TOPIC_PREFIX) -> str:
    """The topic `request` belongs on; its fields were checked when it was built or decoded,
    so a receiver compares this to the topic it arrived on instead of parsing that topic."""
    return f"{prefix}/q/{request.model}/{request.section}/{request.device_id}"


def reply_topic(device_id: str, *, prefix: str = TOPIC_PREFIX) -> str:
    """Where replies and errors for `device_id` are published."""
    _check_prefix(prefix)
    check_identifier("device_id", device_id)
    return f"{prefix}/a/{device_id}"


def request_filter(
    model: str, section: int, *, group: str | None = None, prefix: str = TOPIC_PREFIX
) -> str:
    """Filter for requests of every device; with `group`, a `$share` filter so that each
    request reaches exactly one of the group's workers."""
    topic = request_topic(model, section, "x", prefix=prefix)
    topic_filter = topic[: -len("x")] + "+"
    if group is None:
        return topic_filter
    check_identifier("group", group)
    return f"$share/{group}/{topic_filter}"


def model_filter(model: str, *, group: str | None = None, prefix: str = TOPIC_PREFIX) -> str:
    """Filter for requests to every section of `model` from every device: a server takes them
    all, so a section or version it does not serve still gets UNKNOWN_MODEL, not silence."""
    section_filter = request_filter(model, 0, group=group, prefix=prefix)
    return section_filter.removesuffix("/0/+") + "/+/+"


def parse_request_topic(topic: str, *, prefix: str = TOPIC_PREFIX) -> tuple[str, int, str]:
    """Inverse of `request_topic`: (model, section, device_id)."""
    _check_prefix(prefix)
    head = f"{prefix}/q/"
    parts = topic[len(head) :].split("/") if topic.startswith(head) else []
    if len(parts) != 3 or not re.fullmatch(r"[0-9]{1,3}", parts[1]):
        raise DdnnError(f"{topic!r} is not a request topic ({head}<model>/<section>/<device>)")
    model, section, device_id = parts[0], _uint("section", int(parts[1]), 8), parts[2]
    check_identifier("model", model)
    check_identifier("device_id", device_id)
    return model, section, device_id


# -- live rollout: control and fetch topics ------------------------------------------------------


def control_root(prefix: str = TOPIC_PREFIX) -> str:
    """The level every control topic under `prefix` starts with ('dd/c')."""
    _check_prefix(prefix)
    return f"{prefix}/c"


def fetch_root(prefix: str = TOPIC_PREFIX) -> str:
    """The level every fetch topic under `prefix` starts with ('dd/f')."""
    _check_prefix(prefix)
    return f"{prefix}/f"


def command_topic(operator: str, *, prefix: str = TOPIC_PREFIX) -> str:
    """Where `operator` publishes deploy and rollback commands; every server reads them."""
    check_identifier("operator", operator)
    return f"{control_root(prefix)}/q/{operator}"


def command_filter(*, prefix: str = TOPIC_PREFIX) -> str:
    """Every operator's commands. Not shared: each server of a site must load the version."""
    return f"{control_root(prefix)}/q/+"


def command_reply_topic(operator: str, *, prefix: str = TOPIC_PREFIX) -> str:
    """Where servers answer `operator`'s commands."""
    check_identifier("operator", operator)
    return f"{control_root(prefix)}/a/{operator}"


def version_topic(model: str, *, prefix: str = TOPIC_PREFIX) -> str:
    """Where servers announce the version of `model` that devices should move to."""
    check_identifier("model", model)
    return f"{control_root(prefix)}/v/{model}"


def switch_topic(model: str, *, prefix: str = TOPIC_PREFIX) -> str:
    """Where the edge of a multi-device `model` tells its devices at which frame to switch."""
    check_identifier("model", model)
    return f"{control_root(prefix)}/s/{model}"


def fetch_topic(model: str, requester: str, *, prefix: str = TOPIC_PREFIX) -> str:
    """Where `requester` (a device or an edge) asks for files of a version of `model`."""
    check_identifier("model", model)
    check_identifier("requester", requester)
    return f"{fetch_root(prefix)}/q/{model}/{requester}"


def fetch_filter(*, group: str | None = None, prefix: str = TOPIC_PREFIX) -> str:
    """Every fetch request; with `group`, shared: one server of the group answers each."""
    topic_filter = f"{fetch_root(prefix)}/q/+/+"
    if group is None:
        return topic_filter
    check_identifier("group", group)
    return f"$share/{group}/{topic_filter}"


def fetch_reply_topic(requester: str, *, prefix: str = TOPIC_PREFIX) -> str:
    """Where the chunks of `requester`'s fetches arrive."""
    check_identifier("requester", requester)
    return f"{fetch_root(prefix)}/a/{requester}"


def last_level(topic: str) -> str:
    """The identity a command or fetch topic ends with: whom to answer (the ACL lets only that
    identity publish there)."""
    return topic.rsplit("/", 1)[-1]
