"""Thin arq jobs: each one calls into ``service`` and is safe to run more than once."""

from __future__ import annotations

from typing import Any

from service.payments import process_payment as run_payment_attempts


async def process_payment(ctx: dict[str, Any], flight_id: str, order_id: str, payment_id: str) -> str:
    """Run one payment submission (job id = payment id); idempotent, see ``service.payments``."""
    return await run_payment_attempts(ctx["order_scripts"], ctx["gateway"], ctx["settings"], flight_id, order_id,
                                      payment_id)
