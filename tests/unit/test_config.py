from __future__ import annotations

import pytest

from comux.config import BOOTSTRAP_ENV, TopicSchema, redact, resolve_bootstrap_servers
from comux.errors import ConfigError


def test_topic_schema_round_trip():
    schema = TopicSchema("raw.:cam_id.h264")
    assert schema.topic("cam-7") == "raw.cam-7.h264"
    assert schema.cam_id("raw.cam-7.h264") == "cam-7"
    with pytest.raises(ConfigError):
        schema.cam_id("out.cam-7.h264")
    with pytest.raises(ConfigError):
        schema.cam_id("raw..h264")


@pytest.mark.parametrize("template", ["raw", "raw.:cam_id.:cam_id", 7])
def test_topic_schema_needs_one_placeholder(template):
    with pytest.raises(ConfigError):
        TopicSchema(template)  # type: ignore[arg-type]


def test_bootstrap_servers_from_list_string_and_env(monkeypatch):
    assert resolve_bootstrap_servers(["a:1", " b:2 "]) == "a:1,b:2"
    assert resolve_bootstrap_servers("a:1, b:2") == "a:1,b:2"
    monkeypatch.setenv(BOOTSTRAP_ENV, "c:3")
    assert resolve_bootstrap_servers(None) == "c:3"
    monkeypatch.delenv(BOOTSTRAP_ENV)
    with pytest.raises(ConfigError, match=BOOTSTRAP_ENV):
        resolve_bootstrap_servers(None)
    with pytest.raises(ConfigError):
        resolve_bootstrap_servers([" "])


def test_redact_hides_secret_values():
    out = redact({"sasl.password": "hunter2", "ssl.key.password": "x", "group.id": "g"})
    assert out == {"sasl.password": "***", "ssl.key.password": "***", "group.id": "g"}
