#!/bin/sh
# test_judge.sh: the adherence benchmark's judge (tests/bench/adherence_judge.py)
# on ground truth, in `make test`: the scenes of tests/fixtures/judge, drawn by
# the training renderer (models/train/scenes.py; a third of them blurred by
# 1.5 pixels, the soft edges and blunt points decoders draw) and written by
# `adherence.py --self-test --images 48 --seed 3 --keep tests/fixtures/judge`.
# For each scene the judge must read every attribute of its prompt right, and
# must reject the prompt with the shape, the object colour or the count
# changed, so a judge that calls everything right fails too.
# (`make bench-adherence` runs the full self-test, 200 fresh scenes, where
# PyTorch is installed.) Needs python3 with numpy.
# Ends with "N passed, N failed" (tests/run.sh).

PY=
for p in ${PYTHON:-} python3 /usr/bin/python3; do
    "$p" -c 'import numpy' 2>/dev/null && PY=$p && break
done
if [ -z "$PY" ]; then
    echo "FAIL python3 with numpy missing (the judge needs it)"
    echo "0 passed, 1 failed"
    exit 1
fi

exec "$PY" - tests/fixtures/judge <<'PYEOF'
import os
import sys

sys.path.insert(0, "tests/bench")
import adherence_judge as J  # noqa: E402

folder = sys.argv[1]
passed = failed = 0


def check(ok, what):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print(f"FAIL {what}")


with open(os.path.join(folder, "cases.tsv")) as f:
    cases = [line.rstrip("\n").split("\t") for line in f if not line.startswith("#")]
check(len(cases) == 48, f"48 fixture scenes ({len(cases)} listed)")
for name, prompt, blur in cases:
    img = J.read_png(os.path.join(folder, name))
    spec = J.parse_prompt(prompt)
    a, right = J.judge(img, spec)
    tag = f"{name} ({'blurred ' + blur + ' px' if float(blur) else 'sharp'})"
    check(all(right.values()), f"{tag}: {prompt!r} read as {J.describe(a)!r}")
    # the same image against a prompt that differs in one attribute
    for key, n in (("shape", 4), ("color", 8), ("count", 3)):
        other = dict(spec)
        other[key] = (spec[key] + 1) % n if key != "count" else spec[key] % 3 + 1
        if key == "color" and other["color"] == spec["bg"]:
            other["color"] = (other["color"] + 1) % 8
        check(not J.judge(img, other)[1][key], f"{tag}: {key} {other[key]} accepted for {prompt!r}")
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PYEOF
