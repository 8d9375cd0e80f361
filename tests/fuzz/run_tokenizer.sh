#!/bin/sh
# tests/fuzz/run_tokenizer.sh - build fuzz_tokenizer with clang and fuzz for a bounded time.
#
# Usage: tests/fuzz/run_tokenizer.sh [seconds (default 60)] [extra libFuzzer flags...]
# Same layout as run.sh: builds in $RALUD_FUZZ_BUILD (default build-fuzz/),
# new inputs go to <build>/fuzz-corpus-tokenizer, crashes to
# <build>/fuzz-artifacts/ (and make the script fail); copy a minimised one
# into corpus_tokenizer/ once it is fixed. Regenerate the seeds with
# make_tokenizer_corpus.py.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
secs=${1:-60}
[ $# -gt 0 ] && shift
build=${RALUD_FUZZ_BUILD:-$root/build-fuzz}

cmake -S "$root" -B "$build" -DCMAKE_C_COMPILER=clang -DRALUD_CUDA=OFF \
      -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_FLAGS=-Wno-unknown-warning-option >/dev/null
cmake --build "$build" --target fuzz_tokenizer -j "${JOBS:-2}"

mkdir -p "$build/fuzz-corpus-tokenizer" "$build/fuzz-artifacts"
exec "$build/tests/fuzz/fuzz_tokenizer" \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=4096 -print_final_stats=1 \
    -dict="$root/tests/fuzz/tokenizer.dict" \
    -artifact_prefix="$build/fuzz-artifacts/" "$@" \
    "$build/fuzz-corpus-tokenizer" "$root/tests/fuzz/corpus_tokenizer"
