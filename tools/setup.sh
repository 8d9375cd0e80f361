#!/usr/bin/env bash
# tools/setup.sh - set up a Debian machine for ralud, then run the daemon or the tests.
#
#   tools/setup.sh run [ralud args...]  install deps, build Release in build/, exec build/server/ralud
#                                       (no args: the tiny test FLUX model on 127.0.0.1:8080)
#   tools/setup.sh test                 install deps; build + ctest Release (build/); build an
#                                       ASan+UBSan Debug tree (build-asan/) and run its unit and
#                                       kernels tests; fuzz smoke (tests/fuzz/run.sh) if clang exists;
#                                       clang-format check (tools/check_format.sh)
#   tools/setup.sh deps                 install missing Debian packages only
#   tools/setup.sh build                install deps, build Release in build/
#
# Idempotent: a package is installed only when dpkg says it is missing, `apt-get update` runs only
# when something is, and build trees are reused. Uses sudo for apt-get only when not root.
#
# Environment: RALUD_JOBS (build/test parallelism, default 2), RALUD_SKIP_DEPS=1 (do not touch
# packages), FUZZ_SECONDS (fuzz budget passed to tests/fuzz/run.sh, default 30), FUZZ_TIMEOUT
# (hard wall-clock cap on the whole fuzz step including its build, default 300).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

JOBS=${RALUD_JOBS:-2}
FUZZ_SECONDS=${FUZZ_SECONDS:-30}
FUZZ_TIMEOUT=${FUZZ_TIMEOUT:-300}
BUILD_DIR=build
ASAN_DIR=build-asan

# clang and its runtime (libFuzzer, sanitizer runtimes) are only needed for the fuzz smoke step;
# everything else is needed to build and test.
PACKAGES_REQUIRED=(build-essential cmake pkg-config check libsubunit-dev libjansson-dev
                   libuv1-dev libmicrohttpd-dev libpng-dev curl python3 python3-jsonschema
                   python3-yaml python3-numpy python3-pil)
PACKAGES_OPTIONAL=(clang libclang-rt-14-dev clang-format)

START=$SECONDS

say() { printf '==> [%4ds] %s\n' "$((SECONDS - START))" "$*"; }
warn() { printf 'setup.sh: warning: %s\n' "$*" >&2; }
die() {
    printf 'setup.sh: error: %s\n' "$*" >&2
    exit 1
}

