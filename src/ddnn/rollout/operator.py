"""Send one command to the servers on a broker and wait for the first answer."""

from __future__ import annotations

import queue
import secrets

from ddnn.errors import DdnnError
from ddnn.runtime.protocol import command_reply_topic, command_topic
from ddnn.runtime.rollout_wire import (
    Command,
    CommandReply,
    RolloutMessageError,
    decode_message,
    encode_message,
)
from ddnn.runtime.transport import Transport

DEFAULT_TIMEOUT_S = 30.0  # a deploy loads and hashes every weight file first


def new_command(action: str, **fields: object) -> Command:
    """A command with a fresh id, so its answer is told from a late answer to another."""
    return Command(secrets.token_hex(8), action, **fields)  # type: ignore[arg-type]


def send_command(
    transport: Transport, command: Command, *, operator: str, timeout_s: float = DEFAULT_TIMEOUT_S
) -> CommandReply:
    """Publish `command` as `operator` and return the first server's answer. With several
    servers each answers; they carry out the same command, so the first speaks for them."""
    answers: queue.Queue[CommandReply] = queue.Queue()

    def on_reply(topic: str, payload: bytes) -> None:
        try:
            reply = decode_message(CommandReply, payload)
        except RolloutMessageError:
            return
        if reply.id in (command.id, ""):  # "": the server could not read the command
            answers.put(reply)

    reply_topic = command_reply_topic(operator)
    transport.subscribe(reply_topic, on_reply)
    try:
        transport.publish(command_topic(operator), encode_message(command))
        try:
            return answers.get(timeout=timeout_s)
        except queue.Empty:
            raise DdnnError(
                f"no server answered within {timeout_s:.0f} s: is `ddnn serve` running on this "
                f"broker? On a secure broker only an operator identity may send commands "
                f"(--auth access/operator.json); {operator!r} may not be one"
            ) from None
    finally:
        transport.unsubscribe(reply_topic)
