"""Schedules through taskiq-postgres's schedule source, on the table TaskiqPg's scheduler reads.

usage: schedules.py write   -- (re)starts the source (which deletes every row of its table!) and adds a Berlin cron
                               schedule and a 2-second interval schedule
       schedules.py read    -- reads every schedule in the table (TaskiqPg's included) as Python's scheduler would
"""

import asyncio
import sys

import asyncpg
from taskiq import ScheduledTask
from taskiq.compat import IS_PYDANTIC2
from taskiq_pg.asyncpg import AsyncpgScheduleSource

from tasks import DSN, broker

if not IS_PYDANTIC2:
    # taskiq-postgres's schedule source calls pydantic 2's model_dump_json / model_validate; under pydantic 1 (Debian's)
    # give it the pydantic 1 equivalents. The stored JSON then has pydantic 1's shapes (an interval in seconds, not
    # "PT2S"): TaskiqPg reads both.
    ScheduledTask.model_dump_json = lambda self, **kwargs: self.json(**kwargs)
    ScheduledTask.model_validate = classmethod(lambda cls, value: cls.parse_obj(value))


async def main(mode: str) -> int:
    pool = await asyncpg.create_pool(DSN)
    source = AsyncpgScheduleSource(broker=broker, table_name="taskiq_schedules", pool=pool)
    if mode == "write":
        await source.startup()
        await source.add_schedule(ScheduledTask(task_name="add", labels={"owner": "python", "priority": 2},
                                                args=[1, 2], kwargs={"key": "py-cron"}, cron="30 2 * * *",
                                                cron_offset="Europe/Berlin"))
        await source.add_schedule(ScheduledTask(task_name="add", labels={"owner": "python"},
                                                args=[3, 4], kwargs={"key": "py-interval"}, interval=2))
        print("wrote 2 schedules")
    else:
        # get_schedules on a pool of our own, without startup(): startup would delete the table's rows.
        for schedule in await source.get_schedules():
            print(f"read {schedule.task_name}: cron={schedule.cron} cron_offset={schedule.cron_offset} "
                  f"interval={schedule.interval} time={schedule.time} args={schedule.args} labels={schedule.labels}")
    await source.shutdown()
    await pool.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "read")))
