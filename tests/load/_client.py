"""A load client in its own process: N concurrent raw-socket SSE streams, timings out as JSON.

Run by the load tests as ``python -m tests.load._client SPEC_JSON``. Kept out of the test
process, where the fake upstream runs in a thread: sharing that interpreter's GIL would make
the client's own timestamps late by whatever the fake is doing. ``time.monotonic()`` is
CLOCK_MONOTONIC, one clock for every process on the machine, so these timestamps compare with
the fake's journal.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time

from tests.load._support import Exchange, raise_nofile, result_of, stream_once


async def _run(spec: dict) -> list[dict]:
    port, path, headers = spec["port"], spec["path"], spec["headers"]
    tags = [f"{spec['prefix']}{i}" for i in range(spec["count"])]
    rng = random.Random(spec.get("seed", 0))
    start = time.monotonic()

    async def one(tag: str) -> tuple[str, Exchange]:
        # Starts spread over the ramp: a thousand connects in one instant would measure the
        # accept queue, and would line every stream's events up into one burst.
        await asyncio.sleep(max(0.0, start + rng.uniform(0, spec["ramp"]) - time.monotonic()))
        ex = await stream_once(
            port, path, headers | {"x-test-id": tag}, timeout=spec["timeout"], keep_body=True
        )
        return tag, ex

    results = await asyncio.gather(*(one(t) for t in tags))
    return [result_of(tag, ex) for tag, ex in results]


def main() -> None:
    spec = json.loads(sys.argv[1])
    raise_nofile(spec["nofile"])
    json.dump(asyncio.run(_run(spec)), sys.stdout)


if __name__ == "__main__":
    main()
