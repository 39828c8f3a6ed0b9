"""comux: many Kafka camera streams in, one batch of their newest frames out."""

from . import _ext  # noqa: F401  (fails early, with build instructions, when the core is missing)
from .app import Comux
from .config import TopicSchema
from .errors import (
    BatchReleasedError,
    BrokerUnavailableError,
    ComuxError,
    ComuxTimeoutError,
    ConfigError,
    KafkaError,
    ProvisionError,
    RegistryError,
    StateError,
    UnknownCameraError,
    UnknownIndexError,
)
from .registry import MongoConnect

__version__ = "0.1.0"

__all__ = [
    "BatchReleasedError",
    "BrokerUnavailableError",
    "Comux",
    "ComuxError",
    "ComuxTimeoutError",
    "ConfigError",
    "KafkaError",
    "MongoConnect",
    "ProvisionError",
    "RegistryError",
    "StateError",
    "TopicSchema",
    "UnknownCameraError",
    "UnknownIndexError",
]
