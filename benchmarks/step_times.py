"""Print each step of the instance's latest Dagster run with its wall time (seconds, share of the run), slowest first.

    DAGSTER_HOME=... python benchmarks/step_times.py [RUN_ID]
"""

from __future__ import annotations

import sys

import dagster as dg


def main() -> None:
    instance = dg.DagsterInstance.get()
    runs = instance.get_runs(filters=dg.RunsFilter(run_ids=[sys.argv[1]]) if len(sys.argv) > 1 else None, limit=1)
    if not runs:
        sys.exit(f"no run in the Dagster instance at {instance.root_directory}: materialize something first")
    run = runs[0]
    stats = [s for s in instance.get_run_step_stats(run.run_id) if s.start_time and s.end_time]
    total = sum(s.end_time - s.start_time for s in stats)
    print(f"run {run.run_id} ({run.status.value}): {len(stats)} steps, {total:.1f} s of step time")
    for s in sorted(stats, key=lambda s: s.start_time - s.end_time):
        seconds = s.end_time - s.start_time
        print(f"  {s.step_key:<40} {seconds:>8.1f} s  {seconds / max(total, 1e-9):>5.1%}  {s.status.value if s.status else ''}")


if __name__ == "__main__":
    main()
