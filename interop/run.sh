#!/usr/bin/env bash
# By-hand check of TaskiqPg with Python taskiq + taskiq-postgres on one PostgreSQL (see interop/README.md).
# Needs: a PostgreSQL reachable as PGHOST/PGPORT/PGUSER (psql works without a password), python3 with taskiq 0.12,
# taskiq-postgres 0.8 and asyncpg importable (PYTHONPATH is passed through), and the .NET SDK.
# Each scenario gets a fresh database; prints what it saw and exits non-zero when a check fails.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${PGHOST:=localhost}" "${PGPORT:=5432}" "${PGUSER:=postgres}"
export PGHOST PGPORT PGUSER
python=${PYTHON:-python3}
count=${COUNT:-200}
delayed=${DELAYED:-20}
failures=0
want() { [ -z "${ONLY:-}" ] || [ "$ONLY" = "$1" ]; } # ONLY=N runs scenario N alone
pids=()

dotnet build -v q -nologo "$here/dotnet" >/dev/null
dotnet_app="dotnet $here/dotnet/bin/Debug/net10.0/TaskiqPg.Interop.dll"

stop_all() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}
trap stop_all EXIT

use_db() {
  db=$1
  psql -qAt -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
  psql -qAt -d "$db" -c "CREATE TABLE interop_runs (key text NOT NULL, runner text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())"
  export INTEROP_DSN_PY="postgresql://$PGUSER@$PGHOST:$PGPORT/$db"
  export INTEROP_DSN_NET="Host=$PGHOST;Port=$PGPORT;Username=$PGUSER;Database=$db"
}

python_worker() {
  (cd "$here/python" && INTEROP_DSN=$INTEROP_DSN_PY exec $python -m taskiq worker tasks:broker --workers 1 --log-level WARNING) \
    >"/tmp/interop-python-worker-$db.log" 2>&1 &
  pids+=($!)
}

dotnet_worker() {
  INTEROP_DSN=$INTEROP_DSN_NET $dotnet_app worker >"/tmp/interop-dotnet-worker-$db.log" 2>&1 &
  pids+=($!)
}

wait_for_table() {
  for _ in $(seq 1 100); do
    [ "$(psql -qAt -d "$db" -c "SELECT to_regclass('public.$1') IS NOT NULL")" = t ] && return 0
    sleep 0.2
  done
  echo "  table $1 never appeared"; return 1
}

wait_for_worker() { # a TaskiqPg worker registers itself in taskiq_workers
  for _ in $(seq 1 100); do
    [ "$(psql -qAt -d "$db" -c "SELECT count(*) FROM taskiq_workers" 2>/dev/null || echo 0)" -gt 0 ] && return 0
    sleep 0.2
  done
  echo "  the TaskiqPg worker never registered"; return 1
}

python_kicks() { (cd "$here/python" && INTEROP_DSN=$INTEROP_DSN_PY $python producer.py "$count" "$delayed") | sed 's/^/  python producer: /' || failures=$((failures + 1)); }
dotnet_kicks() { INTEROP_DSN=$INTEROP_DSN_NET $dotnet_app kick "$count" | sed 's/^/  .NET producer: /' || failures=$((failures + 1)); }

check_runs() { # every key ran exactly once; what is left in the messages table
  local expected=$1
  local summary
  summary=$(psql -qAt -d "$db" -F ' ' -c "
    SELECT count(DISTINCT key), count(*) - count(DISTINCT key),
           count(*) FILTER (WHERE runner = 'python'), count(*) FILTER (WHERE runner = 'dotnet')
    FROM interop_runs")
  read -r keys twice by_python by_dotnet <<<"$summary"
  local left
  left=$(psql -qAt -d "$db" -c "SELECT coalesce(string_agg(status || ':' || n, ' '), 'none') FROM (SELECT status, count(*) AS n FROM taskiq_messages WHERE task_name = 'add' AND status NOT IN ('completed') GROUP BY status) s")
  echo "  runs: $keys of $expected keys ran, $twice ran twice; by Python $by_python, by .NET $by_dotnet; add rows not done: $left"
  if [ "$keys" != "$expected" ] || [ "$twice" != 0 ] || [ "$left" != none ]; then failures=$((failures + 1)); echo "  FAILED"; fi
}

if want 1; then
  echo "1. Python creates the tables; mixed fleet (1 Python worker, 1 TaskiqPg worker); both producers"
  use_db interop_python_first
  python_worker; wait_for_table taskiq_messages; wait_for_table taskiq_results
  dotnet_worker; wait_for_worker
  python_kicks; dotnet_kicks
  check_runs $((2 * count)); stop_all
fi

if want 2; then
  echo "2. TaskiqPg creates the tables; mixed fleet; both producers"
  use_db interop_dotnet_first
  dotnet_worker; wait_for_worker
  python_worker; sleep 3 # the Python worker logs nothing when it is ready
  python_kicks; dotnet_kicks
  check_runs $((2 * count)); stop_all
fi

if want 3; then
  echo "3. TaskiqPg producer -> Python worker only (TaskiqPg created the tables)"
  use_db interop_to_python
  INTEROP_DSN=$INTEROP_DSN_NET $dotnet_app migrate
  python_worker; sleep 3
  dotnet_kicks
  check_runs "$count"; stop_all
fi

if want 4; then
  echo "4. Python producer -> TaskiqPg worker only (Python created the tables)"
  use_db interop_to_dotnet
  python_worker; wait_for_table taskiq_results; stop_all # the tables as taskiq-postgres creates them
  dotnet_worker; wait_for_worker
  python_kicks
  check_runs "$count"; stop_all
fi

if want 5; then
  echo "5. Schedules: Python writes, TaskiqPg reads and fires; TaskiqPg writes, Python reads"
  use_db interop_schedules
  INTEROP_DSN=$INTEROP_DSN_NET $dotnet_app migrate
  (cd "$here/python" && INTEROP_DSN=$INTEROP_DSN_PY $python schedules.py write) | sed 's/^/  python: /' || failures=$((failures + 1))
  INTEROP_DSN=$INTEROP_DSN_NET $dotnet_app schedules 7 | grep -v '^\s*$' | sed 's/^/  .NET: /' || failures=$((failures + 1))
  (cd "$here/python" && INTEROP_DSN=$INTEROP_DSN_PY $python schedules.py read) | sed 's/^/  python: /' || failures=$((failures + 1))
  fired=$(psql -qAt -d "$db" -c "SELECT count(*) FROM interop_runs WHERE key = 'py-interval'")
  echo "  Python's 2 s interval schedule ran $fired times in TaskiqPg's 7 s"
  if [ "$fired" -lt 2 ]; then failures=$((failures + 1)); echo "  FAILED"; fi
fi

echo "failed checks: $failures"
[ "$failures" = 0 ]
