"""Unit rules of strict bodies, bounded echoes and the HTTP limits' settings (``service.api.deps``, ``service.errors``,
``service.settings``)."""

from __future__ import annotations

import msgspec
import pytest

from service import errors
from service.api.deps import check_duplicate_keys, decode_strict
from service.models import CreateOrderRequest, SelectSeatsRequest


def test_echo_keeps_a_bounded_prefix() -> None:
    """A long value is cut to its first 64 characters plus a marker saying how much was left out."""
    assert errors.echo("1A") == "1A"
    shown = errors.echo("9" * 60_000)
    assert shown == "9" * 64 + "…(+59936 chars)"


@pytest.mark.parametrize("body", [
    b'{"a": 1, "a": 2}',
    b'{"a": {"b": 1, "b": 2}}',
    b'[{"x": 1}, {"y": [{"z": 1, "\\u007a": 2}]}]',
])
def test_duplicate_keys_at_any_depth_are_422(body: bytes) -> None:
    """A key named twice in any object of a body, however it is escaped, is a 422 naming the key."""
    with pytest.raises(errors.ValidationFailed) as caught:
        check_duplicate_keys(body)
    assert caught.value.details["field"] in {"a", "b", "z"}


@pytest.mark.parametrize("body", [b'{"seats": ["1A"]}', b'{"a": {"a": 1}}', b'{"a": "b:c", "b": "a"}', b"[]"])
def test_distinct_keys_pass(body: bytes) -> None:
    """The same key in different objects, or a colon inside a string, is no duplicate."""
    check_duplicate_keys(body)


def test_decoder_messages_are_bounded() -> None:
    """An unknown 60 KB field name is a 400 whose message quotes a bounded prefix of it."""
    with pytest.raises(errors.InvalidRequest) as caught:
        decode_strict(b'{"' + b"x" * 60_000 + b'": 1}', SelectSeatsRequest)
    assert len(caught.value.message) < 300


def test_legacy_spellings_keep_absent_apart_from_null() -> None:
    """An absent field decodes as UNSET and an explicit null as None, so both spellings can be told apart."""
    body = decode_strict(b'{"flightId": "FL-001", "orderID": null}', CreateOrderRequest)
    assert body.flight_id == "FL-001" and body.legacy_order_id is None
    assert body.order_id is msgspec.UNSET and body.legacy_flight_id is msgspec.UNSET


def test_http_limits_are_read_and_range_checked() -> None:
    """The SEATS_HTTP_* variables reach the server's limits; values that would disable a bound are refused."""
    from service.server import HeadLimits
    from service.settings import SettingsError, load_settings

    settings = load_settings({"SEATS_HTTP_MAX_HEAD_BYTES": "8192", "SEATS_HTTP_MAX_HEADERS": "50",
                              "SEATS_HTTP_HEAD_TIMEOUT_SECONDS": "2.5", "SEATS_HTTP_MAX_CONNECTIONS": "7"})
    assert HeadLimits.from_settings(settings) == HeadLimits(8192, 50, 2.5, 7)
    for name, value in (("SEATS_HTTP_MAX_HEAD_BYTES", "0"), ("SEATS_HTTP_MAX_HEADERS", "100000"),
                        ("SEATS_HTTP_HEAD_TIMEOUT_SECONDS", "0"), ("SEATS_HTTP_KEEPALIVE_SECONDS", "-1"),
                        ("SEATS_HTTP_MAX_CONNECTIONS", "0")):
        with pytest.raises(SettingsError, match=name):
            load_settings({name: value})
