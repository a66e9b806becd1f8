"""Readiness refuses a data Redis that may evict our keys (issue 10 item 6, spec §12)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis


@pytest.fixture
def admin_redis(redis_url: str) -> Iterator[redis.Redis]:
    """A client on the test Redis whose maxmemory-policy is put back to noeviction afterwards."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.config_set("maxmemory-policy", "noeviction")
    client.close()


def test_readyz_fails_unless_redis_runs_noeviction(make_client: Callable[..., Any], admin_redis: redis.Redis) -> None:
    """Switching the data Redis to an evicting policy makes /readyz 503 with `failing` naming
    maxmemory-policy within the reading's age (SEATS_EVICTION_CHECK_SECONDS); noeviction makes it 200 again."""
    client = make_client(eviction_check_seconds=0.2)
    assert client.get("/readyz").status_code == 200
    admin_redis.config_set("maxmemory-policy", "volatile-lru")
    time.sleep(0.3)
    failing = client.get("/readyz")
    assert failing.status_code == 503, failing.text
    assert "volatile-lru" in failing.json()["failing"]["maxmemory-policy"]
    assert failing.json()["ok"] == ["redis", "queue", "scripts", "subscription"]
    admin_redis.config_set("maxmemory-policy", "noeviction")
    time.sleep(0.3)
    assert client.get("/readyz").status_code == 200


class Collect(logging.Handler):
    """Keeps the records it sees (Litestar's logging set-up replaces the root handlers caplog uses)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_start_up_reads_the_policy_and_logs_it(make_client: Callable[..., Any], admin_redis: redis.Redis) -> None:
    """The API reads the policy at start-up: an evicting one is logged as an error and /readyz is 503
    at once; noeviction is logged as such."""
    admin_redis.config_set("maxmemory-policy", "allkeys-lru")
    collect, logger = Collect(), logging.getLogger("seats.wiring")
    logger.addHandler(collect)
    level = logger.level
    logger.setLevel(logging.INFO)  # as service.logs sets the root in every process (tests configure none)
    try:
        client = make_client()  # the reading is 5 s old at most: this one is from start-up
        assert client.get("/readyz").json()["failing"].keys() == {"maxmemory-policy"}
        admin_redis.config_set("maxmemory-policy", "noeviction")
        make_client()
    finally:
        logger.removeHandler(collect)
        logger.setLevel(level)
    messages = [(r.levelname, r.getMessage()) for r in collect.records]
    assert any(level == "ERROR" and "maxmemory-policy allkeys-lru" in text for level, text in messages), messages
    assert any(level == "INFO" and "maxmemory-policy noeviction" in text for level, text in messages), messages
