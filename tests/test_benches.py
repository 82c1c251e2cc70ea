"""Every benchmark still runs: once each, on a small size, printing its JSON line last.

These are not timed tests: the figures of a run this small mean nothing, and nothing here
compares them. What is checked is that each benchmark works from a clean clone (its set-up,
its baseline, its clean-up) and reports the named figures its docstring promises.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# (script, small arguments, figures its last line must name)
BENCHES = [
    ("command_path.py", ["--clients", "4", "--duration", "1", "--warmup", "0.2", "--rounds", "2"],
     ["splice_cmds_per_s", "raw_publish_per_s", "ratio", "ratios",
      "splice_update_cpu_ms_per_cmd"]),
    ("command_path.py", ["--clients", "4", "--duration", "1", "--warmup", "0.2", "--rounds", "1",
                         "--services", "2"], ["ratio", "services"]),
    ("command_cost.py", ["--commands", "10", "30", "--clients", "4"],
     ["instructions_per_command", "instructions_per_raw_publish", "ratio"]),
    ("group_commit.py", ["--threads", "4", "--writes", "5", "--rounds", "1"],
     ["direct_per_s", "batch_inflight_1_per_s", "batch_vs_direct"]),
    ("stats_read.py", ["--n", "3"], []),
    ("replay.py", ["--events", "1500", "--backend", "both"],
     ["raw_read_per_s", "ratio", "postgres_ratio", "raw_read_splice_client_per_s",
      "ratio_splice_client", "postgres_ratio_splice_client"]),
    ("time_to_serve.py", ["--runs", "1"], ["splice_s", "script_s", "ratio"]),
    ("converge_many.py", ["--lbs", "3", "5", "--sample", "2", "--workers", "2"],
     ["splice_per_lb_s", "script_per_lb_s", "ratio", "ratio_3", "ratio_5"]),
    ("log_growth.py", ["--small", "300", "--events", "3000", "--aggregates", "2", "--history",
                       "3", "--clients", "2", "--commands", "20", "--rounds", "1"],
     ["ratio_p50", "ratio_p99", "ratio", "cold_ratio", "read_ratio"]),
    ("reloads.py", ["--changes", "4", "--baseline", "2", "--clients", "1", "--rate", "50"],
     ["failed_requests", "reload_p50_ms", "reload_p99_ms", "bare_reload_p50_ms", "ratio"]),
    ("routed.py", ["--runs", "1"], ["splice_s", "script_s", "ratio"]),
    ("chain.py", ["--runs", "1"], ["create_ratio", "throughput_ratio"]),
    ("l4.py", ["--rounds", "1", "--seconds", "0.5", "--clients", "1", "--latency-n", "20"],
     []),
    ("failover.py", ["--runs", "1"], ["failover_s_median", "failover_s_max"]),
]


@pytest.mark.bench
@pytest.mark.parametrize(("script", "args", "figures"), BENCHES,
                         ids=[f"{s}{'+' + a[-1] if '--services' in a else ''}"
                              for s, a, _ in BENCHES])
def test_a_benchmark_runs_and_ends_with_its_figures(
        script: str, args: list[str], figures: list[str]) -> None:
    run = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    last = run.stdout.strip().splitlines()[-1]
    result = json.loads(last)
    assert isinstance(result, dict) and result, last
    missing = [f for f in figures if f not in result]
    assert not missing, f"{script} did not report {missing}: {last}"
