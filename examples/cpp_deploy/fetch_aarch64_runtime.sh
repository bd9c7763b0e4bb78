#!/usr/bin/env bash
# Put the aarch64 TVM runtime (libtvm_runtime.so, libtvm_ffi.so) into DIR, from the aarch64 builds
# of the same apache-tvm / apache-tvm-ffi wheels that are installed here. Needs PyPI access once.
set -euo pipefail
dir=${1:?usage: fetch_aarch64_runtime.sh DIR}
version() { python3 -c "import importlib.metadata as m; print(m.version('$1'))"; }
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_28_aarch64 \
  --python-version "$(python3 -c 'import sys; print("%d%d" % sys.version_info[:2])')" -d "$wheels" \
  "apache-tvm==$(version apache-tvm)" "apache-tvm-ffi==$(version apache-tvm-ffi)"
# Unpacked beside the wheels, moved into place only when both libraries are there.
mkdir -p "$wheels/lib"
python3 - "$wheels" "$wheels/lib" <<'PY'
import sys, zipfile, pathlib
wheels, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wanted = {"tvm/lib/libtvm_runtime.so", "tvm_ffi/lib/libtvm_ffi.so"}
for wheel in wheels.glob("*.whl"):
    with zipfile.ZipFile(wheel) as z:
        for name in wanted & set(z.namelist()):
            (out / pathlib.Path(name).name).write_bytes(z.read(name))
            wanted.discard(name)
if wanted:
    sys.exit(f"fetch_aarch64_runtime.sh: {', '.join(sorted(wanted))} not found in the wheels")
PY
mkdir -p "$dir"
mv "$wheels/lib/libtvm_ffi.so" "$dir/"
mv "$wheels/lib/libtvm_runtime.so" "$dir/"  # last: its presence marks a complete runtime
echo "aarch64 TVM runtime in $dir"
