#!/usr/bin/env bash
# Orders per second of the orders example's distributed mode (a PostgreSQL job queue, apalis and
# taskscope-apalis) with 1, 2 and 4 worker processes, and where the CPU goes meanwhile.
#
#   bash benches/orders_distributed.sh
#   RUNS=5 WORKERS="1 2" CONCURRENCY="16 64" bash benches/orders_distributed.sh
#
# For each concurrency (jobs in flight per worker, --concurrency) and each worker count K, RUNS
# times: `enqueue` --orders ORDERS --seed SEED (default rates; resets the ledger and the queue),
# then K `work --exit-when-idle --name wK-i` processes at once, timed until all have exited;
# then `report`, whose exit code says whether the ledger adds up and every job is settled.
#
# Columns (ranges are min..max over the runs):
# - orders/s: ORDERS / seconds from the workers' start until the last has exited (process
#   start, connecting, the last order's retries and the idle check, every 250 ms, included);
# - p95 orders/s: 0.95 × ORDERS / seconds from the start until the 95th percentile of the jobs'
#   `done_at`: the rate before the tail of retried orders (needs psql);
# - workers CPU: the worker processes' user + system time (/usr/bin/time), as % of one core
#   over the run; PostgreSQL CPU: the server's (postmaster, its backends and its reaped
#   children, from /proc), the same way; machine busy: all CPUs' non-idle time from /proc/stat,
#   as % of all cores (100 % = every core busy); and both CPU times per order;
# - job ms: the mean of a job's last run, fetch (lock_at) to settlement (done_at); ceiling:
#   K × C / job time, what the workers could do if nothing but the jobs' own time limited them;
# - db sessions: mean sessions of the run's database on CPU (or runnable), waiting for a lock,
#   and idle in a transaction (waiting for their worker), sampled every 0.2 s from
#   pg_stat_activity by one psql session (its own queries are in the PostgreSQL CPU).
#
# `enqueue` resets the example's ledger and its queue (`orders`), which would wreck a test or a
# run of someone else's in the same database: the script works in a database of its own on the
# same server, `<database>_orders_bench`, made if missing (OWN_DB=0 uses the URL's database).
#
# Environment: TASKSCOPE_POSTGRES_URL (default postgres://postgres@127.0.0.1:55432/taskscope),
# ORDERS (2000), SEED (7), RUNS (3), WORKERS ("1 2 4"), CONCURRENCY ("16"; e.g. "16 64"),
# BUILD (1; 0 skips the release build), OWN_DB (1).
set -euo pipefail

URL="${TASKSCOPE_POSTGRES_URL:-postgres://postgres@127.0.0.1:55432/taskscope}"
ORDERS="${ORDERS:-2000}"
SEED="${SEED:-7}"
RUNS="${RUNS:-3}"
WORKERS="${WORKERS:-1 2 4}"
CONCURRENCY="${CONCURRENCY:-16}"
BUILD="${BUILD:-1}"
OWN_DB="${OWN_DB:-1}"
HERE="$(cd "$(dirname "$0")/.." && pwd)"
BIN="$HERE/target/release/examples/orders"
HZ="$(getconf CLK_TCK)"
CORES="$(nproc)"

if [ "$BUILD" = 1 ]; then
  (cd "$HERE" && cargo build --release -q -p taskscope-examples --example orders)
fi
[ -x "$BIN" ] || { echo "orders_distributed: $BIN is missing (BUILD=1 builds it)" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "orders_distributed: /usr/bin/time is needed (apt-get install time)" >&2; exit 1; }

HAVE_PSQL=0
POSTMASTER=""
if command -v psql >/dev/null 2>&1; then
  HAVE_PSQL=1
  if [ "$OWN_DB" = 1 ]; then
    db="${URL##*/}"
    db="${db%%\?*}"
    bench_db="${db}_orders_bench"
    if [ "$(psql "$URL" -Atqc "SELECT 1 FROM pg_database WHERE datname = '$bench_db'")" != 1 ]; then
      psql "$URL" -qc "CREATE DATABASE \"$bench_db\"" >/dev/null
    fi
    URL="${URL%/*}/$bench_db"
  fi
  # The postmaster is the parent of the checkpointer, which lives as long as the server.
  checkpointer="$(psql "$URL" -Atqc "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'" 2>/dev/null || true)"
  if [ -n "$checkpointer" ] && [ -r "/proc/$checkpointer/stat" ]; then
    POSTMASTER="$(sed 's/.*) //' "/proc/$checkpointer/stat" | awk '{print $2}')"
  fi
fi

# CPU ticks of the PostgreSQL server so far: the postmaster's own and its reaped children's,
# and its live children's.
pg_ticks() {
  [ -n "$POSTMASTER" ] || { echo 0; return; }
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v pm="$POSTMASTER" '
    { pid = $1; sub(/.*\) /, "") }
    pid == pm { s += $12 + $13 + $14 + $15 }
    $2 == pm { s += $12 + $13 }
    END { print s + 0 }'
}

