#!/usr/bin/env bash
# Installs what rebuilding the eBPF object needs: nightly's rust-src, LLVM 22 and
# bpf-linker. Only needed to change ebpf/; building Stackline itself needs stable Rust only.
# Idempotent: skips what is already there.
set -euo pipefail

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
rustup component add rust-src --toolchain nightly

if ! dpkg -s llvm-22-dev libpolly-22-dev >/dev/null 2>&1; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y llvm-22-dev libpolly-22-dev
fi

if ! command -v bpf-linker >/dev/null 2>&1; then
  LLVM_SYS_221_PREFIX=/usr/lib/llvm-22 \
  RUSTFLAGS="-L /usr/lib/llvm-22/lib -C link-arg=-Wl,-rpath,/usr/lib/llvm-22/lib" \
    cargo install bpf-linker --locked --no-default-features --features llvm-22
fi
bpf-linker --version
