"""One client socket of the fake TWS: reads the "API\\0" prefix, the version frame and request frames; writes frames."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from tests.support.fake_tws_handlers import Subscription


@dataclass(frozen=True)
class Request:
    """One decoded client frame: the ibapi method name, its wire fields by name, and which connection sent it."""

    name: str
    msg_id: int
    fields: dict[str, Any]
    raw: tuple[str, ...]
    connection: int
    received_at: float  # time.monotonic()
    received_wall: float = 0.0  # the fake's clock (epoch seconds) when it arrived

    @property
    def req_id(self) -> int | None:
        return self.fields.get("reqId")

    @property
    def con_id(self) -> int | None:
        return self.fields.get("conId")

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def matches(self, name: str, **expected: Any) -> bool:
        return self.name == name and all(self.fields.get(k) == v for k, v in expected.items())


class ConnectionOwner(Protocol):
    """What a connection reports to its server."""

    def on_handshake(self, client: ClientConnection, text: str) -> None: ...
    def on_frame(self, client: ClientConnection, fields: tuple[str, ...]) -> None: ...
    def on_protocol_error(self, client: ClientConnection, text: str) -> None: ...
    def on_closed(self, client: ClientConnection) -> None: ...


class ClientConnection:
    """One accepted client socket: handshake state, negotiated version and subscriptions."""

    def __init__(self, sock: socket.socket, index: int, silent: bool) -> None:
        self.sock = sock
        self.index = index  # 1-based, in accept order over the server's life
        self.silent = silent  # "silent" accept mode: read and record, never answer
        self.client_id: int | None = None
        self.server_version = 0
        self.ready = False  # startApi received and answered
        self.alive = True
        self.subscriptions: dict[int, Subscription] = {}
        self.bytes_sent = 0
        self.thread: threading.Thread | None = None
        self._unnudged = 0
        self._last_write = 0.0
        self._send_lock = threading.Lock()

    def start(self, owner: ConnectionOwner) -> None:
        name = f"fake-tws-client-{self.index}"
        self.thread = threading.Thread(target=self._read, args=(owner,), name=name, daemon=True)
        self.thread.start()

    def send(self, data: bytes, *, nudge: bool = False) -> bool:
        """Write whole frames; False (and the connection closed) if the socket is gone."""
        with self._send_lock:
            if not self.alive:
                return False
            try:
                self.sock.sendall(data)
            except OSError:
                self.close()
                return False
            self.bytes_sent += len(data)
            self._unnudged = 0 if nudge else self._unnudged + len(data)
            self._last_write = time.monotonic()
            return True

    def needs_nudge(self, quiet: float) -> bool:
        """True after >= 4096 bytes were written and then nothing for `quiet` seconds (see FakeTWS docstring)."""
        return self.alive and self._unnudged >= 4096 and time.monotonic() - self._last_write >= quiet

    def close(self) -> None:
        """Shut the socket down: the client's recv returns 0 and it calls connectionClosed."""
        self.alive = False
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def _read(self, owner: ConnectionOwner) -> None:
        buf, stage = b"", "prefix"
        try:
            while data := self.sock.recv(65536):
                buf += data
                while True:
                    if stage == "prefix":
                        if len(buf) < 4:
                            break
                        if buf[:4] != b"API\0":
                            owner.on_protocol_error(self, f"expected b'API\\0', got {buf[:4]!r}")
                            return
                        buf, stage = buf[4:], "version"
                    if len(buf) < 4:
                        break
                    size = struct.unpack("!I", buf[:4])[0]
                    if len(buf) < 4 + size:
                        break
                    payload, buf = buf[4 : 4 + size].decode(errors="replace"), buf[4 + size :]
                    if stage == "version":
                        owner.on_handshake(self, payload)
                        stage = "api"
                    else:
                        owner.on_frame(self, tuple(payload.split("\0")[:-1]))
        except OSError:
            pass
        finally:
            self.close()
            owner.on_closed(self)
