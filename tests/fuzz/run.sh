#!/bin/sh
# tests/fuzz/run.sh - build fuzz_safetensors with clang and fuzz for a bounded time.
#
# Usage: tests/fuzz/run.sh [seconds (default 60)] [extra libFuzzer flags...]
# Builds in $RALUD_FUZZ_BUILD (default build-fuzz/ at the repo root). New
# inputs go to <build>/fuzz-corpus; the checked-in seeds are only read.
# Crashes are written to <build>/fuzz-artifacts/ and make the script fail;
# copy a minimised one into corpus_safetensors/ once it is fixed.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
secs=${1:-60}
[ $# -gt 0 ] && shift
build=${RALUD_FUZZ_BUILD:-$root/build-fuzz}

# -Wno-unknown-warning-option: the shared warning list may carry GCC-only flags.
cmake -S "$root" -B "$build" -DCMAKE_C_COMPILER=clang -DRALUD_CUDA=OFF \
      -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_FLAGS=-Wno-unknown-warning-option >/dev/null
cmake --build "$build" --target fuzz_safetensors -j "${JOBS:-2}"

mkdir -p "$build/fuzz-corpus" "$build/fuzz-artifacts"
exec "$build/tests/fuzz/fuzz_safetensors" \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -dict="$root/tests/fuzz/safetensors.dict" \
    -artifact_prefix="$build/fuzz-artifacts/" "$@" \
    "$build/fuzz-corpus" "$root/tests/fuzz/corpus_safetensors"
