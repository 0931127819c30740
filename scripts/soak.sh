#!/usr/bin/env bash
# The long soak: tests/soak.rs for SECONDS (default 600) against the release build:
# the adversarial corpus and slow-connection attacks beside valid traffic, then checks
# that valid traffic was delivered exactly once, peak RSS stayed under its bound, and
# the gateway stopped cleanly. Prints the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
STACKLINE_SOAK_SECS="${1:-600}" cargo test --release --test soak -- --nocapture
