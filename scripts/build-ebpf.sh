#!/usr/bin/env bash
# Builds the eBPF objects and copies them to ebpf/prebuilt/, where the main crate embeds
# them. Needs the toolchain from scripts/install-ebpf-toolchain.sh.
# `--check` builds into a temporary directory and fails if the result differs from
# what is committed (CI runs this so no stale object can land).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/ebpf"
# Paths are remapped so the object does not depend on where the tree is checked out.
export RUSTFLAGS="--remap-path-prefix=$root=. --remap-path-prefix=$HOME=~"
cargo +nightly build --release --locked --target bpfel-unknown-none -Z build-std=core
out="$root/ebpf/target/bpfel-unknown-none/release"
if [ "${1:-}" = "--check" ]; then
  status=0
  for obj in stackline stackline-invalid; do
    if ! cmp -s "$out/$obj" "$root/ebpf/prebuilt/$obj.bpf.o"; then
      echo "ebpf/prebuilt/$obj.bpf.o is stale: run scripts/build-ebpf.sh and commit the result" >&2
      status=1
    fi
  done
  [ $status -eq 0 ] && echo "eBPF objects match their sources"
  exit $status
fi
for obj in stackline stackline-invalid; do
  cp "$out/$obj" "$root/ebpf/prebuilt/$obj.bpf.o"
done
ls -l "$root/ebpf/prebuilt"
