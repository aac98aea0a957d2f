#!/usr/bin/env bash
# Builds the guest kernel: Debian's linux-source-6.1, `make tinyconfig`, our
# fragment merged on top, `make vmlinux`. Usage: build.sh FRAGMENT OUT_DIR
# Writes OUT_DIR/vmlinux and OUT_DIR/config; nothing else in OUT_DIR changes.
# The caller (supermachine kernel build) chooses OUT_DIR by a hash of the
# fragment, this script and the source package version, so a rebuild only
# happens when one of those changes.
set -euo pipefail
fragment=$(realpath "$1")
out=$2
source_tar=${SUPERMACHINE_LINUX_SOURCE:-/usr/src/linux-source-6.1.tar.xz}
[ -f "$source_tar" ] || { echo "error: $source_tar is missing: apt-get install linux-source-6.1" >&2; exit 2; }
mkdir -p "$out"
work=$(mktemp -d "$out.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "kernel: unpacking $(basename "$source_tar")" >&2
tar -C "$work" -xf "$source_tar"
cd "$work"/linux-source-*
export ARCH=x86_64
make -s tinyconfig
scripts/kconfig/merge_config.sh -m -O . .config "$fragment" >/dev/null
make -s olddefconfig
# A fragment line that Kconfig silently dropped (unmet dependency) is a bug in the fragment;
# so is an option the fragment turns off that something else turned back on.
missing=0
while IFS= read -r line; do
  case "$line" in
    CONFIG_*=y) grep -qx "$line" .config || { echo "kernel: fragment option not applied: $line" >&2; missing=1; } ;;
    "# CONFIG_"*" is not set")
      option=${line#\# }; option=${option%% *}
      ! grep -q "^$option=" .config || { echo "kernel: fragment option not turned off: $option" >&2; missing=1; } ;;
  esac
done < "$fragment"
[ "$missing" = 0 ] || { echo "error: the config fragment has options Kconfig could not apply" >&2; exit 3; }
echo "kernel: make -j$(nproc) vmlinux" >&2
make -s -j"$(nproc)" vmlinux
cp vmlinux "$out/vmlinux.tmp" && mv "$out/vmlinux.tmp" "$out/vmlinux"
cp .config "$out/config"
echo "kernel: built $out/vmlinux" >&2
