#!/usr/bin/env bash
# The eBPF profiler's own cost, beside its peers in the same run, by the marginal
# method: each configuration runs a SHORT and a LONG workload and the per-sample cost
# is (cost_long - cost_short) / (samples_long - samples_short), so start-up cancels out.
#
# Stackline runs the pipeline users run: ebpf_profiler -> symbolizer -> batch -> file
# (proto), default 5 s report interval, at 99 and 999 Hz, in frame-pointer and native (auto) unwinding mode, on one
# busy CPU running a 20-frame-deep C workload built with frame pointers (so both modes
# walk the same stacks). Peers: perf record -g, perf record --call-graph dwarf, and
# bpftrace (profile probe aggregating user stacks in the kernel).
#
# Prints per sample: agent CPU, BPF run time (kernel.bpf_stats_enabled) and their
# total; the peers' process CPU; start-up CPU (before the first sample is read) and
# anonymous and file-backed RSS; a line for a node with many processes; and, on a
# workload built without frame pointers, the share of samples that reach main for
# Stackline (auto mode) and both perf modes.
#
# Last, the agent at 20 Hz for BENCH_20HZ_SECONDS (default 600) beside the same busy
# workload: its CPU as a share of one core, start-up included.
#
# Each Stackline line is the median of BENCH_REPEAT (default 3) pairs of runs;
# BENCH_RATES (default "99 999") picks the rates of the per-sample lines, BENCH_MODES
# (default "frame_pointer auto") their unwinding modes.
#
# Needs root.   Usage: scripts/bench-ebpf.sh [SHORT_SECONDS] [LONG_SECONDS]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
short="${1:-10}"
long="${2:-40}"
# The 20 Hz line's duration (the goal is stated over 10 minutes); 0 skips it.
low_rate_secs="${BENCH_20HZ_SECONDS:-600}"
# Sampling rates of the per-sample lines (the goals are stated at 999 Hz).
rates="${BENCH_RATES:-99 999}"
modes="${BENCH_MODES:-frame_pointer auto}"
# Pairs of runs per Stackline line (the median is printed).
reps="${BENCH_REPEAT:-3}"
[[ $reps =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_REPEAT must be a whole number of at least 1, not '$reps'" >&2; exit 2; }
work="$(mktemp -d)"
old_stats="$(sysctl -n kernel.bpf_stats_enabled)"
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  pkill -f "$work/" 2>/dev/null || true
  sysctl -qw kernel.bpf_stats_enabled="$old_stats" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

need=()
command -v perf >/dev/null || need+=(linux-perf)
command -v bpftrace >/dev/null || need+=(bpftrace)
command -v gcc >/dev/null || need+=(gcc)
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"; fi
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
exe="$root/target/release/stackline"

# Workloads: with frame pointers (cost), without (reaching main), same library.
mkdir -p "$work/fp" "$work/nofp"
for v in fp nofp; do
  flags="-O2 -g -fomit-frame-pointer"
  [ "$v" = fp ] && flags="-O2 -g -fno-omit-frame-pointer -mno-omit-leaf-frame-pointer"
  gcc $flags -shared -fPIC -o "$work/$v/libunwhot.so" "$root/tests/workloads/unwhot.c"
  gcc $flags -DWITH_LIB -o "$work/$v/unwind" "$root/tests/workloads/unwind.c" \
    -L"$work/$v" -lunwhot -Wl,-rpath,"$work/$v" -lpthread -ldl
done
sysctl -qw kernel.bpf_stats_enabled=1

cpu_ms() { # CPU time of a live process (all its threads, exited ones included), in ms,
  # from its CPU clock in nanoseconds (/proc/PID/stat counts 10 ms ticks)
  python3 -c 'import sys, time; p = int(sys.argv[1]); print("%.6f" % (time.clock_gettime(((~p) << 3) | 2) * 1e3))' "$1"
}
metric() { # value of a Prometheus series (sum over label sets)
  curl -s "http://127.0.0.1:$2/metrics" | awk -v n="$1" '$1 ~ "^"n"({|$)" { s += $NF } END { printf "%.9f\n", s + 0 }'
}
rss_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
workload() { # MODE SECONDS on CPU 0, waits for it
  taskset -c 0 "$work/fp/unwind" "$1" "$2" >/dev/null
}

# One Stackline run: prints "samples cpu_ms bpf_ms startup_ms anon_kib file_kib".
stackline_run() { # UNWIND_MODE HZ SECONDS [EXTRA_LOAD_CMD]
  local mode=$1 hz=$2 secs=$3 port=$((19000 + RANDOM % 900))
  cat > "$work/agent.yaml" <<YAML
receivers: { ebpf_profiler: { sampling_frequency: $hz, unwind: { mode: $mode } } }
processors: { symbolizer: {}, batch: {} }
exporters: { file: { path: "$work/out.binpb", format: proto } }
service:
  pipelines: { profiles: { receivers: [ebpf_profiler], processors: [symbolizer, batch], exporters: [file] } }
  telemetry: { metrics: { address: "127.0.0.1:$port" }, logs: { level: warn } }
YAML
  rm -f "$work/out.binpb"
  "$exe" --config "$work/agent.yaml" 2>"$work/agent.log" &
  local agent=$! startup=""
  until curl -sf "http://127.0.0.1:$port/metrics" >/dev/null; do sleep 0.05; done
  until [ "$(metric stackline_ebpf_samples_total $port | cut -d. -f1)" -gt 0 ]; do
    sleep 0.02
  done
  # Start-up: the process's CPU when the receiver read its first sample (its own gauge).
  startup=$(metric stackline_ebpf_startup_cpu_seconds $port | awk '{ printf "%.1f", $1 * 1000 }')
  # Warm-up: the workload's binary gets its tables and symbols, and the first reports
  # are made, before the measured run (a new process of the same binary). Without it,
  # first-time symbolization (about 100 ms) landed in one run of a pair or the other
  # and moved a single pair's agent CPU by ±1.5 µs per sample.
  workload deep 2
  sleep 6
  local s0 c0 b0 s1 c1 b1
  s0=$(metric stackline_ebpf_samples_total $port); c0=$(cpu_ms $agent); b0=$(metric stackline_ebpf_program_run_time_seconds $port)
  workload deep "$secs"
  sleep 1.5
  s1=$(metric stackline_ebpf_samples_total $port); c1=$(cpu_ms $agent); b1=$(metric stackline_ebpf_program_run_time_seconds $port)
  local anon file
  anon=$(rss_kib $agent RssAnon); file=$(rss_kib $agent RssFile)
  kill -INT $agent; wait $agent || true
  echo "$(echo "$s1 - $s0" | bc) $(echo "$c1 - $c0" | bc) $(echo "($b1 - $b0) * 1000" | bc -l) $startup $anon $file"
}

# Runs a command under `perf stat`, whose task-clock is its CPU (and its children's) in
# ns; `time` gives 10 ms ticks. A peer line is one pair of runs: its start-up varies
# more than its per-sample cost, so it can still come out below zero.
clock() { perf stat -x, -e task-clock -o "$work/time" -- "$@"; }

# One peer run: prints "samples cpu_ms".
peer_run() { # TOOL HZ SECONDS
  local tool=$1 hz=$2 secs=$3
  taskset -c 0 "$work/fp/unwind" deep "$secs" > "$work/wl.out" &
  local wl=$!
  case $tool in
    perf-fp)
      clock perf record -q -g -F "$hz" -p $wl -o "$work/perf.data" >/dev/null 2>&1 || true
      ;;
    perf-dwarf)
      clock perf record -q --call-graph dwarf -F "$hz" -p $wl -o "$work/perf.data" >/dev/null 2>&1 || true
      ;;
    bpftrace)
      clock bpftrace -q -e "profile:hz:$hz /pid == $wl/ { @[ustack] = count(); @n = count(); } interval:s:$secs { exit(); }" > "$work/bt.out" 2>/dev/null || true
      ;;
  esac
  wait $wl 2>/dev/null || true
  local samples cpu
  if [ "$tool" = bpftrace ]; then
    samples=$(awk '/^@n:/ { print $2 }' "$work/bt.out")
  else
    samples=$(perf report -i "$work/perf.data" --stats 2>/dev/null | awk '/SAMPLE events:/ { print $3; exit }')
  fi
  cpu=$(awk -F, '$3 ~ /^task-clock/ { print $1 }' "$work/time")
  echo "${samples:-0} ${cpu:-0}"
}

