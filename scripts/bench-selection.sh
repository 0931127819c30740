#!/usr/bin/env bash
# What process selection costs and saves, beside an unfiltered run in the same script.
#
# 1. One busy process (the 20-frame C workload of bench-ebpf.sh, native unwinding) at
#    999 Hz on CPU 0, in a cgroup of its own, under three settings: no rules (it is
#    walked), `exclude` of its cgroup and an `include` of another cgroup (it is skipped
#    before any walk). Only CPU 0 is sampled and the agent runs on CPU 1, so the
#    program's runs are the workload's samples. Per run, over the workload's run: the
#    eBPF program's run time (kernel.bpf_stats_enabled) and the agent's CPU.
# 2. A node of ten busy processes, nine of them excluded (90 % of the node), against no
#    rules: the agent's total CPU and BPF time over the same run.
#
# Needs root.   Usage: [ROUNDS=3] [NODE=0 (skips part 2)] scripts/bench-selection.sh [SECONDS]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
long="${1:-20}"
work="$(mktemp -d)"
old_stats="$(sysctl -n kernel.bpf_stats_enabled)"
v2="$(awk '$3 == "cgroup2" { print $2; exit }' /proc/self/mounts)"
[ -n "$v2" ] || { echo "no cgroup v2 hierarchy is mounted" >&2; exit 1; }
cg="stackline-bench-$$"
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  pkill -f "$work/" 2>/dev/null || true
  sleep 0.2
  for d in "$v2/$cg"/*/; do rmdir "$d" 2>/dev/null || true; done
  rmdir "$v2/$cg" 2>/dev/null || true
  sysctl -qw kernel.bpf_stats_enabled="$old_stats" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
command -v gcc >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc; }
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
exe="$root/target/release/stackline"
gcc -O2 -g -fno-omit-frame-pointer -shared -fPIC -o "$work/libunwhot.so" "$root/tests/workloads/unwhot.c"
gcc -O2 -g -fno-omit-frame-pointer -DWITH_LIB -o "$work/unwind" "$root/tests/workloads/unwind.c" \
  -L"$work" -lunwhot -Wl,-rpath,"$work" -lpthread -ldl
mkdir -p "$v2/$cg/mine" "$v2/$cg/other"
for i in $(seq 0 9); do mkdir -p "$v2/$cg/w$i"; done
sysctl -qw kernel.bpf_stats_enabled=1
# This script and what it runs to measure (curl, python, awk) stay on CPU 1: CPU 0 is the
# workload's alone, so the program's runs there are the workload's samples (otherwise
# the few samples of new helper processes, walked without tables yet, moved the
# per-run figures by up to 0.2 µs between runs). Workloads and the agent set their own.
taskset -cp 1 $$ >/dev/null

cpu_ms() { python3 -c 'import sys, time; p = int(sys.argv[1]); print("%.6f" % (time.clock_gettime(((~p) << 3) | 2) * 1e3))' "$1"; }
# The sum of metric $1's series (those whose labels contain $3, if given).
metric() { curl -s "http://127.0.0.1:$2/metrics" | awk -v n="$1" -v l="${3:-}" '$1 ~ "^"n"({|$)" && index($1, l) { s += $NF } END { printf "%.9f\n", s + 0 }'; }
# Runs `unwind deep SECONDS` in cgroup $1 on CPU $2, and waits for it.
in_cgroup() { sh -c "echo \$\$ > $v2/$cg/$1/cgroup.procs && exec taskset -c $2 $work/unwind deep $3" >/dev/null; }

agent_start() { # SELECTION_YAML [CPUS_YAML AGENT_CPU] → sets $agent and $port
  port=$((19000 + RANDOM % 900))
  cat > "$work/agent.yaml" <<YAML
receivers:
  ebpf_profiler:
    sampling_frequency: 999
    cpus: ${2:-null}
    selection: $1
processors: { symbolizer: {}, batch: {} }
exporters: { file: { path: "$work/out.binpb", format: proto } }
service:
  pipelines: { profiles: { receivers: [ebpf_profiler], processors: [symbolizer, batch], exporters: [file] } }
  telemetry: { metrics: { address: "127.0.0.1:$port" }, logs: { level: warn } }
YAML
  taskset -c "${3:-0-1}" "$exe" --config "$work/agent.yaml" 2>"$work/agent.log" &
  agent=$!
  until curl -sf "http://127.0.0.1:$port/metrics" >/dev/null; do sleep 0.05; done
  until [ "$(metric stackline_ebpf_program_runs_total $port | cut -d. -f1)" -gt 0 ]; do sleep 0.02; done
  # Warm-up: tables and symbols of the workload's binary are built before measuring.
  in_cgroup mine 0 2; sleep 2
}
# Runs and run time are the sampler's (the process-change programs run per exec, not per
# sample), except in the node totals, which add theirs.
sampler='program="stackline_sample"'
snap() { echo "$(metric stackline_ebpf_program_runs_total $port $sampler) $(cpu_ms $agent) $(metric stackline_ebpf_program_run_time_seconds $port ${1:-$sampler}) $(metric stackline_ebpf_samples_total $port)"; }
delta() { awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " "); printf "%.0f %.3f %.6f %.0f", y[1]-x[1], y[2]-x[2], y[3]-x[3], y[4]-x[4] }'; }

one_run() { # SELECTION SECONDS → "runs cpu_ms bpf_s samples"
  # The workload alone on CPU 0, sampled there only; the agent on CPU 1, unsampled.
  agent_start "$1" "[0]" 1
  local a b
  a=$(snap); in_cgroup mine 0 "$2"; sleep 1.5; b=$(snap)
  kill -INT $agent; wait $agent 2>/dev/null || true
  delta "$a" "$b"
}

# Run to run, the per-run figures move by up to ±0.05 µs on this VM: each setting runs
# ROUNDS times (default 3), the settings interleaved, and the median is printed with the
# range.
rounds="${ROUNDS:-3}"
echo "One busy process at 999 Hz on CPU 0 for ${long}s, only CPU 0 sampled, the agent on CPU 1: per run of the"
echo "program (a run is a sample taken or skipped), and the share of runs kept; median of $rounds rounds"
labels=("no rules (walked)" "paused (probabilistic, the floor)" "exclude its cgroup (skipped)"
  "include another cgroup (skipped)" "exclude by executable (user space once)")
# The floor: a program run that returns at its first check (sampling paused nearly always).
settings=("{}" "{}"$'\n'"    probabilistic: { fraction: 0.000001 }"
  "{ exclude: [{ cgroup: \"/$cg/mine\" }] }" "{ include: [{ cgroup: \"/$cg/other\" }] }"
  "{ exclude: [{ executable: \"$work/unwind\" }] }")
for r in $(seq 1 "$rounds"); do
  for i in "${!settings[@]}"; do
    echo "$i $(one_run "${settings[$i]}" "$long")" >> "$work/runs"
  done
done
printf '%-40s %10s %15s %10s %12s\n' "setting" "BPF µs" "(range)" "agent µs" "kept/runs"
for i in "${!settings[@]}"; do
  awk -v i="$i" '$1 == i { n++; bpf[n] = $4 * 1e6 / $2; agent[n] = $3 * 1e3 / $2; kept[n] = $5 / $2 }
    function median(v, n,   j, k, t) { for (j = 1; j <= n; j++) for (k = j + 1; k <= n; k++) if (v[k] < v[j]) { t = v[j]; v[j] = v[k]; v[k] = t }
      return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2 }
    END { lo = hi = bpf[1]; for (j = 2; j <= n; j++) { if (bpf[j] < lo) lo = bpf[j]; if (bpf[j] > hi) hi = bpf[j] }
      printf "%-40s %10.3f %7.3f–%-7.3f %10.2f %12.3f\n", label, median(bpf, n), lo, hi, median(agent, n), median(kept, n) }' \
    label="${labels[$i]}" "$work/runs"
done
[ "${NODE:-1}" = 1 ] || exit 0
echo
echo "A node of ten busy processes on both CPUs, ${long}s: totals"
printf '%-40s %10s %10s %10s\n' "setting" "agent ms" "BPF ms" "samples"
node() { # LABEL SELECTION
  agent_start "$2"
  local a b pids=()
  # Each workload joins its cgroup and waits at a gate, so the shells that launch them
  # (sampled where they start, before they join) are not inside the measured span.
  rm -f "$work/gate"; mkfifo "$work/gate"
  for i in $(seq 0 9); do
    sh -c "echo \$\$ > $v2/$cg/w$i/cgroup.procs; read _ < $work/gate; exec taskset -c $((i % 2)) $work/unwind deep $long" >/dev/null &
    pids+=($!)
  done
  sleep 2
  a=$(snap program=)
  for i in $(seq 0 9); do echo go; done > "$work/gate"
  wait "${pids[@]}"
  sleep 1.5; b=$(snap program=)
  kill -INT $agent; wait $agent 2>/dev/null || true
  awk -v a="$a" -v b="$b" -v label="$1" 'BEGIN { split(a, x, " "); split(b, y, " ");
    printf "%-40s %10.0f %10.1f %10.0f\n", label, y[2]-x[2], (y[3]-x[3]) * 1e3, y[4]-x[4] }'
}
node_idle() { # the agent alone for the same time: its floor (its own samples, intervals, metrics)
  agent_start "{}"
  local a b
  a=$(snap program=); sleep "$long"; sleep 1.5; b=$(snap program=)
  kill -INT $agent; wait $agent 2>/dev/null || true
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " ");
    printf "%-40s %10.0f %10.1f %10.0f\n", "no workload (the agent alone)", y[2]-x[2], (y[3]-x[3]) * 1e3, y[4]-x[4] }'
}
node_idle
node "no rules" "{}"
rules=""
for i in $(seq 1 9); do rules="$rules{ cgroup: \"/$cg/w$i\" },"; done
node "9 of 10 excluded by cgroup" "{ exclude: [${rules%,}] }"
