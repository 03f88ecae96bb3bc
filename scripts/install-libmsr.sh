#!/usr/bin/env bash
# Installs libmsr (shared and static), its headers and a pkg-config file under PREFIX.
#   cargo build --release -p msr-ffi && scripts/install-libmsr.sh /usr/local
set -euo pipefail
prefix=${1:?usage: install-libmsr.sh PREFIX}
root=$(cd "$(dirname "$0")/.." && pwd)
lib=${CARGO_TARGET_DIR:-$root/target}/release
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n 1)
mkdir -p "$prefix/lib/pkgconfig" "$prefix/include"
cp "$lib/libmsr.so" "$lib/libmsr.a" "$prefix/lib/"
cp "$root/include/msr.h" "$root/include/msr.hpp" "$prefix/include/"
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" "$root/ffi/msr.pc.in" > "$prefix/lib/pkgconfig/msr.pc"
echo "installed libmsr $version under $prefix"
