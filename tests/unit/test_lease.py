"""``policies.lease_state``: whose a model's lease is."""

from __future__ import annotations

import pytest

from policies import lease_state

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("holder", "until", "state"),
    [
        ("ml_lifecycle/r1", 200.0, "mine"),  # a retry of the same run re-enters
        ("ml_lifecycle/r1", 50.0, "mine"),  # even past its expiry: nobody took it
        ("ml_rollback/r2", 200.0, "held"),
        ("ml_rollback/r2", 100.0, "expired"),  # exactly at its end
        ("ml_rollback/r2", 50.0, "expired"),
        (None, 200.0, "expired"),  # no holder: nobody to wait for
        ("ml_rollback/r2", None, "expired"),  # unreadable expiry: never blocks for ever
    ],
)
def test_lease_state(holder: str | None, until: float | None, state: str) -> None:
    assert lease_state(holder=holder, until=until, me="ml_lifecycle/r1", now=100.0) == state
