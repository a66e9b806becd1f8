"""Who a request is, for every limit (spec §10): the buyer of a valid buyer pass, else the client address.

- **Client address.** The TCP peer; only when the peer is inside ``SEATS_TRUSTED_PROXIES`` is it taken
  from ``X-Forwarded-For``: the right-most address that is not a trusted proxy (the left-most when all
  are), the peer when the header does not parse. The right-most untrusted entry is the one a trusted
  proxy wrote itself; everything left of it is whatever the client claimed (MDN, "X-Forwarded-For":
  selecting an IP address). IPv6 clients are grouped by their /64: one host usually owns a whole /64,
  so counting single addresses would give it 2^64 subjects.
- **Buyer pass.** ``Seats-Buyer: <buyerId>.<expiresAtUnixSeconds>.<signature>``, signature = base64url
  without padding of HMAC-SHA256(``SEATS_BUYER_SECRET``, ``<buyerId>.<expiresAtUnixSeconds>``) (RFC 2104,
  RFC 4648 §5), compared in constant time. Passes are never logged.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from service import errors

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

BUYER_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
SIGNATURE: Final = re.compile(r"[A-Za-z0-9_-]{43}")  # 32 bytes, base64url, no padding
MAX_EXPIRY_DIGITS: Final = 12
MAX_FORWARDED_HOPS: Final = 32  # a longer X-Forwarded-For does not parse: the peer counts
IPV6_SUBJECT_PREFIX: Final = 64


@dataclass(frozen=True, slots=True)
class Subject:
    """A buyer (``b:<buyerId>``) or a client address (``a:<address or /64>``): the unit every limit counts."""

    kind: str  # "buyer" | "address"
    value: str

    def __str__(self) -> str:
        return f"{'b' if self.kind == 'buyer' else 'a'}:{self.value}"


class TrustedProxies:
    """``SEATS_TRUSTED_PROXIES`` parsed once: the networks whose ``X-Forwarded-For`` is believed."""

    __slots__ = ("networks",)

    def __init__(self, cidrs: Iterable[str] = ()) -> None:
        self.networks: tuple[Network, ...] = tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, address: Address) -> bool:
        return any(address in network for network in self.networks)


def _address(text: str) -> Address | None:
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@functools.lru_cache(maxsize=8192)
def client_address(peer: str | None, forwarded_for: str | None, proxies: TrustedProxies) -> str:
    """The client address of a request (see the module docstring), as a subject value.

    ``peer`` is the TCP peer's host (None or a non-IP for unix sockets: then it stands as given).
    Cached: parsing addresses was 3 % of a write's CPU, and a client sends many requests.
    """
    peer_address = _address(peer) if peer else None
    if peer_address is None:
        return peer or "unknown"
    chosen = peer_address
    if forwarded_for and peer_address in proxies:
        hops = forwarded_for.split(",")
        parsed = [_address(hop) for hop in hops] if len(hops) <= MAX_FORWARDED_HOPS else [None]
        if all(hop is not None for hop in parsed):
            addresses = [hop for hop in parsed if hop is not None]
            untrusted = [hop for hop in reversed(addresses) if hop not in proxies]
            chosen = untrusted[0] if untrusted else addresses[0]
    if isinstance(chosen, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((chosen, IPV6_SUBJECT_PREFIX), strict=False))
    return str(chosen)


def sign_pass(secret: str, buyer_id: str, expires_at: int) -> str:
    """A buyer pass, as the integrator's backend issues it (used by tests, the harness and README's example)."""
    return f"{buyer_id}.{expires_at}.{_signature(secret, f'{buyer_id}.{expires_at}')}"


def _signature(secret: str, signed: str) -> str:
    digest = hmac.new(secret.encode(), signed.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def verify_pass(value: str, secret: str | None, now_seconds: float) -> str:
    """The buyer id of a valid pass.

    Raises InvalidBuyerPass (401) when the pass is malformed, forged or expired, or when no
    ``SEATS_BUYER_SECRET`` is configured (nothing can be verified, so nothing is believed).
    """
    if not secret:
        raise errors.InvalidBuyerPass("This service accepts no buyer passes (SEATS_BUYER_SECRET is not set).")
    buyer_id, _, rest = value.partition(".")
    expires, _, signature = rest.partition(".")
    well_formed = (
        BUYER_ID.fullmatch(buyer_id) is not None and SIGNATURE.fullmatch(signature) is not None
        and 0 < len(expires) <= MAX_EXPIRY_DIGITS and expires.isascii() and expires.isdigit()
    )
    if not well_formed:
        raise errors.InvalidBuyerPass(
            "The Seats-Buyer pass is malformed: expected <buyerId>.<expiresAtUnixSeconds>.<signature>.",
            {"field": "Seats-Buyer"},
        )
    if not hmac.compare_digest(_signature(secret, f"{buyer_id}.{expires}"), signature):
        raise errors.InvalidBuyerPass("The Seats-Buyer pass's signature is wrong.", {"field": "Seats-Buyer"})
    if int(expires) <= now_seconds:
        raise errors.InvalidBuyerPass("The Seats-Buyer pass has expired.", {"field": "Seats-Buyer"})
    return buyer_id


def resolve(  # noqa: PLR0917 - the request's four facts and the two settings they are read against
    peer: str | None, forwarded_for: str | None, buyer_pass: str | None,
    proxies: TrustedProxies, secret: str | None, now_seconds: float,
) -> Subject:
    """The request's subject: the pass's buyer when one is presented (it must be valid), else the address."""
    if buyer_pass is not None:
        return Subject("buyer", verify_pass(buyer_pass, secret, now_seconds))
    return Subject("address", client_address(peer, forwarded_for, proxies))
