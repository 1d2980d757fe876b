"""A thin ctypes binding of libmosquitto 2.x (Debian `libmosquitto1`): only what
`runtime.mosquitto` uses, typed once.

Why our own and not `pymosquitto` 0.4.1 (measured and compared in docs/runtime.md): its
`on_publish_v5` prototype drops the PUBACK reason code (libmosquitto passes
`(mosq, obj, mid, reason_code, props)`, it declares `(mosq, obj, mid, props)`), so "no matching
subscribers" and ACL refusals cannot be seen, and it decodes every property of every message
into Python objects by reading libmosquitto's private property struct. Here a property is read
only when asked for, through the library's own `mosquitto_property_read_*`.

The library is loaded on first use; a machine without it gets one line naming the package.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from ctypes import POINTER, c_bool, c_char_p, c_int, c_uint32, c_void_p

from ddnn.errors import DdnnError

SONAME = "libmosquitto.so.1"
PACKAGE = "libmosquitto1"

# mosquitto.h / mqtt_protocol.h
ERR_SUCCESS, ERR_NO_CONN, ERR_ERRNO, ERR_TLS = 0, 4, 14, 8
OPT_PROTOCOL_VERSION, OPT_TCP_NODELAY, OPT_TLS_USE_OS_CERTS = 1, 11, 13
PROTOCOL_V5 = 5
PROP_SUBSCRIPTION_IDENTIFIER = 11
PROP_MAXIMUM_PACKET_SIZE = 39
RC_NO_MATCHING_SUBSCRIBERS = 16
RC_DISCONNECT_NORMAL = 0


class Message(ctypes.Structure):
    """`struct mosquitto_message`."""

    _fields_ = (
        ("mid", c_int),
        ("topic", c_char_p),
        ("payload", c_void_p),
        ("payloadlen", c_int),
        ("qos", c_int),
        ("retain", c_bool),
    )


# callbacks: (mosq, userdata, ...); every one gets the library's property list as a pointer
ON_CONNECT = ctypes.CFUNCTYPE(None, c_void_p, c_void_p, c_int, c_int, c_void_p)
ON_DISCONNECT = ctypes.CFUNCTYPE(None, c_void_p, c_void_p, c_int, c_void_p)
ON_PUBLISH = ctypes.CFUNCTYPE(None, c_void_p, c_void_p, c_int, c_int, c_void_p)
ON_MESSAGE = ctypes.CFUNCTYPE(None, c_void_p, c_void_p, POINTER(Message), c_void_p)
ON_SUBSCRIBE = ctypes.CFUNCTYPE(None, c_void_p, c_void_p, c_int, c_int, POINTER(c_int), c_void_p)

_PROTOTYPES: dict[str, tuple[object, tuple[object, ...]]] = {
    "mosquitto_lib_init": (c_int, ()),
    "mosquitto_lib_version": (c_int, (POINTER(c_int), POINTER(c_int), POINTER(c_int))),
    "mosquitto_new": (c_void_p, (c_char_p, c_bool, c_void_p)),
    "mosquitto_destroy": (None, (c_void_p,)),
    "mosquitto_int_option": (c_int, (c_void_p, c_int, c_int)),
    "mosquitto_threaded_set": (c_int, (c_void_p, c_bool)),
    "mosquitto_username_pw_set": (c_int, (c_void_p, c_char_p, c_char_p)),
    "mosquitto_tls_set": (c_int, (c_void_p, c_char_p, c_char_p, c_char_p, c_char_p, c_void_p)),
    "mosquitto_reconnect_delay_set": (c_int, (c_void_p, c_uint32, c_uint32, c_bool)),
    "mosquitto_connect_bind_v5": (c_int, (c_void_p, c_char_p, c_int, c_int, c_char_p, c_void_p)),
    "mosquitto_disconnect_v5": (c_int, (c_void_p, c_int, c_void_p)),
    "mosquitto_loop_forever": (c_int, (c_void_p, c_int, c_int)),
    "mosquitto_socket": (c_int, (c_void_p,)),
    "mosquitto_publish_v5": (
        c_int, (c_void_p, POINTER(c_int), c_char_p, c_int, c_void_p, c_int, c_bool, c_void_p),
    ),
    "mosquitto_subscribe_v5": (
        c_int, (c_void_p, POINTER(c_int), c_char_p, c_int, c_int, c_void_p),
    ),
    "mosquitto_unsubscribe_v5": (c_int, (c_void_p, POINTER(c_int), c_char_p, c_void_p)),
    "mosquitto_property_add_int32": (c_int, (POINTER(c_void_p), c_int, c_uint32)),
    "mosquitto_property_add_varint": (c_int, (POINTER(c_void_p), c_int, c_uint32)),
    "mosquitto_property_free_all": (None, (POINTER(c_void_p),)),
    "mosquitto_property_read_int32": (c_void_p, (c_void_p, c_int, POINTER(c_uint32), c_bool)),
    "mosquitto_property_read_varint": (c_void_p, (c_void_p, c_int, POINTER(c_uint32), c_bool)),
    "mosquitto_strerror": (c_char_p, (c_int,)),
    "mosquitto_reason_string": (c_char_p, (c_int,)),
    "mosquitto_connack_string": (c_char_p, (c_int,)),
    "mosquitto_connect_v5_callback_set": (None, (c_void_p, ON_CONNECT)),
    "mosquitto_disconnect_v5_callback_set": (None, (c_void_p, ON_DISCONNECT)),
    "mosquitto_publish_v5_callback_set": (None, (c_void_p, ON_PUBLISH)),
    "mosquitto_message_v5_callback_set": (None, (c_void_p, ON_MESSAGE)),
    "mosquitto_subscribe_v5_callback_set": (None, (c_void_p, ON_SUBSCRIBE)),
}  # fmt: skip

_lib: ctypes.CDLL | None = None
_load_lock = threading.Lock()


def lib() -> ctypes.CDLL:
    """libmosquitto with its prototypes set, initialised once per process."""
    global _lib
    with _load_lock:
        if _lib is None:
            _lib = _load()
    return _lib


def _load() -> ctypes.CDLL:
    try:
        found = ctypes.CDLL(ctypes.util.find_library("mosquitto") or SONAME, use_errno=True)
    except OSError:
        raise DdnnError(
            f"--mqtt-client libmosquitto needs {SONAME}: install the Debian package {PACKAGE} "
            f"(apt-get install {PACKAGE}), or use --mqtt-client paho"
        ) from None
    for name, (restype, argtypes) in _PROTOTYPES.items():
        func = getattr(found, name)
        func.restype = restype
        func.argtypes = argtypes
    major = c_int()
    found.mosquitto_lib_version(ctypes.byref(major), ctypes.byref(c_int()), ctypes.byref(c_int()))
    if major.value < 2:
        raise DdnnError(
            f"libmosquitto {major.value}.x is too old for MQTT v5 properties; install {PACKAGE} "
            "2.0 or newer, or use --mqtt-client paho"
        )
    found.mosquitto_lib_init()
    return found


def strerror(rc: int) -> str:
    """libmosquitto's text for an error code; for ERR_ERRNO, the OS error."""
    if rc == ERR_ERRNO:
        errno = ctypes.get_errno()
        return os.strerror(errno) if errno else "system error"
    return (lib().mosquitto_strerror(rc) or b"unknown error").decode()


