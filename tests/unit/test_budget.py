"""The request-body budget's arithmetic (proxy/budget.py); the attacks on it over real sockets
are in tests/security/test_bounds_budget.py."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from proxy.budget import BodyBudget, HeldBody
from proxy.metrics import BudgetCollector

KIB = 1024


def test_the_free_part_takes_nothing() -> None:
    budget = BodyBudget(0, free=16 * KIB)
    held = HeldBody(budget)
    assert held.add(10 * KIB)
    assert held.add(6 * KIB)
    assert budget.used == 0
    assert held.size == 16 * KIB


def test_bytes_beyond_the_free_part_are_taken_and_given_back() -> None:
    budget = BodyBudget(100 * KIB, free=16 * KIB)
    held = HeldBody(budget)
    assert held.add(40 * KIB)
    assert budget.used == 24 * KIB
    held.drop(30 * KIB)  # streamed on: 10 KiB left, inside the free part
    assert budget.used == 0
    assert held.add(50 * KIB)
    assert budget.used == 44 * KIB
    held.close()
    assert budget.used == 0
    held.close()  # again: nothing more
    assert budget.used == 0


def test_a_request_past_the_budget_is_refused_and_takes_nothing() -> None:
    budget = BodyBudget(50 * KIB, free=16 * KIB)
    first, second = HeldBody(budget), HeldBody(budget)
    assert first.add(56 * KIB)  # takes 40 KiB
    assert second.add(20 * KIB)  # takes 4 KiB
    assert not second.add(10 * KIB)  # 54 KiB would be past 50
    assert budget.used == 44 * KIB
    assert budget.refused == 1
    assert second.size == 20 * KIB
    first.close()
    second.close()
    assert budget.used == 0


def test_a_body_larger_than_the_budget_passes_alone() -> None:
    """Below the replay limit, the budget serves large bodies one at a time, never none."""
    budget = BodyBudget(32 * KIB, free=16 * KIB)
    alone = HeldBody(budget)
    assert alone.add(100 * KIB)
    assert alone.add(100 * KIB)
    assert budget.used == 184 * KIB
    other = HeldBody(budget)
    assert other.add(16 * KIB)  # the free part still passes
    assert not other.add(1)
    alone.close()
    assert other.add(20 * KIB)
    other.close()
    assert budget.used == 0


def test_the_metrics_read_the_budget() -> None:
    budget = BodyBudget(10, free=0)
    held = HeldBody(budget)
    held.add(5)
    HeldBody(budget).add(10)  # refused: 15 > 10 while another holds 5
    registry = CollectorRegistry()
    registry.register(BudgetCollector(budget))
    text = generate_latest(registry).decode()
    assert "foundry_proxy_request_body_buffered_bytes 5.0" in text
    assert "foundry_proxy_request_body_budget_refusals_total 1.0" in text