usage() {
    sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

# ---- packages ----

pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

install_deps() {
    if [[ ${RALUD_SKIP_DEPS:-0} == 1 ]]; then
        say "deps: skipped (RALUD_SKIP_DEPS=1)"
        return 0
    fi
    if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
        warn "not a Debian-based system: install these yourself:" \
             "${PACKAGES_REQUIRED[*]} ${PACKAGES_OPTIONAL[*]}"
        return 0
    fi

    local missing_req=() missing_opt=() p
    for p in "${PACKAGES_REQUIRED[@]}"; do
        pkg_installed "$p" || missing_req+=("$p")
    done
    for p in "${PACKAGES_OPTIONAL[@]}"; do
        pkg_installed "$p" || missing_opt+=("$p")
    done
    if ((${#missing_req[@]} == 0 && ${#missing_opt[@]} == 0)); then
        say "deps: all packages present"
        return 0
    fi

    local sudo=()
    if [[ $(id -u) != 0 ]]; then
        command -v sudo >/dev/null ||
            die "not root and no sudo: install ${missing_req[*]} ${missing_opt[*]} as root"
        sudo=(sudo)
    fi
    local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get)

    local all_missing=("${missing_req[@]}" "${missing_opt[@]}")
    say "deps: missing ${all_missing[*]}"
    "${apt[@]}" update -q || die "apt-get update failed"

    # An optional package this distribution does not carry (libclang-rt-14-dev is Debian 12's
    # name) is skipped rather than failing the whole set-up; the fuzz step then skips itself.
    local install=("${missing_req[@]}")
    for p in "${missing_opt[@]}"; do
        if apt-cache show "$p" >/dev/null 2>&1; then
            install+=("$p")
        else
            warn "package $p is not available here; skipping it (fuzzing may be unavailable)"
        fi
    done
    if ((${#install[@]} == 0)); then
        say "deps: nothing installable is missing"
        return 0
    fi
    "${apt[@]}" install -y -q --no-install-recommends "${install[@]}" ||
        die "apt-get install ${install[*]} failed"
    for p in "${missing_req[@]}"; do
        pkg_installed "$p" || die "package $p is still not installed"
    done
    say "deps: installed ${install[*]}"
}

# ---- builds ----

# build_tree DIR BUILD_TYPE [cmake -D args...]: configure (or reconfigure) and build DIR.
# Returns non-zero instead of exiting, so `test` can report every stage.
build_tree() {
    local dir=$1 type=$2
    shift 2
    say "configure $dir ($type${*:+ $*})"
    cmake -S "$ROOT" -B "$ROOT/$dir" -DCMAKE_BUILD_TYPE="$type" "$@" || return 1
    say "build $dir (-j$JOBS)"
    cmake --build "$ROOT/$dir" -j "$JOBS" || return 1
}

# ---- test bookkeeping ----

N_PASSED=0
N_FAILED=0
N_SKIPPED=0
SUMMARY=()
FAILED_STAGES=()

record() { # record STAGE STATUS DETAIL
    local line
    line=$(printf '  %-34s %-5s %s' "$1" "$2" "$3")
    SUMMARY+=("${line%"${line##*[! ]}"}")
    [[ $2 == FAIL ]] && FAILED_STAGES+=("$1")
    return 0
}

# run_ctest STAGE LOG [ctest args...]: run ctest, keep its output on screen and in LOG, and add
# its counts to the totals.
run_ctest() {
    local stage=$1 log=$2
    shift 2
    local rc=0
    ctest "$@" 2>&1 | tee "$log" || rc=$?

    local line total=0 failed=0 skipped
    line=$(grep -E 'tests passed, [0-9]+ tests? failed out of [0-9]+' "$log" | tail -n 1 || true)
    if [[ $line =~ ([0-9]+)\ tests?\ failed\ out\ of\ ([0-9]+) ]]; then
        failed=${BASH_REMATCH[1]}
        total=${BASH_REMATCH[2]}
    fi
    skipped=$(grep -c -F '***Skipped' "$log" || true)
    local passed=$((total - failed - skipped))
    ((passed < 0)) && passed=0
    N_PASSED=$((N_PASSED + passed))
    N_FAILED=$((N_FAILED + failed))
    N_SKIPPED=$((N_SKIPPED + skipped))

    local detail="$passed passed, $failed failed, $skipped skipped"
    if ((total == 0)); then
        detail="no tests found"
    fi
    if ((rc != 0)); then
        # ctest failing with no failed test counted (e.g. it could not start) still counts once.
        ((failed == 0)) && N_FAILED=$((N_FAILED + 1))
        record "$stage" FAIL "$detail (ctest exit $rc)"
        return 1
    fi
    record "$stage" ok "$detail"
}

cmd_test() {
    install_deps
    local logs="$ROOT/$BUILD_DIR/setup-logs"

    # 1. Release: the whole suite.
    if build_tree "$BUILD_DIR" Release; then
        record "release build ($BUILD_DIR)" ok ""
        mkdir -p "$logs"
        say "ctest $BUILD_DIR (all labels)"
        run_ctest "release ctest (all)" "$logs/ctest-release.log" \
            --test-dir "$BUILD_DIR" --output-on-failure -j "$JOBS" || true
    else
        N_FAILED=$((N_FAILED + 1))
        record "release build ($BUILD_DIR)" FAIL "see the cmake/compiler output above"
    fi

    # 2. ASan+UBSan, CPU only (sanitizers stay off CUDA builds, STYLE 2.9).
    if build_tree "$ASAN_DIR" Debug -DRALUD_SANITIZE=address,undefined -DRALUD_CUDA=OFF; then
        record "asan+ubsan build ($ASAN_DIR)" ok ""
        mkdir -p "$logs"
        say "ctest $ASAN_DIR (labels unit|kernels)"
        ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:check_initialization_order=1:strict_init_order=1} \
        UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
            run_ctest "asan+ubsan ctest (unit|kernels)" "$logs/ctest-asan.log" \
            --test-dir "$ASAN_DIR" --output-on-failure -j "$JOBS" -L 'unit|kernels' || true
    else
        N_FAILED=$((N_FAILED + 1))
        record "asan+ubsan build ($ASAN_DIR)" FAIL "see the cmake/compiler output above"
    fi

    # 3. Fuzz smoke: bounded, and only where clang (libFuzzer) exists.
    if [[ ! -f tests/fuzz/run.sh ]]; then
        record "fuzz smoke" skip "tests/fuzz/run.sh not present"
    elif ! command -v clang >/dev/null; then
        N_SKIPPED=$((N_SKIPPED + 1))
        record "fuzz smoke" skip "clang not installed"
    else
        say "fuzz smoke: tests/fuzz/run.sh (FUZZ_SECONDS=$FUZZ_SECONDS, cap ${FUZZ_TIMEOUT}s)"
        local rc=0
        FUZZ_SECONDS=$FUZZ_SECONDS RALUD_JOBS=$JOBS \
            timeout --kill-after=15 "$FUZZ_TIMEOUT" bash tests/fuzz/run.sh "$FUZZ_SECONDS" || rc=$?
        if ((rc == 0)); then
            N_PASSED=$((N_PASSED + 1))
            record "fuzz smoke" ok "${FUZZ_SECONDS}s budget"
        elif ((rc == 124 || rc == 137)); then
            N_FAILED=$((N_FAILED + 1))
            record "fuzz smoke" FAIL "exceeded the ${FUZZ_TIMEOUT}s cap"
        else
            N_FAILED=$((N_FAILED + 1))
            record "fuzz smoke" FAIL "exit $rc"
        fi
    fi

    # 4. Formatting: every tracked C file as clang-format writes it.
    if ! command -v clang-format >/dev/null; then
        N_SKIPPED=$((N_SKIPPED + 1))
        record "clang-format" skip "clang-format not installed"
    elif bash tools/check_format.sh; then
        N_PASSED=$((N_PASSED + 1))
        record "clang-format" ok ""
    else
        N_FAILED=$((N_FAILED + 1))
        record "clang-format" FAIL "run tools/check_format.sh --fix"
    fi

    local verdict=PASS
    ((${#FAILED_STAGES[@]} > 0 || N_FAILED > 0)) && verdict=FAIL
    echo
    say "summary"
    printf '%s\n' "${SUMMARY[@]}"
    if [[ $verdict == PASS ]]; then
        echo "setup.sh test: PASS in $((SECONDS - START))s"
    else
        echo "setup.sh test: FAIL in $((SECONDS - START))s (failed: $(printf '%s; ' "${FAILED_STAGES[@]}" | sed 's/; $//'))"
    fi
    # Counts are summed over the stages above (a test run in both trees counts twice).
    local closing="total: $N_PASSED passed, $N_FAILED failed"
    ((N_SKIPPED > 0)) && closing+=", $N_SKIPPED skipped"
    echo "$closing"
    [[ $verdict == PASS ]]
}

cmd_build() {
    install_deps
    build_tree "$BUILD_DIR" Release || die "build failed in $BUILD_DIR/ (see the output above)"
}

# The model `run` serves when given no arguments: ralu-tiny, the small trained default (FLUX
# architecture, 128x128, simple coloured shapes; models/ralu-tiny/README.md), so the daemon
# starts anywhere in seconds and draws what it is asked for. Its training size is the daemon's
# largest (and so default) size.
DEFAULT_MODEL=models/ralu-tiny

cmd_run() {
    cmd_build
    local bin="$ROOT/$BUILD_DIR/server/ralud"
    [[ -x $bin ]] || die "the build succeeded but produced no $BUILD_DIR/server/ralud"
    if (($# == 0)); then
        [[ -f $DEFAULT_MODEL/model_index.json ]] || die "$DEFAULT_MODEL is missing"
        say "no arguments: serving the default model $DEFAULT_MODEL (ralu-tiny: 128x128" \
            "images of one to three coloured shapes, e.g. \"a large red circle left of a small" \
            "blue square on a white background\") on 127.0.0.1:8080. Pass --model DIR to serve a" \
            "real SD3/FLUX diffusers folder."
        set -- --model "$DEFAULT_MODEL" --host 127.0.0.1 --port 8080 --max_width 128 \
            --max_height 128
    fi
    say "exec $BUILD_DIR/server/ralud $*"
    exec "$bin" "$@"
}

main() {
    local cmd=${1:-}
    (($# > 0)) && shift
    case $cmd in
    run) cmd_run "$@" ;;
    test) cmd_test ;;
    deps) install_deps ;;
    build) cmd_build ;;
    -h | --help | help)
        usage
        ;;
    *)
        usage >&2
        exit 2
        ;;
    esac
}

main "$@"
