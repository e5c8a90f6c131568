# lib.sh: what the shell tests share, sourced from the repository root
# (. tests/lib.sh): the pass and fail counters and the closing line
# "N passed, N failed" that tests/run.sh sums.
passed=0
failed=0
pass() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }
finish() {
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit
}