# Busy and total ticks of all CPUs so far, from /proc/stat.
machine_ticks() {
  awk '/^cpu / {busy = $2 + $3 + $4 + $7 + $8 + $9; total = busy + $5 + $6; print busy, total}' /proc/stat
}

now() { date +%s.%N; }

# What the database's sessions of this run are doing, every 0.2 s, until killed: one `tick` row,
# then a row per state and wait (`active:cpu` is running or runnable; `active:Lock/...` waits
# for a row lock; `idle in transaction` waits for its worker).
SAMPLER="SELECT 'tick', 1 UNION ALL
  SELECT state || ':' || coalesce(wait_event_type || '/' || wait_event, 'cpu'), count(*)
  FROM pg_stat_activity
  WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
    AND datname = current_database() AND state <> 'idle'
  GROUP BY 1 \\watch 0.2"

# Mean sessions per tick: on CPU, waiting for a lock, idle in a transaction, anything else.
sessions() {
  awk -F'|' '
    $1 == "tick" { ticks++; next }
    $1 == "active:cpu" { cpu += $2; next }
    $1 ~ /^active:Lock\// { lock += $2; next }
    $1 ~ /^idle in transaction/ { idle += $2; next }
    { other += $2 }
    END { t = (ticks > 0) ? ticks : 1; printf "%.1f %.1f %.1f %.1f\n", cpu / t, lock / t, idle / t, other / t }' "$1"
}

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
RESULTS="$TMP/results"
: >"$RESULTS"

echo "orders_distributed: $ORDERS orders (seed $SEED) per run, $RUNS runs per configuration, $CORES cores"
echo "  database: $URL"
echo "  load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
[ -n "$POSTMASTER" ] && echo "  PostgreSQL postmaster: pid $POSTMASTER" \
  || echo "  PostgreSQL CPU not measured (server not local, or psql missing)"
echo

for conc in $CONCURRENCY; do
  for k in $WORKERS; do
    for run in $(seq 1 "$RUNS"); do
      "$BIN" --postgres "$URL" --orders "$ORDERS" --seed "$SEED" enqueue >/dev/null
      load="$(cut -d' ' -f1 /proc/loadavg)"
      pg_before="$(pg_ticks)"
      read -r busy_before total_before < <(machine_ticks)
      if [ "$HAVE_PSQL" = 1 ]; then
        printf '%s\n' "$SAMPLER" >"$TMP/sampler.sql"
        psql "$URL" -Atq -f "$TMP/sampler.sql" >"$TMP/sessions" 2>/dev/null &
        sampler=$!
      fi
      start="$(now)"
      pids=()
      for i in $(seq 1 "$k"); do
        /usr/bin/time -f '%e %U %S' -o "$TMP/time.$i" \
          "$BIN" --postgres "$URL" --concurrency "$conc" work --name "w$k-$i" --exit-when-idle \
          2>"$TMP/log.$i" &
        pids+=("$!")
      done
      failed=0
      for pid in "${pids[@]}"; do
        wait "$pid" || failed=1
      done
      end="$(now)"
      read -r busy_after total_after < <(machine_ticks)
      pg_after="$(pg_ticks)"
      db_sessions="-1 -1 -1 -1"
      if [ "$HAVE_PSQL" = 1 ]; then
        kill "$sampler" 2>/dev/null || true
        wait "$sampler" 2>/dev/null || true
        db_sessions="$(sessions "$TMP/sessions")"
      fi
      if [ "$failed" = 1 ]; then
        echo "a worker failed (concurrency $conc, $k workers, run $run):" >&2
        for i in $(seq 1 "$k"); do tail -n 5 "$TMP/log.$i" >&2; done
      fi
      report=ok
      "$BIN" --postgres "$URL" report >"$TMP/report" 2>&1 || report=BROKEN
      p95=""
      job_ms=""
      if [ "$HAVE_PSQL" = 1 ]; then
        p95="$(psql "$URL" -Atqc "SELECT extract(epoch FROM percentile_disc(0.95) WITHIN GROUP (ORDER BY done_at)) FROM apalis.jobs WHERE job_type = 'orders'")"
        # A job's last run, from its fetch (lock_at) to its settlement (done_at).
        job_ms="$(psql "$URL" -Atqc "SELECT 1000 * avg(extract(epoch FROM done_at - lock_at)) FROM apalis.jobs WHERE job_type = 'orders' AND done_at IS NOT NULL AND lock_at IS NOT NULL")"
      fi
      worker_cpu="$(cat "$TMP"/time.* | awk '{s += $2 + $3} END {print s}')"
      awk -v c="$conc" -v k="$k" -v run="$run" -v n="$ORDERS" -v s="$start" -v e="$end" \
        -v p95="$p95" -v wcpu="$worker_cpu" -v pg0="$pg_before" -v pg1="$pg_after" -v hz="$HZ" \
        -v b0="$busy_before" -v b1="$busy_after" -v t0="$total_before" -v t1="$total_after" \
        -v pm="$POSTMASTER" -v load="$load" -v report="$report" -v failed="$failed" \
        -v job_ms="$job_ms" -v db="$db_sessions" 'BEGIN {
          secs = e - s
          rate = n / secs
          p95rate = (p95 == "") ? -1 : 0.95 * n / (p95 - s)
          pgcpu = (pm == "") ? -1 : 100 * (pg1 - pg0) / hz / secs
          busy = 100 * (b1 - b0) / (t1 - t0)
          ms = (job_ms == "") ? -1 : job_ms
          ceiling = (job_ms == "") ? -1 : 1000 * k * c / job_ms
          split(db, d, " ")
          pg_ms = (pm == "") ? -1 : 1000 * (pg1 - pg0) / hz / n
          printf "%s %s %s %.3f %.1f %.1f %.0f %.0f %.0f %s %s %s %.0f %.0f %.2f %.2f %s %s %s %s\n", c, k, run,
            secs, rate, p95rate, 100 * wcpu / secs, pgcpu, busy, load, report, failed, ms, ceiling,
            1000 * wcpu / n, pg_ms, d[1], d[2], d[3], d[4]
        }' >>"$RESULTS"
      tail -n 1 "$RESULTS" | awk '{printf "  concurrency %s, %s worker(s), run %s: %.2f s, %.1f orders/s (p95 %.1f), job %s ms (ceiling %s/s), CPU %% workers %s, PostgreSQL %s, machine busy %s; CPU ms/order workers %s, PostgreSQL %s; db sessions cpu %s, lock %s, idle-in-tx %s, other %s; load %s, report %s\n", $1, $2, $3, $4, $5, $6, $13, $14, $7, $8, $9, $15, $16, $17, $18, $19, $20, $10, $11}'
    done
  done
