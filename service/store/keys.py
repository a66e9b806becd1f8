"""The Redis key schema: the only place key names are built.

Every key of one flight carries the hash tag ``{flightId}`` so each Lua script touches one
Redis Cluster slot. README's "Redis key schema" section mirrors this module.

=================================  ======  ===================================================
key                                type    contents
=================================  ======  ===================================================
``seats:catalog``                  set     flight ids (the sweeper's and ``GET /flights``' list)
``seats:order-flight:{orderId}``   string  the flight of an order (orders are addressed by id;
                                           its own slot, tagged by the order id)
``seats:{F}:flight``               hash    rows, columns, capacity, createdAt, version,
                                           lastUpdated, layoutRev, sold
``seats:{F}:seat:{seatId}``        string  ``H|<order>|<deadline ms>`` with PXAT = deadline
                                           (held) or ``C|<order>`` without TTL (sold);
                                           absent = available
``seats:{F}:order:{orderId}``      hash    the order (see ``service.orders``), TTL'd
``seats:{F}:deadlines``            zset    order id -> hold deadline (ms), swept by the worker
``seats:{F}:changes``              stream  the last ``SEATS_CHANGE_LOG_LENGTH`` changes, id =
                                           ``<version>-1``
``seats:{F}:events``               shard   the same changes, live (SPUBLISH by the script that
                                   channel made them: the channel lives on the flight's slot)
``seats:{F}:subject:{subject}``    hash    one subject's token bucket (``tokens``, ``ts``) and the
                                           orders it created on the flight (field = order key,
                                           value = order id), for the caps
``seats:{F}:idempotency:{sha256}`` string  an Idempotency-Key's record (JSON): pending, or the
                                           first response; sha256 of subject, method, path, key
``seats:{F}:history:seat:{seatId}`` stream one seat's history (spec §13): an entry per change,
                                           fields h '<at>|<version>|<cause>|<order>', s
                                           '<seat>:<from>:<to>:<deadline>', r reason (lua/_lib.lua
                                           record_history); trimmed by time, TTL the retention
``seats:{F}:history:order:{id}``   stream  one order's history: an entry per script, s listing
                                           every seat it changed (comma-separated)
``seats:{F}:outbox``               stream  webhook events of orders that ended (spec §13), written
                                           by the script that ended them when webhooks are on:
                                           fields id (webhook-id), type, at (ms), o (the order,
                                           JSON); consumer group ``relay`` (store.outbox); an
                                           entry is deleted once its delivery job is queued
``seats:streams:{<subject>}``      zset    a subject's open SSE streams (member -> lease, ms)
``seats:gateway:{gateway}:charge:  hash    the simulated gateway's record of one idempotency
{paymentId}:{n}``                          key: outcome (success | declined | void), message,
                                           ref (order id), refunded (0/1), at (ms)
``seats:gateway:{gateway}:books``  hash    the gateway's books: charged, refunded (counts)
=================================  ======  ===================================================

The gateway's keys share the hash tag ``{gateway}``: a charge writes its record and counts it in
the books in one script (one Redis Cluster slot for the whole simulated gateway).
"""

from __future__ import annotations

CATALOG = "seats:catalog"
GATEWAY_BOOKS = "seats:gateway:{gateway}:books"
GATEWAY_RECORDS = "seats:gateway:{gateway}:charge:*"  # a SCAN pattern (reconciliation tools)


def order_flight(order_id: str) -> str:
    """Which flight an order belongs to."""
    return f"seats:order-flight:{{{order_id}}}"


def flight(flight_id: str) -> str:
    """The flight's layout, version and counters."""
    return f"seats:{{{flight_id}}}:flight"


def seat(flight_id: str, seat_id: str) -> str:
    """One seat's hold or sale."""
    return f"seats:{{{flight_id}}}:seat:{seat_id}"


def order(flight_id: str, order_id: str) -> str:
    """One order's fields."""
    return f"seats:{{{flight_id}}}:order:{order_id}"


def deadlines(flight_id: str) -> str:
    """The flight's hold-deadline index."""
    return f"seats:{{{flight_id}}}:deadlines"


def changes(flight_id: str) -> str:
    """The flight's capped change log."""
    return f"seats:{{{flight_id}}}:changes"


def events_channel(flight_id: str) -> str:
    """The flight's shard channel (``SPUBLISH``/``SSUBSCRIBE``: served by the node owning the flight's slot)."""
    return f"seats:{{{flight_id}}}:events"


def flight_of_channel(channel: str) -> str:
    """Inverse of :func:`events_channel`."""
    return channel[len("seats:{") : -len("}:events")]


def subject(flight_id: str, subject_id: str) -> str:
    """A subject's bucket and orders on one flight (``subject_id`` empty: the worker's placeholder)."""
    return f"seats:{{{flight_id}}}:subject:{subject_id}"


def idempotency(flight_id: str, scope: str) -> str:
    """An Idempotency-Key record (``scope``: sha256 hex of subject, method, path and key; empty: none)."""
    return f"seats:{{{flight_id}}}:idempotency:{scope}"


def history_seat(flight_id: str, seat_id: str) -> str:
    """One seat's history stream (lua/_lib.lua history_key derives the same name from the flight key)."""
    return f"seats:{{{flight_id}}}:history:seat:{seat_id}"


def history_order(flight_id: str, order_id: str) -> str:
    """One order's history stream (an entry per script with its seats, lua/_lib.lua history_key)."""
    return f"seats:{{{flight_id}}}:history:order:{order_id}"


def outbox(flight_id: str) -> str:
    """The flight's webhook outbox stream (lua/_lib.lua write_outbox derives the same name)."""
    return f"seats:{{{flight_id}}}:outbox"


def streams(subject_id: str) -> str:
    """A subject's open SSE streams, across every API process (a slot of its own)."""
    return f"seats:streams:{{{subject_id}}}"


def gateway_charge(idempotency_key: str) -> str:
    """The simulated gateway's record of one idempotency key (one payment attempt)."""
    return f"seats:gateway:{{gateway}}:charge:{idempotency_key}"
