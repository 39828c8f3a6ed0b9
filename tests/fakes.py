"""Stand-ins for confluent_kafka.Message in unit tests (decoding needs no broker)."""

from __future__ import annotations

from dataclasses import dataclass, field

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
