#!/bin/sh
# test_refcheck.sh: `diffuse refcheck` on every reference set in ../shared/reference
# (both layouts, every case); its closing line counts into the suite's total.
# Sets named in tests/refcheck_pending (not supported yet) run but do not count.
bin=${BUILD:-build}/diffuse
ref=${DIFFUSE_SHARED:-../shared}/reference
if [ ! -d "$ref" ]; then
    if [ "${CI:-}" = true ]; then echo "FAIL missing $ref (CI=true)"; echo "0 passed, 1 failed"; exit 1; fi
    echo "SKIP missing $ref"; echo "0 passed, 0 failed"; exit 0
fi
pending=$(dirname "$0")/refcheck_pending
p=0; f=0
for dir in "$ref"/*/; do
    [ -f "$dir/golden.json" ] || continue
    set=$(basename "$dir")
    issue=$(awk -v s="$set" '$1 == s { print $2 }' "$pending")
    echo "refcheck $dir"
    out=$(${VALGRIND:-} "$bin" refcheck "$dir" 2>&1); rc=$?
    if [ -n "$issue" ]; then
        line=$(printf '%s\n' "$out" | tail -n 1)
        case "$line" in
        *" passed, 0 failed")
            echo "FAIL $set passes whole: take it out of tests/refcheck_pending (issue $issue)"
            f=$((f + 1)) ;;
        *) echo "pending $set (issue $issue): $line, not counted" ;;
        esac
        continue
    fi
    printf '%s\n' "$out" | grep -v ' ok$'
    line=$(printf '%s\n' "$out" | tail -n 1)
    case "$line" in
    *" passed, "*" failed") ;;
    *) echo "FAIL refcheck $dir: no closing line (status $rc)"; f=$((f + 1)); continue ;;
    esac
    p=$((p + ${line%% passed*})); lf=${line#*passed, }; f=$((f + ${lf%% failed}))
    [ "$rc" -eq 0 ] || [ "${lf%% failed}" -ne 0 ] || { echo "FAIL status $rc"; f=$((f + 1)); }
done
# the same with oneDNN on every convolution it can take, direct and Winograd,
# and on every linear layer (engine/conv_dnnl.c: by default only the large
# ones go there, which the tiny sets have few of)
for conv in dnnl winograd; do
for set in sd1-tiny sdxl-tiny taesd; do
    [ -d "$ref/$set" ] || continue
    echo "refcheck $ref/$set with DIFFUSE_CONV=$conv DIFFUSE_LINEAR=dnnl"
    out=$(DIFFUSE_CONV=$conv DIFFUSE_LINEAR=dnnl ${VALGRIND:-} "$bin" refcheck "$ref/$set" 2>&1); rc=$?
    printf '%s\n' "$out" | grep -v ' ok$'
    line=$(printf '%s\n' "$out" | tail -n 1)
    case "$line" in
    *" passed, "*" failed") ;;
    *) echo "FAIL refcheck $set ($conv): no closing line (status $rc)"; f=$((f + 1)); continue ;;
    esac
    p=$((p + ${line%% passed*})); lf=${line#*passed, }; f=$((f + ${lf%% failed}))
done
done
echo "$p passed, $f failed"
[ "$f" -eq 0 ]
