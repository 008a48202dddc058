"""Kicks tasks from Python and reads their results (whoever ran them), as a taskiq user would.

usage: producer.py COUNT [DELAYED]   -- COUNT `add` tasks (DELAYED of them with the delay label), one `fail`.
Prints one line per check and exits non-zero when one fails.
"""

import asyncio
import sys
import time

import asyncpg

from tasks import DSN, add, broker, fail


async def main(count: int, delayed: int) -> int:
    await broker.startup()
    problems = 0
    try:
        started = time.monotonic()
        conn = await asyncpg.connect(DSN)
        kicked_at = await conn.fetchval("SELECT now()")
        handles = []
        for i in range(count):
            kicker = add.kicker()
            if i < delayed:
                kicker = kicker.with_labels(delay=2)
            handles.append((i, await kicker.kiq(i, 1000, key=f"py-{i}")))
        failing = await fail.kiq("boom from Python's producer")
        print(f"kicked {count} add ({delayed} with delay=2) and 1 fail in {time.monotonic() - started:.2f} s")

        wrong = 0
        for i, handle in handles:
            result = await handle.wait_result(timeout=60)
            if result.is_err or result.return_value != i + 1000:
                wrong += 1
                print(f"  add #{i}: {result}")
        print(f"results: {count - wrong}/{count} correct (read with JSONSerializer)")
        problems += wrong
        if delayed:
            # Every delayed run started at least 2 s after the first kick (database clock).
            first = await conn.fetchval(
                "SELECT min(at) - $1 FROM interop_runs WHERE key = ANY($2)", kicked_at, [f"py-{i}" for i in range(delayed)])
            print(f"delayed: the first of {delayed} ran {first.total_seconds():.2f} s after the kicks began (delay=2)")
            problems += first.total_seconds() < 2
        await conn.close()

        error = await failing.wait_result(timeout=60)
        print(f"fail: is_err={error.is_err} error={type(error.error).__name__}: {error.error}")
        if not error.is_err or "boom" not in str(error.error):
            problems += 1
    finally:
        await broker.shutdown()
    return problems


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    delayed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    sys.exit(1 if asyncio.run(main(count, delayed)) else 0)
