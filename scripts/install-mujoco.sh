#!/usr/bin/env bash
# Installs MuJoCo 3.17.0 (the official library, from the `mujoco` wheel on PyPI) for the
# robot families (`--features mujoco`) and the C++ closed loop: libmujoco.so, its headers
# and a pkg-config file, into DIR (default ~/.local/share/mujoco-3.17.0). Then:
#   export MUJOCO_DYNAMIC_LINK_DIR=DIR/lib LD_LIBRARY_PATH=DIR/lib PKG_CONFIG_PATH=DIR/lib/pkgconfig
# (`scripts/install-mujoco.sh --env` prints those lines.) Needs pip (any Python 3) and unzip.
set -euo pipefail
VERSION=3.17.0
SHA256=d66928d86a2d1b601bbaa4dc11db50214d17d5301bb8afd84721313b67ff0874
dir=${MUJOCO_DIR:-$HOME/.local/share/mujoco-$VERSION}
if [ "${1:-}" = --env ]; then
  echo "export MUJOCO_DYNAMIC_LINK_DIR=$dir/lib LD_LIBRARY_PATH=$dir/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH} PKG_CONFIG_PATH=$dir/lib/pkgconfig\${PKG_CONFIG_PATH:+:\$PKG_CONFIG_PATH}"
  exit 0
fi
if [ -e "$dir/lib/libmujoco.so.$VERSION" ]; then
  echo "MuJoCo $VERSION already in $dir"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The library inside does not depend on the Python version: ask for one wheel explicitly.
python3 -m pip download --quiet --no-deps --only-binary=:all: --implementation cp \
  --python-version 3.11 --platform manylinux_2_28_x86_64 -d "$tmp" "mujoco==$VERSION"
wheel=$(ls "$tmp"/mujoco-$VERSION-*.whl)
echo "$SHA256  $wheel" | sha256sum -c --quiet
unzip -q "$wheel" "mujoco/libmujoco.so.$VERSION" 'mujoco/include/*' -d "$tmp/x"
mkdir -p "$dir/lib/pkgconfig" "$dir/include"
cp "$tmp/x/mujoco/libmujoco.so.$VERSION" "$dir/lib/"
ln -sf "libmujoco.so.$VERSION" "$dir/lib/libmujoco.so"
cp -r "$tmp/x/mujoco/include/." "$dir/include/"
cat > "$dir/lib/pkgconfig/mujoco.pc" <<PC
prefix=$dir
Name: mujoco
Description: MuJoCo physics $VERSION (from the PyPI wheel)
Version: $VERSION
Libs: -L\${prefix}/lib -Wl,-rpath,\${prefix}/lib -lmujoco
Cflags: -I\${prefix}/include
PC
echo "MuJoCo $VERSION installed in $dir"
