"""Bootstrap-server resolution, topic templates and secret redaction."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import ConfigError

__all__ = [
    "BOOTSTRAP_ENV",
    "resolve_bootstrap_servers",
    "TopicSchema",
    "redact",
]

BOOTSTRAP_ENV = "COMUX_BOOTSTRAP_SERVERS"
CAM_ID_PLACEHOLDER = ":cam_id"

# librdkafka and MongoDB option names whose values must never be printed.
_SECRET_MARKERS = ("password", "secret", "token", "key.pem", "credentials", "sasl.oauthbearer")


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
    lowered = name.lower()
    return any(marker in lowered for marker in _SECRET_MARKERS)


def redact(options: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of ``options`` safe to log: secret values replaced by ``***``."""
    return {k: ("***" if is_secret(k) else v) for k, v in options.items()}
