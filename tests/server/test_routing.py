"""Each request routes with its own router: a clone of the server's template, or the budget it asks for."""

from __future__ import annotations

from collab_core.router import BudgetRouter, NeverRouter, ScheduledRouter, ThresholdRouter
from collab_core.server.routing import describe_budget, request_router


def test_a_budget_clone_keeps_the_calibration_but_never_shares_state():
    template = BudgetRouter(0.1)
    template.calibrate([0.1 * i for i in range(10)])
    one, two = request_router(template), request_router(template)
    assert one is not template and one.threshold == template.threshold and one.scorer is template.scorer
    one.observe(0.99)
    one.account(10, 2, 1)
    assert len(two.scores) == len(template.scores) == 10 and len(one.scores) == 11
    assert (two.total_tokens, two.cloud_tokens) == (template.total_tokens, template.cloud_tokens) == (0, 0)


def test_a_requested_budget():
    threshold = ThresholdRouter(0.3)
    routed = request_router(threshold, budget=0.2)
    assert isinstance(routed, BudgetRouter) and routed.budget == 0.2 and routed.scorer is threshold.scorer
    assert isinstance(request_router(threshold, budget=0.0), NeverRouter)
    calibrated = BudgetRouter(0.5)
    calibrated.calibrate([0.1 * i for i in range(11)])
    tighter = request_router(calibrated, budget=0.05)
    assert tighter.budget == 0.05 and tighter.threshold > calibrated.threshold  # follows the new budget
    assert calibrated.budget == 0.5


def test_stateless_routers_are_copied_and_the_page_sees_the_budget():
    sched = ScheduledRouter([1, 2])
    assert request_router(sched).positions == {1, 2}
    assert describe_budget(BudgetRouter(0.07)) == 0.07 and describe_budget(sched) is None