def reason_string(code: int) -> str:
    """An MQTT v5 reason code as text, with its number: `Not authorized (135)`."""
    return f"{(lib().mosquitto_reason_string(code) or b'unknown').decode()} ({code})"


def read_int32(props: int | None, identifier: int) -> int | None:
    """One 4-byte integer property of a received packet, or None."""
    if not props:
        return None
    value = c_uint32()
    found = lib().mosquitto_property_read_int32(props, identifier, ctypes.byref(value), False)
    return value.value if found else None


def read_varints(props: int | None, identifier: int) -> list[int]:
    """Every occurrence of a varint property (a delivery may carry several subscription ids)."""
    out: list[int] = []
    value = c_uint32()
    read = lib().mosquitto_property_read_varint
    cursor = read(props, identifier, ctypes.byref(value), False) if props else None
    while cursor:
        out.append(value.value)
        cursor = read(cursor, identifier, ctypes.byref(value), True)
    return out


class PropertyList:
    """An outgoing property list, freed when the `with` ends (libmosquitto copies it)."""

    def __init__(self) -> None:
        self.head = c_void_p()

    def add_int32(self, identifier: int, value: int) -> PropertyList:
        _check(lib().mosquitto_property_add_int32(ctypes.byref(self.head), identifier, value))
        return self

    def add_varint(self, identifier: int, value: int) -> PropertyList:
        _check(lib().mosquitto_property_add_varint(ctypes.byref(self.head), identifier, value))
        return self

    def __enter__(self) -> PropertyList:
        return self

    def __exit__(self, *exc: object) -> None:
        lib().mosquitto_property_free_all(ctypes.byref(self.head))


def _check(rc: int) -> None:
    if rc != ERR_SUCCESS:
        raise DdnnError(f"libmosquitto: {strerror(rc)}")
