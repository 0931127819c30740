#!/usr/bin/env bash
# Fetches what tests/old_kernels.rs boots: Debian's 6.1 kernel (before log_true_size)
# and 6.12 kernel (with it), and a static busybox, unpacked under target/test-kernels/.
# Nothing is installed into /boot. Also installs qemu and cpio.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/target/test-kernels"
export DEBIAN_FRONTEND=noninteractive
need=()
for p in qemu-system-x86 cpio; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"; fi

mkdir -p "$out/debs"
cd "$out/debs"
latest() { apt-cache search --names-only "$1" | awk '{print $1}' | sort -V | tail -1; }
pkgs=(
  "$(latest '^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$')"
  "$(latest '^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64-unsigned$')"
  busybox-static
)
for p in "${pkgs[@]}"; do
  [ -n "$p" ] || { echo "a test kernel package is missing from the archive" >&2; exit 1; }
  ls "${p}"_*.deb >/dev/null 2>&1 || apt-get download -qq "$p"
done
for deb in *.deb; do
  dir="$out/$(basename "$deb" .deb)"
  [ -d "$dir" ] || dpkg-deb -x "$deb" "$dir"
done
ls -d "$out"/*/boot/vmlinuz-* "$out"/busybox-static*/bin/busybox