done

echo
echo "ranges over $RUNS runs (min..max), $CORES cores"
printf '%-5s %-8s %-10s %-10s %-9s %-10s %-8s %-8s %-8s %-11s %-11s %-9s %-9s %-9s %-10s %s\n' \
  conc workers "orders/s" "p95 ord/s" "job ms" "ceiling/s" "workers" "PG" "machine" "workers" "PG" \
  "db cpu" "db lock" "db idle" "seconds" "report"
printf '%-5s %-8s %-10s %-10s %-9s %-10s %-8s %-8s %-8s %-11s %-11s %-9s %-9s %-9s %-10s %s\n' \
  "" "" "" "" "" "(K*C/job)" "CPU %" "CPU %" "busy %" "ms/order" "ms/order" "sessions" \
  "sessions" "in tx" "" ""
awk '
  function range(lo, hi, fmt) { return (sprintf(fmt, lo) == sprintf(fmt, hi)) ? sprintf(fmt, lo) : sprintf(fmt ".." fmt, lo, hi) }
  function r(key, f, fmt) { return range(lo[key, f], hi[key, f], fmt) }
  {
    key = $1 " " $2
    if (!(key in n)) { order[++keys] = key; conc[key] = $1; work[key] = $2 }
    n[key]++
    for (f = 4; f <= 20; f++) {
      if (f >= 10 && f <= 12) continue
      if (n[key] == 1 || $f < lo[key, f]) lo[key, f] = $f
      if (n[key] == 1 || $f > hi[key, f]) hi[key, f] = $f
    }
    if ($11 == "ok" && $12 == 0) ok[key]++
  }
  END {
    for (i = 1; i <= keys; i++) {
      key = order[i]
      printf "%-5s %-8s %-10s %-10s %-9s %-10s %-8s %-8s %-8s %-11s %-11s %-9s %-9s %-9s %-10s %d/%d ok\n",
        conc[key], work[key], r(key, 5, "%.0f"), r(key, 6, "%.0f"), r(key, 13, "%.0f"),
        r(key, 14, "%.0f"), r(key, 7, "%.0f"), r(key, 8, "%.0f"), r(key, 9, "%.0f"),
        r(key, 15, "%.1f"), r(key, 16, "%.1f"), r(key, 17, "%.1f"), r(key, 18, "%.1f"),
        r(key, 19, "%.1f"), r(key, 4, "%.1f"), ok[key] + 0, n[key]
    }
  }' "$RESULTS"
echo "(orders/s: until every worker has exited; p95: until 95 % of the jobs were settled;"
echo " job ms: mean time of a job's last run, fetch to settlement; ceiling: what K workers with"
echo " C jobs in flight each could do at that job time; CPU % of one core, busy % of all cores;"
echo " db sessions: mean sessions of the run's database on CPU (or runnable), waiting for a lock,"
echo " idle in a transaction (waiting for their worker), sampled every 0.2 s)"
