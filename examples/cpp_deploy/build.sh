#!/usr/bin/env bash
# Compile deploy.cc against the TVM runtime that the apache-tvm wheels carry.
#
#   build.sh OUT                          for this machine (x86-64), with the installed wheels
#   build.sh OUT aarch64 RUNTIME_DIR      for 64-bit ARM with aarch64-linux-gnu-g++, linked against
#                                         RUNTIME_DIR/libtvm_{runtime,ffi}.so (fetch_aarch64_runtime.sh)
#
# Headers are the same for every architecture; only the runtime libraries differ.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build.sh OUT [aarch64 RUNTIME_DIR]}
arch=${2:-host}
site() { python3 -c "import importlib.util as u; print(u.find_spec('$1').submodule_search_locations[0])"; }
include=$(site tvm_ffi)/include
case "$arch" in
  host) cxx=${CXX:-g++} package=g++ libdirs=("$(site tvm)/lib" "$(site tvm_ffi)/lib") ;;
  aarch64) cxx=aarch64-linux-gnu-g++ package=g++-aarch64-linux-gnu
           libdirs=("${3:?usage: build.sh OUT aarch64 RUNTIME_DIR}") ;;
  *) echo "build.sh: unknown architecture '$arch' (use aarch64, or nothing for this machine)" >&2; exit 2 ;;
esac
command -v "$cxx" >/dev/null || { echo "build.sh: $cxx is not installed (apt-get install $package)" >&2; exit 2; }
link=()
for d in "${libdirs[@]}"; do link+=(-L "$d" -Wl,-rpath,"$d"); done
"$cxx" -std=c++17 -O2 -Wall "$here/deploy.cc" -I "$include" "${link[@]}" -ltvm_runtime -ltvm_ffi -ldl -o "$out"
