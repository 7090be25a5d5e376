"""Open-loop load generator, run in its own process: plays a trace against an endpoint.

    python benchmarks/loadgen.py SPEC.json OUT.json

SPEC: {"url": ..., "rows": [[...64 floats...], ...], "timeout_s": 10,
       "trace": [[t_offset_s, n_rows, caller], ...]}
Each request is sent at its offset whether or not earlier ones have answered (open loop, as
real clients behave), with asyncio + aiohttp on loopback. OUT: one record per request
[t_offset_s, n_rows, caller, status (0: no answer within timeout / connection error),
latency_ms, route].
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any


async def _play(spec: dict[str, Any]) -> list[list[Any]]:
    import aiohttp

    url, rows, trace = spec["url"], spec["rows"], spec["trace"]
    timeout = aiohttp.ClientTimeout(total=float(spec.get("timeout_s", 10)))
    out: list[list[Any]] = [[0.0, 0, "", 0, 0.0, ""] for _ in trace]
    conn = aiohttp.TCPConnector(limit=int(spec.get("connections", 256)))
    async with aiohttp.ClientSession(timeout=timeout, connector=conn) as http:
        start = time.perf_counter()

        async def one(i: int, t: float, n: int, caller: str) -> None:
            delay = start + t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            body = {"instances": [rows[(i + k) % len(rows)] for k in range(n)]}
            t0 = time.perf_counter()
            status, route = 0, ""
            try:
                async with http.post(url, json=body, headers={"x-slaflow-caller": caller}) as resp:
                    status = resp.status
                    data = await resp.json(content_type=None)
                    route = str(data.get("route", "")) if isinstance(data, dict) else ""
            except (TimeoutError, aiohttp.ClientError, ValueError):
                status = 0
            out[i] = [t, n, caller, status, (time.perf_counter() - t0) * 1000, route]

        await asyncio.gather(
            *(one(i, float(t), int(n), str(c)) for i, (t, n, c) in enumerate(trace))
        )
    return out


def main() -> int:
    spec = json.loads(open(sys.argv[1]).read())
    records = asyncio.run(_play(spec))
    with open(sys.argv[2], "w") as fh:
        json.dump(records, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
