"""The Python side of the interop check: a taskiq-postgres broker on the tables TaskiqPg uses.

What shares a queue with TaskiqPg (README, "Running with Python taskiq workers"): the same table and channel names on
both sides (these are both sides' defaults), and a result backend with taskiq's JSONSerializer (its default, pickle,
writes bytes TaskiqPg cannot read).
"""

import json
import os
from typing import Any

import asyncpg
from taskiq.compat import IS_PYDANTIC2, model_dump
from taskiq.serialization import prepare_exception
from taskiq.serializers import JSONSerializer
from taskiq_pg.asyncpg import AsyncpgBroker, AsyncpgResultBackend

DSN = os.environ.get("INTEROP_DSN", "postgresql://postgres@localhost:5432/postgres")
RUNNER = os.environ.get("INTEROP_RUNNER", "python")



def _exception_as_json(value: Any) -> Any:
    """Under pydantic 1 taskiq's result leaves `error` an exception object that json cannot write (pydantic 2 turns it
    into taskiq's ExceptionRepr itself): do what pydantic 2 does. Not needed with pydantic 2."""
    if isinstance(value, BaseException):
        return model_dump(prepare_exception(value, json))
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


broker = AsyncpgBroker(
    dsn=DSN,
    channel_name="taskiq",
    table_name="taskiq_messages",
).with_result_backend(
    AsyncpgResultBackend(dsn=DSN, table_name="taskiq_results", serializer=JSONSerializer(default=None if IS_PYDANTIC2 else _exception_as_json)),
)


@broker.task(task_name="add")
async def add(a: int, b: int, key: str) -> int:
    """Adds, and records one row per run in interop_runs (the check counts runs per key: exactly one each)."""
    conn = await asyncpg.connect(DSN)
    try:
        await conn.execute("INSERT INTO interop_runs (key, runner) VALUES ($1, $2)", key, RUNNER)
    finally:
        await conn.close()
    return a + b


@broker.task(task_name="fail")
async def fail(reason: str) -> None:
    raise ValueError(reason)
