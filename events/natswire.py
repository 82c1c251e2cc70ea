"""What Splice's NATS connections send and get, as values and bytes: a message to publish, one
read back from a stream, the PUB command for a message (`pub_command`), and a JetStream
publish's acknowledgement (`acked`) with the error it may carry (`JetStreamAPIError`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from nats.aio.msg import Msg


class JetStreamAPIError(Exception):
    """An error answered by the JetStream API (code, err_code and description as sent)."""

    def __init__(self, code: int, err_code: int, description: str) -> None:
        super().__init__(f"{description} (code {code}, err_code {err_code})")
        self.code = code
        self.err_code = err_code
        self.description = description


@dataclass(frozen=True, slots=True)
class StoredMsg:
    """One message read from a stream by direct get."""

    seq: int
    subject: str
    headers: Mapping[str, str]
    data: bytes


@dataclass(frozen=True, slots=True)
class OutMsg:
    """One message to publish."""

    subject: str
    data: bytes
    headers: dict[str, str]


def acked(msg: Msg) -> dict[str, Any]:
    """A JetStream publish acknowledgement; the error it carries as `JetStreamAPIError`."""
    ack = msgspec.json.decode(msg.data) if msg.data else {}
    err = ack.get("error")
    if err or "seq" not in ack:
        err = err or {"description": f"no acknowledgement: {msg.data!r} {msg.headers}"}
        raise JetStreamAPIError(
            err.get("code", 0), err.get("err_code", 0), err.get("description", "")
        )
    return ack


_VALUE_NEWLINES = str.maketrans({"\r": " ", "\n": " "})  # as nats-py: a value is one line


def pub_command(subject: str, reply: str, data: bytes, headers: Mapping[str, str] | None) -> bytes:
    """The PUB (or HPUB) command nats-py's `publish` writes for these, without its per-call
    checks: the subjects and header names Splice publishes under are its own (`subjects`),
    and a reply subject is one the server delivered. Values lose their line ends, as there."""
    if headers is None:
        return b"PUB %s %s %d\r\n%s\r\n" % (subject.encode(), reply.encode(), len(data), data)
    if "\r" in (values := "".join(headers.values())) or "\n" in values:
        hdr = "".join([f"{k}: {v.strip().translate(_VALUE_NEWLINES)}\r\n" for k, v in headers.items()])
    else:  # the usual case, without `translate`: 1.9 vs 5.4 us for an event's eight headers
        hdr = "".join([f"{k}: {v.strip()}\r\n" for k, v in headers.items()])
    head = f"NATS/1.0\r\n{hdr}\r\n".encode()
    return b"HPUB %s %s %d %d\r\n%s%s\r\n" % (
        subject.encode(), reply.encode(), len(head), len(head) + len(data), head, data)
