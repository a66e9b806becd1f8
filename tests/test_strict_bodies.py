"""Unit rules of strict bodies and bounded echoes (``service.api.deps``, ``service.errors``)."""

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
