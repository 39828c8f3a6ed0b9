"""A consumer group per test: a member left behind by one test must never hold up another's join."""

from __future__ import annotations

import uuid


def own_group() -> dict[str, str]:
    return {"group.id": f"comux-test-{uuid.uuid4().hex[:8]}"}
