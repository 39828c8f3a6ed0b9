"""Fixtures of the unit tier."""

from __future__ import annotations

from collections.abc import Iterator

import confluent_kafka as ck
import pytest


@pytest.fixture(scope="module")
def mock_cluster() -> Iterator[str]:
    """librdkafka's in-process mock cluster: its brokers listen on local ports, so other
    clients can share it through the bootstrap string this yields."""
    owner = ck.Producer({"test.mock.num.brokers": 1, "log_level": 2})
    brokers = owner.list_topics(timeout=10).brokers.values()
    yield ",".join(f"{b.host}:{b.port}" for b in brokers)
    owner.flush(1)
