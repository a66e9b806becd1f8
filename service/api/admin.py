"""Admin endpoints for operators (``SEATS_ADMIN_TOKEN``): payment reconciliation."""

from __future__ import annotations

from litestar import get
from litestar.types import ControllerRouterHandler

from service.api.deps import ServicesDep, admin_guard
from service.api.openapi import route_doc
from service.models import PaymentsSummary
from service.payments import read_books


@get("/admin/payments/summary", guards=[admin_guard], **route_doc("payments_summary"))
async def payments_summary(services: ServicesDep) -> PaymentsSummary:
    """The simulated gateway's books: ``{"charged": n, "refunded": m}``, counts of charges and refunds.

    Once every order is terminal and settled, charged - refunded = the number of CONFIRMED orders
    (spec §11). Admin token: none → 401, wrong → 403.
    """
    return await read_books(services.store.reads)


ROUTES: list[ControllerRouterHandler] = [payments_summary]
