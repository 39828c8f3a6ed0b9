"""Bootstrap-server resolution, topic templates, the cam id pattern and secret redaction."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import ConfigError

__all__ = [
    "BOOTSTRAP_ENV",
    "CAM_ID_PATTERN",
    "SECRET_MARKERS",
    "TopicSchema",
    "is_secret",
    "redact",
    "resolve_bootstrap_servers",
]

BOOTSTRAP_ENV = "COMUX_BOOTSTRAP_SERVERS"
CAM_ID_PLACEHOLDER = ":cam_id"
# Topic-safe and log-safe: a cam id becomes part of a Kafka topic name.
CAM_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

# What names a secret, in any case: a librdkafka option, a MongoClient keyword or a MongoDB URI
# query option whose name holds one of these is never shown (authMechanismProperties can carry
# AWS_SESSION_TOKEN:...). The one list: comux.registry builds its URI pattern from it.
SECRET_MARKERS = (
    "password",
    "secret",
    "token",
    "credential",
    "key.pem",
    "sasl.oauthbearer",
    "authmechanismproperties",
)


def resolve_bootstrap_servers(servers: str | Iterable[str] | None) -> str:
    """Return a librdkafka ``bootstrap.servers`` string from a list, a string or the environment."""
    if servers is None:
        servers = os.environ.get(BOOTSTRAP_ENV)
        if not servers:
            raise ConfigError(
                f"no bootstrap servers: pass bootstrap_servers= or set {BOOTSTRAP_ENV}"
            )
    if isinstance(servers, str):
        parts = [s.strip() for s in servers.split(",")]
    else:
        parts = [str(s).strip() for s in servers]
    parts = [p for p in parts if p]
    if not parts:
        raise ConfigError("bootstrap servers are empty")
    return ",".join(parts)


_REGEX_SPECIAL = set(".^$*+?()[]{}|\\")


class TopicSchema:
    """Map cam ids to topic names through a template holding ``:cam_id``, and back."""

    def __init__(self, template: str) -> None:
        if not isinstance(template, str) or template.count(CAM_ID_PLACEHOLDER) != 1:
            raise ConfigError(
                f"topic template must contain {CAM_ID_PLACEHOLDER!r} exactly once, got {template!r}"
            )
        self.template = template
        self._prefix, self._suffix = template.split(CAM_ID_PLACEHOLDER)

    def topic(self, cam_id: str) -> str:
        return f"{self._prefix}{cam_id}{self._suffix}"

    def cam_id(self, topic: str) -> str:
        end = len(topic) - len(self._suffix)
        if (
            not topic.startswith(self._prefix)
            or not topic.endswith(self._suffix)
            or end <= len(self._prefix)
        ):
            raise ConfigError(f"topic {topic!r} does not match template {self.template!r}")
        return topic[len(self._prefix) : end]

    def pattern(self, cam_pattern: str) -> str:
        """A librdkafka topic regex: the template with ``:cam_id`` matched by ``cam_pattern``."""

        def literal(text: str) -> str:
            return "".join("\\" + c if c in _REGEX_SPECIAL else c for c in text)

        return f"^{literal(self._prefix)}({cam_pattern}){literal(self._suffix)}$"

    def __repr__(self) -> str:
        return f"TopicSchema({self.template!r})"


def is_secret(name: str) -> bool:
    """Whether the option ``name`` holds a secret (see ``SECRET_MARKERS``)."""
    lowered = name.lower()
    return any(marker in lowered for marker in SECRET_MARKERS)


def redact(options: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of ``options`` safe to log: secret values replaced by ``***``."""
    return {k: ("***" if is_secret(k) else v) for k, v in options.items()}
