#!/usr/bin/env bash
# Runs each fuzz target for SECONDS (default 30) over its committed corpus and the
# regression inputs of crashes found before, and prints the executions. A crash fails
# the run; its input is left in fuzz/artifacts/TARGET/ (add it to fuzz/regressions/TARGET/
# and a regression test once fixed).
# Needs the nightly toolchain and cargo-fuzz (installed here if missing).
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-30}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(otlp_path otlp_json symbolizer_request config_loader)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
# No sanitizer: the code under test is safe Rust, and libFuzzer alone runs it several
# times faster, so a bounded run covers more inputs.
cargo +nightly fuzz build -s none
total=0
for t in "${targets[@]}"; do
    work="$(mktemp -d)"
    # New inputs go to a scratch directory: the committed corpus stays as it is.
    cp fuzz/corpus/"$t"/* "$work"/ 2>/dev/null || true
    log="$work.log"
    regressions=()
    [ -d fuzz/regressions/"$t" ] && regressions=(fuzz/regressions/"$t")
    if ! cargo +nightly fuzz run -s none "$t" "$work" "${regressions[@]}" -- \
        -max_total_time="$secs" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1; then
        tail -40 "$log"
        echo "FAIL fuzz target $t crashed (input in fuzz/artifacts/$t/)"
        exit 1
    fi
    n=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
    total=$((total + n))
    printf '%-20s %12s executions in %ss, 0 crashes\n' "$t" "$n" "$secs"
    rm -rf "$work" "$log"
done
printf '%-20s %12s executions\n' total "$total"
