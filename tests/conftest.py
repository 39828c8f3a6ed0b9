"""Shared fixtures: synthetic video made by the tests; the real Kafka and FerretDB servers."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from comux.media import EncodedPacket, synthetic_packets
from tests.fixtures_kafka import kafka_broker  # noqa: F401  (session fixtures)
from tests.fixtures_mongo import mongo_auth_server, mongo_server  # noqa: F401


@pytest.fixture(scope="session")
def small_video() -> list[EncodedPacket]:
    """60 frames of 320x240 H.264 with B-frames (decoder delay) and a keyframe every 10."""
    return list(synthetic_packets(320, 240, 60, fps=25, gop=10, bframes=2))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _isolated_comux_logger() -> Iterator[None]:
    """Undo what a Comux(log_level=...) did to the ``comux`` logger, so caplog sees every record."""
    logger = logging.getLogger("comux")
    level, handlers = logger.level, list(logger.handlers)
    yield
    logger.setLevel(level)
    for handler in logger.handlers:
        if handler not in handlers:
            logger.removeHandler(handler)
            handler.close()


from tests.fixtures_kafka import private_broker  # noqa: E402, F401  (module fixture)
