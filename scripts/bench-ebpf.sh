#!/usr/bin/env bash
# Overhead of the eBPF profiler beside `perf record -g`, on the same CPU-bound workload
# in the same run, at 20, 99 and 999 Hz. Prints, per 1000 samples, the agent's CPU
# time (user+sys), the BPF program's run time in the kernel (kernel.bpf_stats_enabled)
# and perf's CPU time, and the ratio. Needs root.   Usage: scripts/bench-ebpf.sh [SECONDS]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
secs="${1:-8}"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; sysctl -qw kernel.bpf_stats_enabled="$old_stats" 2>/dev/null || true; rm -rf "$work"' EXIT

command -v perf >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf; }
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
gcc -O1 -g -fno-omit-frame-pointer -o "$work/cpu_shares" "$root/tests/workloads/cpu_shares.c"
old_stats="$(sysctl -n kernel.bpf_stats_enabled)"
sysctl -qw kernel.bpf_stats_enabled=1
ncpu="$(nproc)"
tck="$(getconf CLK_TCK)"

cpu_ms() { # user+sys CPU time of a pid, in ms
  awk -v t="$tck" '{ sub(/^.*\) /, ""); print ($12 + $13) * 1000 / t }' "/proc/$1/stat"
}
metric() { # value of a Prometheus series (sum over label sets)
  curl -s "http://127.0.0.1:$2/metrics" | awk -v n="$1" '$1 ~ "^"n"({|$)" { s += $NF } END { printf "%.9f\n", s + 0 }'
}
workload() { for _ in $(seq "$ncpu"); do "$work/cpu_shares" "$1" >/dev/null & done; }

printf '%-6s | %-40s | %-28s | %s\n' "Hz" "stackline: samples, CPU ms/1000, BPF ms/1000" "perf -g: samples, CPU ms/1000" "stackline/perf (CPU+BPF vs CPU)"
for hz in 20 99 999; do
  port=$((18900 + hz % 100))
  cat > "$work/agent.yaml" <<YAML
receivers: { ebpf_profiler: { sampling_frequency: $hz, report_interval: 1s } }
processors: { batch: {} }
exporters: { file: { path: "$work/out-$hz.jsonl" } }
service:
  pipelines: { profiles: { receivers: [ebpf_profiler], processors: [batch], exporters: [file] } }
  telemetry: { metrics: { address: "127.0.0.1:$port" }, logs: { level: warn } }
YAML
  "$root/target/release/stackline" --config "$work/agent.yaml" 2>"$work/agent-$hz.log" &
  agent=$!
  until curl -sf "http://127.0.0.1:$port/health" >/dev/null; do sleep 0.2; done
  s0=$(metric stackline_ebpf_samples_total $port); c0=$(cpu_ms $agent); b0=$(metric stackline_ebpf_program_run_time_seconds $port)
  workload "$secs"; sleep "$secs"; wait_for=$(jobs -p | grep -v "^$agent$" || true); [ -z "$wait_for" ] || wait $wait_for 2>/dev/null || true
  sleep 1.5
  s1=$(metric stackline_ebpf_samples_total $port); c1=$(cpu_ms $agent); b1=$(metric stackline_ebpf_program_run_time_seconds $port)
  kill -INT $agent; wait $agent || true

  workload "$secs"
  /usr/bin/env time -f '%U %S' -o "$work/perf-time-$hz" perf record -q -g -a -F "$hz" -o "$work/perf-$hz.data" -- sleep "$secs" 2>"$work/perf-$hz.err" || true
  wait 2>/dev/null || true
  psamples=$(perf report -i "$work/perf-$hz.data" --stats 2>/dev/null | awk '/SAMPLE events:/ { print $3; exit }')
  [ -n "$psamples" ] || psamples=$(perf script -i "$work/perf-$hz.data" -F period 2>/dev/null | wc -l)
  pcpu=$(tail -1 "$work/perf-time-$hz" | awk '{ print ($1 + $2) * 1000 }')

  awk -v hz="$hz" -v s="$(echo "$s1 - $s0" | bc)" -v c="$(echo "$c1 - $c0" | bc)" -v b="$(echo "($b1 - $b0) * 1000" | bc -l)" -v ps="$psamples" -v pc="$pcpu" 'BEGIN {
    a = (s > 0) ? c * 1000 / s : 0; k = (s > 0) ? b * 1000 / s : 0; p = (ps > 0) ? pc * 1000 / ps : 0;
    printf "%-6s | %8d samples %8.2f ms %8.3f ms  | %8d samples %8.2f ms | %.2f\n", hz, s, a, k, ps, p, (p > 0) ? (a + k) / p : 0 }'
done