per_sample() { # SHORT_LINE LONG_LINE FIELD: marginal cost of FIELD per sample, in µs
  awk -v a="$1" -v b="$2" -v f="$3" 'BEGIN { split(a, x, " "); split(b, y, " ");
    ds = y[1] - x[1]; printf "%.2f", (ds > 0) ? (y[f] - x[f]) * 1000 / ds : 0 }'
}
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 }
  END { printf "%.2f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
spread() { tr ' ' '\n' | grep -v '^$' | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.1f..%.1f", lo, hi }'; }

# One table line for Stackline: BENCH_REPEAT pairs of runs; the CPU, BPF and total
# columns are medians over the pairs, start-up and memory are the last long run's.
# The agent's CPU per sample moves by about 2 µs between single pairs (its per-interval
# work is not proportional to samples), hence the repeats and the range beside it.
stackline_line() { # LABEL UNWIND_MODE HZ
  local cs="" ks="" ts="" a b c k last=""
  for _ in $(seq "$reps"); do
    a=$(stackline_run "$2" "$3" "$short"); b=$(stackline_run "$2" "$3" "$long")
    c=$(per_sample "$a" "$b" 2); k=$(per_sample "$a" "$b" 3)
    cs="$cs $c"; ks="$ks $k"; ts="$ts $(echo "$c + $k" | bc -l)"; last=$b
  done
  local st an fi
  read -r _ _ _ st an fi <<< "$last"
  printf '%-6s %-34s %9s %9s %9s %11s %9.1f %9.1f %11s\n' "$3" "$1" "$(median <<< "$cs")" \
    "$(median <<< "$ks")" "$(median <<< "$ts")" "$st" "$(echo "$an / 1024" | bc -l)" \
    "$(echo "$fi / 1024" | bc -l)" "$(spread <<< "$cs")"
}

echo "Marginal cost per sample: a ${short}s and a ${long}s run of a 20-frame C workload on one busy CPU."
echo "Stackline lines: median of $reps pairs (BENCH_REPEAT); CPU range: the pairs' lowest and highest agent CPU."
printf '%-6s %-34s %9s %9s %9s %11s %9s %9s %11s\n' Hz "profiler" "CPU µs" "BPF µs" "total µs" "startup ms" "anon MiB" "file MiB" "CPU range"
for hz in $rates; do
  for mode in $modes; do
    stackline_line "stackline ($mode)" $mode $hz
  done
  for tool in perf-fp perf-dwarf bpftrace; do
    a=$(peer_run $tool $hz "$short"); b=$(peer_run $tool $hz "$long")
    printf '%-6s %-34s %9s %9s %9s\n' "$hz" "$tool (process CPU only)" "$(per_sample "$a" "$b" 2)" "-" "-"
  done
done

# A node with many processes: 300 idle ones, and a short-lived one every 20 ms.
for i in $(seq 300); do sleep 3600 & done
( while true; do /bin/true; sleep 0.02; done ) &
stackline_line "stackline (auto), 300+ processes" auto 999
kill $(jobs -p) 2>/dev/null || true
wait 2>/dev/null || true

# 20 Hz over a long run: the agent's CPU as a share of one core, start-up included.
if [ "$low_rate_secs" -gt 0 ]; then
  port=$((19000 + RANDOM % 900))
  cat > "$work/low.yaml" <<YAML
receivers: { ebpf_profiler: { sampling_frequency: 20 } }
processors: { symbolizer: {}, batch: {} }
exporters: { file: { path: "$work/low.binpb", format: proto } }
service:
  pipelines: { profiles: { receivers: [ebpf_profiler], processors: [symbolizer, batch], exporters: [file] } }
  telemetry: { metrics: { address: "127.0.0.1:$port" }, logs: { level: warn } }
YAML
  taskset -c 0 "$work/fp/unwind" deep "$((low_rate_secs + 5))" >/dev/null &
  wl=$!
  "$exe" --config "$work/low.yaml" 2>"$work/low.log" &
  agent=$!
  t0=$(date +%s.%N)
  sleep "$low_rate_secs"
  c=$(cpu_ms $agent); t1=$(date +%s.%N)
  an=$(rss_kib $agent RssAnon)
  kill -INT $agent; wait $agent || true
  kill $wl 2>/dev/null || true; wait $wl 2>/dev/null || true
  echo
  awk -v c="$c" -v t0="$t0" -v t1="$t1" -v an="$an" 'BEGIN {
    printf "20 Hz, auto mode, one busy CPU, %.0f s: agent CPU %.1f ms = %.3f %% of one core (start-up included), anon %.1f MiB\n", t1 - t0, c, c / ((t1 - t0) * 10), an / 1024 }'
fi

# Samples that reach main, on the workload built without frame pointers.
echo
echo "Samples of a -O2 -fomit-frame-pointer workload that reach main (99 Hz, ${long}s):"
port=$((19000 + RANDOM % 900))
cat > "$work/reach.yaml" <<YAML
receivers: { ebpf_profiler: { sampling_frequency: 99, report_interval: 1s } }
processors: { symbolizer: {} }
exporters: { file: { path: "$work/reach.jsonl" } }
service:
  pipelines: { profiles: { receivers: [ebpf_profiler], processors: [symbolizer], exporters: [file] } }
  telemetry: { metrics: { address: "127.0.0.1:$port" }, logs: { level: warn } }
YAML
"$exe" --config "$work/reach.yaml" 2>"$work/reach.log" &
agent=$!
until curl -sf "http://127.0.0.1:$port/metrics" >/dev/null; do sleep 0.05; done
sleep 2
pid=$(taskset -c 0 "$work/nofp/unwind" shares "$long" | awk '{ print $2 }')
sleep 1.5
kill -INT $agent; wait $agent || true
python3 - "$work/reach.jsonl" "$pid" <<'PY'
import json, sys
path, pid = sys.argv[1], sys.argv[2]
total = reached = 0
for line in open(path):
    r = json.loads(line)
    d = r.get("dictionary", {})
    strings = d.get("stringTable", [])
    attrs = d.get("attributeTable", [])
    def attr(i):
        a = attrs[i]
        v = a.get("value", {})
        return strings[a.get("keyStrindex", 0)], str(v.get("intValue", v.get("stringValue", "")))
    for rp in r.get("resourceProfiles", []):
        for sp in rp.get("scopeProfiles", []):
            for p in sp.get("profiles", []):
                for s in p.get("samples", []):
                    if dict(attr(i) for i in s.get("attributeIndices", [])).get("process.pid") != pid:
                        continue
                    total += 1
                    stack = d["stackTable"][s.get("stackIndex", 0)]
                    names = set()
                    for li in stack.get("locationIndices", []):
                        for line in d["locationTable"][li].get("lines", []):
                            names.add(strings[d["functionTable"][line.get("functionIndex", 0)].get("nameStrindex", 0)])
                    reached += "main" in names
print(f"  stackline (auto)              {reached}/{total} = {100 * reached / max(total, 1):.1f}%")
PY
for mode in fp dwarf; do
  cg=$([ $mode = fp ] && echo "-g" || echo "--call-graph dwarf")
  taskset -c 0 "$work/nofp/unwind" shares "$long" >/dev/null &
  wl=$!
  perf record -q $cg -F 99 -p $wl -o "$work/reach.data" >/dev/null 2>&1 || true
  wait $wl || true
  perf script -i "$work/reach.data" -F comm,ip,sym 2>/dev/null | awk '
    /^[^ \t]/ { if (n) { total++; reached += hit } n = 1; hit = 0; next }
    $2 == "main" { hit = 1 }
    END { if (n) { total++; reached += hit } printf "  perf record %-17s %d/%d = %.1f%%\n", "'"$cg"'", reached, total, 100 * reached / (total ? total : 1) }'
done
