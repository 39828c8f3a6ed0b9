"""One error hierarchy: every comux error is a ComuxError and also the builtin it resembles."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "BatchReleasedError",
    "BrokerUnavailableError",
    "ComuxError",
    "ComuxTimeoutError",
    "ConfigError",
    "KafkaError",
    "PortInUseError",
    "ProvisionError",
    "RegistryError",
    "StateError",
    "UnknownCameraError",
    "UnknownIndexError",
]


class ComuxError(Exception):
    """Base of every error comux raises."""


class ConfigError(ComuxError, ValueError):
    """An argument or option has the wrong type, shape or value."""


class UnknownCameraError(ComuxError, KeyError):
    """A cam_id that this instance does not manage; the message lists the known ones (up to
    ``SHOWN_KNOWN``) or says how many there are."""

    SHOWN_KNOWN = 10

    def __init__(self, cam_id: str, known: Iterable[str] | None = None) -> None:
        super().__init__(cam_id)
        self.cam_id = cam_id
        self.known = None if known is None else list(known)

    def __str__(self) -> str:
        text = f"unknown cam_id {self.cam_id!r}"
        if self.known is None:
            return text
        if not self.known:
            return text + " (this instance has no cameras)"
        if len(self.known) <= self.SHOWN_KNOWN:
            return text + " (known: " + ", ".join(repr(c) for c in self.known) + ")"
        return text + f" ({len(self.known)} cameras are known)"


class UnknownIndexError(ComuxError, KeyError):
    """An index (Kafka offset) whose packet comux no longer holds for that camera."""

    def __init__(self, cam_id: str, index: int) -> None:
        super().__init__(cam_id, index)
        self.cam_id = cam_id
        self.index = index

    def __str__(self) -> str:
        return (
            f"no packet at index {self.index} for cam_id {self.cam_id!r}: "
            "send() takes an index that get()/get_batch() returned recently"
        )


class KafkaError(ComuxError):
    """A Kafka operation failed; ``code`` is librdkafka's error code when one is known."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class BrokerUnavailableError(KafkaError, ConnectionError):
    """No broker of the given bootstrap servers answered in time."""


class ComuxTimeoutError(ComuxError, TimeoutError):
    """A bounded wait ran out."""


class BatchReleasedError(ComuxError, RuntimeError):
    """A Batch was used after release(): its memory may already hold other frames."""


class ProvisionError(ComuxError, RuntimeError):
    """The local Kafka broker could not be provisioned, started or stopped."""


class PortInUseError(ProvisionError):
    """A port the local broker was to listen on is held by another process; ``port`` says which."""

    def __init__(self, message: str, port: int) -> None:
        super().__init__(message)
        self.port = port


class StateError(ComuxError, RuntimeError):
    """A method was called before the setup step it needs, or after close()."""


class RegistryError(ComuxError, ConnectionError):
    """The camera registry (MongoDB) could not be reached, authenticated against or queried.

    Its message names host:port only; it never holds credentials nor pymongo's own text.
    """
