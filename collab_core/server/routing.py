"""Which router answers one request of the server.

A server's requests come from many callers at once. If they shared the engine's router, a budget's running
share -- and so each answer -- would depend on which requests happened to come before; the same request would
not get the same answer twice. So every request is routed by its own router: a clone of the server's template
(its calibration included), or, when the request sets ``collab.budget``, a budget router for that share on the
template's scorer.
"""

from __future__ import annotations

from ..router import BudgetRouter, NeverRouter, Router


def request_router(template: Router, *, budget: float | None = None) -> Router:
    """A router for one request: ``template``'s clone, or a budget of ``budget`` (0: never route)."""
    if budget is None:
        return template.clone()
    if budget <= 0:
        return NeverRouter()
    if isinstance(template, BudgetRouter):
        router = template.clone()
        router.budget = budget
        if router.calibrated:
            router.calibrate(())  # the threshold follows the new budget at once
        return router
    return BudgetRouter(budget, scorer=getattr(template, "scorer", None))


def describe_budget(template: Router) -> float | None:
    """The server's budget, shown by the page's budget control (None: it routes by threshold)."""
    return template.budget if isinstance(template, BudgetRouter) else None
