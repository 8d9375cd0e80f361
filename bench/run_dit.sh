#!/usr/bin/env bash
# bench/run_dit.sh - DiT forward (one sampling step) benchmark on the CPU backend: a markdown
# table of s/step and GFLOP/s per model, token count, thread count and matmul mode.
#
#   bench/run_dit.sh                 build Release, make the models if missing, run everything
#   bench/run_dit.sh > results.md    (progress goes to stderr, the table to stdout)
#
# Models are random-weight checkpoints of the real architectures (speed does not depend on the
# values), written once by tools/make_random_dit into $RALUD_BENCH_DIR:
#   sd3-medium   SD3-medium: 24 joint blocks, 24 heads x 64, F16 (4.2 GB on disk, ~30 s to write)
#   flux-bench   FLUX.1 widths (24 heads x 128, joint 4096) with 1 double + 1 single block, BF16
#                (1.1 GB); a real FLUX.1 step is ~19x its double-block + 38x its single-block cost
# plus the tiny test models (tests/data/vectors/models) at their golden-case sizes.
# Shapes: 256 and 1024 image tokens (256x256 and 512x512 images: patch 2 / 2x2 packing) with 154
# text tokens for SD3 (77 CLIP + 77 T5) and 256 for FLUX (T5); batch 1 (no CFG batching).
#
# Environment:
#   BUILD_DIR        build tree (default <repo>/build-bench), configured Release, CUDA off
#   RALUD_BENCH_DIR  where the random models live (default /tmp/ralud-bench; needs ~5.5 GB free)
#   THREADS          thread counts (default 1,2)
#   MODES            matmul modes (default f32,bf16)
#   JOBS             build parallelism (default: number of CPUs)
# Runtime: a few minutes with the optimised kernels (the big shapes run 1 warm-up + 2 timed
# forwards; SD3-medium at 512x512 is ~1.8 TFLOP per step), plus ~35 s to write the models once.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-$ROOT/build-bench}
BENCH_DIR=${RALUD_BENCH_DIR:-/tmp/ralud-bench}
THREADS=${THREADS:-1,2}
MODES=${MODES:-f32,bf16}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}
MODELS=$ROOT/tests/data/vectors/models

say() { printf '==> %s\n' "$*" >&2; }

say "building Release in $BUILD_DIR"
cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DRALUD_CUDA=OFF >&2
cmake --build "$BUILD_DIR" --target bench_dit make_random_dit -j"$JOBS" >&2
BENCH=$BUILD_DIR/bench/bench_dit
MAKE=$BUILD_DIR/tools/make_random_dit

# make_model NAME PRESET DTYPE: write $BENCH_DIR/NAME unless it is already there.
make_model() {
    local dir=$BENCH_DIR/$1
    if [[ -f $dir/diffusion_pytorch_model.safetensors && -f $dir/config.json ]]; then
        say "using $dir"
        return
    fi
    mkdir -p "$BENCH_DIR"
    local free_kb
    free_kb=$(df -Pk "$BENCH_DIR" | awk 'NR == 2 {print $4}')
    if [[ -n $free_kb && $free_kb -lt 5500000 ]]; then
        say "warning: $BENCH_DIR has $((free_kb / 1024)) MB free; the models need ~5.5 GB"
    fi
    say "writing $dir ($2, $3)"
    "$MAKE" --preset "$2" --dtype "$3" "$dir" >&2
}
make_model sd3-medium sd3-medium F16
make_model flux-bench flux-bench BF16

# The machine and build, so a table can be quoted with what it was measured on.
cpu=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | sed 's/.*: //' || true)
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if ! git -C "$ROOT" diff --quiet HEAD 2>/dev/null; then commit="$commit+dirty"; fi
echo "DiT forward, CPU backend: ${cpu:-unknown CPU}, $(nproc) CPUs, commit $commit, $(date -u +%Y-%m-%d)"
echo
common=(--threads "$THREADS" --modes "$MODES")
"$BENCH" --header "${common[@]}" --warmup 3 --runs 21 "$MODELS/tiny-sd3/transformer" 64:37
"$BENCH" "${common[@]}" --warmup 3 --runs 21 "$MODELS/tiny-sd35/transformer" 64:37
"$BENCH" "${common[@]}" --warmup 3 --runs 21 "$MODELS/tiny-flux/transformer" 64:24
"$BENCH" "${common[@]}" --warmup 1 --runs 2 "$BENCH_DIR/sd3-medium" 256:154 1024:154
"$BENCH" "${common[@]}" --warmup 1 --runs 2 "$BENCH_DIR/flux-bench" 256:256 1024:256
