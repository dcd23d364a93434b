#!/usr/bin/env bash
# Build an arm64 Debian root file system that can run compress-ir aarch64 artifacts under qemu.
#
# Why this shape: the host usually has no binfmt_misc registration for aarch64 (containers,
# CI), so we never execute arm64 code during setup. debootstrap's first stage downloads the
# packages; we unpack every .deb on the host with dpkg-deb (no maintainer scripts are needed to
# run python3), and pip installs the aarch64 manylinux wheels into the rootfs from the host.
# The result is run with `qemu-aarch64-static` (see check_artifact.py), with or without root.
#
# Usage: tools/arm/setup_rootfs.sh [DIR]      (default: ~/.cache/compress-ir/arm64-rootfs)
# Env:   MIRROR (default http://deb.debian.org/debian), SUITE (default bookworm),
#        TVM_VERSION, TVM_FFI_VERSION, NUMPY_VERSION to override the pinned wheels.
# Idempotent: a finished rootfs carries a stamp file and is left as is; an interrupted one
# is resumed (debootstrap reuses its downloads, unpacking and pip are repeatable).
set -euo pipefail

DIR="${1:-$HOME/.cache/compress-ir/arm64-rootfs}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
SUITE="${SUITE:-bookworm}"
TVM_VERSION="${TVM_VERSION:-0.27.0.post1}"
TVM_FFI_VERSION="${TVM_FFI_VERSION:-0.1.14.post1}"
NUMPY_VERSION="${NUMPY_VERSION:-2.2.6}"
# the RPC server (tools/rpc_farm.py --arm) starts its worker through TVM's PopenWorker
CLOUDPICKLE_VERSION="${CLOUDPICKLE_VERSION:-2.1.0}"
SITE=/opt/compress-ir/site-packages          # path inside the rootfs (PYTHONPATH for runner.py)
STAMP="$DIR/.compress-ir-rootfs"
WANT="suite=$SUITE tvm=$TVM_VERSION tvm-ffi=$TVM_FFI_VERSION numpy=$NUMPY_VERSION cloudpickle=$CLOUDPICKLE_VERSION"

die() { echo "setup_rootfs.sh: $*" >&2; exit 2; }

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
    echo "arm64 rootfs ready: $DIR ($WANT)"
    exit 0
fi

for tool in debootstrap dpkg-deb qemu-aarch64-static python3; do
    command -v "$tool" >/dev/null || die "missing '$tool' (apt-get install debootstrap qemu-user-static)"
done
[[ $(id -u) == 0 ]] || die "debootstrap needs root (run with sudo, or under fakeroot)"

start=$(date +%s)
mkdir -p "$DIR"

# 1. Debian arm64 minbase + python3 (first stage only: downloads + unpacks, runs nothing).
if [[ ! -x "$DIR/usr/bin/python3.11" ]]; then
    debootstrap --arch=arm64 --foreign --variant=minbase --include=python3 \
        "$SUITE" "$DIR" "$MIRROR"
fi

# 2. Unpack every downloaded package (first stage only unpacks the 'required' set).
shopt -s nullglob
debs=("$DIR"/var/cache/apt/archives/*.deb)
[[ ${#debs[@]} -gt 0 ]] || die "no packages downloaded into $DIR/var/cache/apt/archives"
for deb in "${debs[@]}"; do
    dpkg-deb -x "$deb" "$DIR"
done
[[ -x "$DIR/usr/bin/python3.11" ]] || die "python3.11 missing from $DIR after unpacking"
# Debian's python3 is a symlink created by the package itself; make sure it is there.
[[ -e "$DIR/usr/bin/python3" ]] || ln -s python3.11 "$DIR/usr/bin/python3"

# 3. aarch64 wheels, downloaded and installed from the host (no pip inside the rootfs).
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
pip_platform=(--platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64
              --platform manylinux_2_28_aarch64 --only-binary=:all:
              --python-version 3.11 --implementation cp --abi cp311)
python3 -m pip download -q -d "$wheels" "${pip_platform[@]}" \
    "apache-tvm==$TVM_VERSION" "apache-tvm-ffi==$TVM_FFI_VERSION" "numpy==$NUMPY_VERSION" \
    "cloudpickle==$CLOUDPICKLE_VERSION"
rm -rf "$DIR$SITE"
python3 -m pip install -q --no-deps --no-compile --target "$DIR$SITE" "${pip_platform[@]}" \
    "$wheels"/*.whl

# 4. Byte-compile stdlib and wheels once (halves `import tvm` under qemu: ~40 s -> ~17 s).
# A 3.11 host interpreter writes the same .pyc files much faster than emulated python.
# compileall exits 1 on files that are invalid on purpose (lib2to3 test data): ignore it.
if python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    python3 -m compileall -q -j0 "$DIR/usr/lib/python3.11" "$DIR$SITE" >/dev/null || true
else
    QEMU_LD_PREFIX="$DIR" qemu-aarch64-static "$DIR/usr/bin/python3.11" -m compileall -q \
        "$DIR/usr/lib/python3.11" "$DIR$SITE" >/dev/null || true
fi

# 5. Smoke test under qemu; QEMU_LD_PREFIX makes the rootfs the prefix for the loader and libs.
QEMU_LD_PREFIX="$DIR" PYTHONPATH="$DIR$SITE" PYTHONDONTWRITEBYTECODE=1 \
    qemu-aarch64-static "$DIR/usr/bin/python3.11" -c \
    "import platform, numpy, tvm, tvm.rpc.server, cloudpickle; print('arm64 python', platform.machine(), 'numpy', numpy.__version__, 'tvm', tvm.__version__)"

echo "$WANT" > "$STAMP"
echo "arm64 rootfs ready: $DIR ($(du -sh "$DIR" | cut -f1), $(( $(date +%s) - start )) s)"
