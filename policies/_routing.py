"""Request routing by traits (StraightLine): caller frequency and input size pick the tier.

Thresholds come from the profile (``RouterThresholds.from_profile``), never constants.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Final, Literal

from policies._placement import ProfilePoint

ROUTE_WARM: Final = "warm"
ROUTE_ELASTIC: Final = "elastic"
ROUTE_BATCH: Final = "batch"
Route = Literal["warm", "elastic", "batch"]


@dataclass(frozen=True)
class RouterThresholds:
    """``large_rows`` (D): rows above which a request goes to the batch path; ``frequent_rps``
    (F): a caller sending more often than this keeps an elastic (scale-to-zero) replica warm."""

    large_rows: int
    frequent_rps: float

    @classmethod
    def from_profile(
        cls, warm: ProfilePoint, slo_ms: float, percentile: int, idle_timeout_s: float
    ) -> RouterThresholds:
        """D: the most rows the warm tier answers within half the SLO (the other half is left
        to queueing), from its profiled per-row cost, and never fewer than the rows that add a
        tenth of the SLO (so a profile taken on a busy node, whose tail is already past half
        the SLO, does not send every two-row request to the batch path); F: one request per
        idle timeout."""
        budget = max(0.5 * slo_ms - warm.tail_ms(percentile), 0.1 * slo_ms)
        per_row = max(warm.row_ms, 1e-3)
        return cls(
            large_rows=max(1, int(budget / per_row)), frequent_rps=1.0 / max(idle_timeout_s, 1e-3)
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def route_request(
    rows: int, caller_rps: float, warm_busy: bool, thresholds: RouterThresholds
) -> Route:
    """StraightLine's rule: large inputs to the batch path; otherwise the warm tier while it
    has room; when it is busy, frequent callers to the elastic tier (they keep it warm) and
    rare ones to the batch path, whose replicas are up anyway."""
    if rows > thresholds.large_rows:
        return ROUTE_BATCH
    if not warm_busy:
        return ROUTE_WARM
    return ROUTE_ELASTIC if caller_rps > thresholds.frequent_rps else ROUTE_BATCH


class CallerRates:
    """Exponentially decayed request rate per caller (half-life ``half_life_s``), bounded: past
    ``max_callers`` the caller seen longest ago is forgotten, in O(1) (a client that invents a
    new name per request costs no more than one that does not)."""

    def __init__(self, half_life_s: float = 10.0, max_callers: int = 10_000) -> None:
        self._decay = math.log(2.0) / half_life_s
        self._max = max_callers
        self._seen: OrderedDict[str, tuple[float, float]] = OrderedDict()  # caller -> (rate, t)

    def observe(self, caller: str, now_s: float) -> float:
        rate, t = self._seen.pop(caller, (0.0, now_s))
        rate = rate * math.exp(-self._decay * max(0.0, now_s - t)) + self._decay
        self._seen[caller] = (rate, now_s)
        if len(self._seen) > self._max:
            self._seen.popitem(last=False)
        return rate

    def __len__(self) -> int:
        return len(self._seen)


class InFlightBound:
    """At most ``limit`` requests in flight per client (its address, which it cannot choose,
    not the routing hint it sends): one client flooding the endpoint gets 429s while the
    others keep their share of the router. Holds only clients with requests in flight."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a client's in-flight bound must be at least 1, got {limit}")
        self.limit = limit
        self._n: dict[str, int] = {}

    def enter(self, client: str) -> bool:
        """Admit one more request of ``client`` (True), or refuse it (False)."""
        n = self._n.get(client, 0)
        if n >= self.limit:
            return False
        self._n[client] = n + 1
        return True

    def leave(self, client: str) -> None:
        n = self._n.get(client, 0) - 1
        if n > 0:
            self._n[client] = n
        else:
            self._n.pop(client, None)

    def in_flight(self, client: str) -> int:
        return self._n.get(client, 0)
