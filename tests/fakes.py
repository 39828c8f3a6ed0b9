"""Stand-ins: a confluent_kafka.Message for decoding, a Comux for the registry sync."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from comux.errors import UnknownCameraError
from comux.media import EncodedPacket


@dataclass
class FakeMessage:
    _value: bytes | None
    _offset: int
    _topic: str = "raw.cam"
    _partition: int = 0
    _key: bytes | None = b"cam"
    _headers: list[tuple[str, bytes]] | None = field(default=None)

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes | None:
        return self._key

    def offset(self) -> int:
        return self._offset

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._headers


def messages(
    packets: list[EncodedPacket], *, headers: bool = True, first: int = 0
) -> list[FakeMessage]:
    return [
        FakeMessage(p.data, first + i, _headers=p.headers() if headers else None)
        for i, p in enumerate(packets)
    ]


class CameraTarget:
    """The part of Comux that ``sync_cameras`` drives; records every call.

    Ids in ``fail_connect`` raise once, with ``fail_text`` (not a ComuxError, so not logged).
    """

    def __init__(self, cam_ids: list[str], fail_text: str = "boom") -> None:
        self.cam_ids = list(cam_ids)
        self.calls: list[tuple[str, str]] = []
        self.fail_connect: set[str] = set()
        self.fail_text = fail_text
        self.cond = threading.Condition()

    def connect(self, cam_id: str) -> None:
        with self.cond:
            self.calls.append(("connect", cam_id))
            if cam_id in self.fail_connect:
                self.fail_connect.discard(cam_id)
                raise RuntimeError(self.fail_text)
            if cam_id not in self.cam_ids:
                self.cam_ids.append(cam_id)
            self.cond.notify_all()

    def kill(self, cam_id: str) -> None:
        with self.cond:
            self.calls.append(("kill", cam_id))
            if cam_id not in self.cam_ids:
                raise UnknownCameraError(cam_id)
            self.cam_ids.remove(cam_id)
            self.cond.notify_all()

    def wait_ids(self, expected: set[str], timeout: float = 30.0) -> None:
        with self.cond:
            ok = self.cond.wait_for(lambda: set(self.cam_ids) == expected, timeout)
        assert ok, f"ids {self.cam_ids} never became {expected}; calls {self.calls}"
