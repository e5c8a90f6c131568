#!/bin/sh
# Runs every test binary given ($VALGRIND, when set, wraps each binary), then sums their closing "N passed, N failed"
# lines into one. Exit status 1 when anything failed or a binary crashed.
total_p=0; total_f=0
for t in "$@"; do
    echo "== $t"
    case "$t" in
    *.sh) out=$("$t" 2>&1); rc=$? ;;
    *) out=$(${VALGRIND:-} "$t" 2>&1); rc=$? ;;
    esac
    printf '%s\n' "$out"
    line=$(printf '%s\n' "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -n 1)
    if [ -z "$line" ]; then
        echo "FAIL $t exited with status $rc without a closing line"
        total_f=$((total_f + 1)); continue
    fi
    p=${line%% passed*}; f=${line#*passed, }; f=${f%% failed}
    total_p=$((total_p + p)); total_f=$((total_f + f))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "FAIL $t exited with status $rc"; total_f=$((total_f + 1))
    fi
done
echo "$total_p passed, $total_f failed"
[ "$total_f" -eq 0 ]
