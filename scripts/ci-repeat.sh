#!/usr/bin/env bash
# Run CI (.ci/run) several times in a row, each in a fresh clone of the
# current commit, as CI itself does; print one line per run and a summary.
# A flaky test shows up here before it blocks somebody's landing.
#
#   scripts/ci-repeat.sh [RUNS]        (default 3; as root)
#
# Logs stay in $CI_REPEAT_DIR (default /tmp/calico-ci-repeat): run-N.log.
# Exit status 0 only if every run passed.
set -uo pipefail

runs=${1:-3}
case "$runs" in ''|*[!0-9]*) echo "usage: $0 [RUNS]" >&2; exit 2;; esac
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel) || exit 2
commit=$(git -C "$repo" rev-parse HEAD) || exit 2
work=${CI_REPEAT_DIR:-/tmp/calico-ci-repeat}
mkdir -p "$work"
if [ -n "$(git -C "$repo" status --porcelain --untracked-files=no)" ]; then
    echo "ci-repeat: uncommitted changes are not tested (CI clones $commit)" >&2
fi

failed=0
for i in $(seq 1 "$runs"); do
    clone="$work/clone"
    rm -rf "$clone"
    git clone -q "$repo" "$clone" && git -C "$clone" checkout -q "$commit" || exit 2
    log="$work/run-$i.log"
    start=$(date +%s)
    (cd "$clone" && CI=true bash .ci/run) >"$log" 2>&1
    status=$?
    took=$(( $(date +%s) - start ))
    summary=$(grep -E '^=+ .*(passed|failed|error).* =+$' "$log" | tail -n 1 | tr -d '=' | sed 's/^ *//;s/ *$//')
    if [ "$status" = 0 ]; then
        echo "run $i/$runs: PASS in ${took}s (${summary:-no pytest summary}) - $log"
    else
        failed=$((failed + 1))
        echo "run $i/$runs: FAIL (exit $status) in ${took}s (${summary:-no pytest summary}) - $log"
        grep -E '^(FAILED|ERROR) ' "$log" | sed 's/^/    /'
    fi
done
rm -rf "$work/clone"
echo "ci-repeat: $((runs - failed)) of $runs runs passed at ${commit:0:12}"
[ "$failed" = 0 ]
