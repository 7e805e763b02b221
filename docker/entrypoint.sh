#!/bin/bash
# The container's command: run the test suite with every argument passed on to pytest, and return pytest's status.
#
# If $WEENSY_RESULTS_DIR (default /work/test-results) is a directory (docker/test.sh mounts one), pytest writes
# junit.xml and the harness plugin's results.json there. $WEENSY_RESULTS_OWNER=UID:GID hands the files to the
# host user who asked for them.
#
# To test your own kernel build instead of the image's: mount it and set WEENSY_BUILD_DIR and WEENSY_NO_BUILD=1
# (tests/conftest.py honours both), e.g. -v "$PWD/build:/work/build-user:ro" -e WEENSY_BUILD_DIR=/work/build-user
# -e WEENSY_NO_BUILD=1.
set -u
cd /work/weensy-harness

results="${WEENSY_RESULTS_DIR:-}"
extra=()
if [ -n "$results" ] && [ -d "$results" ]; then
    extra+=("--junitxml=$results/junit.xml" "--weensy-results=$results/results.json")
    rm -f "$results/junit.xml" "$results/results.json"
fi

if [ -n "${WEENSY_BUILD_DIR:-}" ]; then
    echo "entrypoint: testing the kernel and programs in $WEENSY_BUILD_DIR (WEENSY_NO_BUILD=${WEENSY_NO_BUILD:-})"
fi
args=(-n auto "${extra[@]}" "$@")
echo "entrypoint: .venv/bin/python -m pytest$(printf ' %q' "${args[@]}")"
.venv/bin/python -m pytest "${args[@]}"
status=$?

if [ ${#extra[@]} -gt 0 ]; then
    if [ -n "${WEENSY_RESULTS_OWNER:-}" ]; then
        chown -R "$WEENSY_RESULTS_OWNER" "$results" 2>/dev/null || true
    fi
fi
exit "$status"
