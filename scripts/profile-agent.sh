#!/usr/bin/env bash
# Profiles the agent with Stackline itself: agent A (auto unwinding, 999 Hz, symbolizer
# -> batch -> file) runs on CPU 1 while a 20-frame workload keeps CPU 0 busy; profiler
# B, pinned to CPU 0, samples only CPU 1 and writes a per-process flamegraph (SVG and
# folded stacks) of one SECONDS-long interval into OUT_DIR. Prints A's heaviest frames.
#
# Needs root and two CPUs.   Usage: scripts/profile-agent.sh [SECONDS] [OUT_DIR]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
secs="${1:-60}"
out="$(realpath -m "${2:-$root/target/agent-profile}")"
work="$(mktemp -d)"
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
command -v gcc >/dev/null || { apt-get update -qq && apt-get install -y -qq gcc; }
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
exe="$root/target/release/stackline"
gcc -O2 -g -fno-omit-frame-pointer -shared -fPIC -o "$work/libunwhot.so" "$root/tests/workloads/unwhot.c"
gcc -O2 -g -fno-omit-frame-pointer -DWITH_LIB -o "$work/unwind" "$root/tests/workloads/unwind.c" \
  -L"$work" -lunwhot -Wl,-rpath,"$work" -lpthread -ldl
mkdir -p "$out"
rm -f "$out"/*.svg "$out"/*.folded

cat > "$work/a.yaml" <<YAML
receivers: { ebpf_profiler: { sampling_frequency: 999 } }
processors: { symbolizer: {}, batch: {} }
exporters: { file: { path: "$work/a.binpb", format: proto } }
service:
  pipelines: { profiles: { receivers: [ebpf_profiler], processors: [symbolizer, batch], exporters: [file] } }
  telemetry: { metrics: { address: "127.0.0.1:19871" }, logs: { level: warn } }
YAML
cat > "$work/b.yaml" <<YAML
receivers: { ebpf_profiler: { sampling_frequency: 999, cpus: [1], report_interval: ${secs}s } }
processors: { symbolizer: {} }
exporters: { flamegraph: { directory: "$out", folded: true, per_process: true } }
service:
  pipelines: { profiles: { receivers: [ebpf_profiler], processors: [symbolizer], exporters: [flamegraph] } }
  telemetry: { metrics: { address: "127.0.0.1:19872" }, logs: { level: warn } }
YAML

taskset -c 0 "$work/unwind" deep "$((secs + 30))" >/dev/null &
taskset -c 1 "$exe" --config "$work/a.yaml" 2>"$work/a.log" &
agent=$!
sleep 5 # past A's start-up: B shows its steady state
taskset -c 0 "$exe" --config "$work/b.yaml" 2>"$work/b.log" &
profiler=$!
# One interval, then a clean stop flushes it.
sleep "$((secs + 2))"
kill -INT $profiler; wait $profiler || true
kill -INT $agent; wait $agent || true

folded="$(ls "$out"/*.folded | head -1)"
echo "flamegraph: $(ls "$out"/*.svg | head -1)"
python3 - "$folded" "$agent" <<'PY'
import collections, sys
path, pid = sys.argv[1], sys.argv[2]
total = 0
incl, leaf = collections.Counter(), collections.Counter()
for line in open(path):
    stack, _, n = line.rstrip("\n").rpartition(" ")
    frames = stack.split(";")
    if not frames or "stackline" not in frames[0] or f"{pid}" not in frames[0]:
        continue
    n = int(n)
    total += n
    leaf[frames[-1]] += n
    for f in set(frames[1:]):
        incl[f] += n
print(f"agent pid {pid}: {total} samples")
print("heaviest frames, inclusive:")
for f, n in incl.most_common(25):
    print(f"  {100 * n / max(total, 1):5.1f}%  {f[:140]}")
print("heaviest leaves:")
for f, n in leaf.most_common(15):
    print(f"  {100 * n / max(total, 1):5.1f}%  {f[:140]}")
PY
