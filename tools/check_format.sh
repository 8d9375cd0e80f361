#!/usr/bin/env bash
# tools/check_format.sh [--fix] - every tracked C source and header must be as clang-format
# (the repository's .clang-format) writes it. Generated tables are exempt. Exit 1 lists the files.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mapfile -t files < <(git ls-files '*.c' '*.h' '*.cu' | grep -v -x -e 'engine/unicode_tables.c')
if [[ ${1:-} == --fix ]]; then
    clang-format -i "${files[@]}"
    exit 0
fi
bad=()
for f in "${files[@]}"; do
    clang-format --dry-run --Werror "$f" >/dev/null 2>&1 || bad+=("$f")
done
if ((${#bad[@]})); then
    printf 'not clang-formatted (run tools/check_format.sh --fix):\n' >&2
    printf '  %s\n' "${bad[@]}" >&2
    exit 1
fi
echo "clang-format: ${#files[@]} files clean"
