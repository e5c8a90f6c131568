#!/bin/sh
# dialog-capture.sh: runs inside xvfb-run for tests/test_gimp_dialog.sh.
#   dialog-capture.sh LOG TIMEOUT SCRIPT STEP...
# Starts GIMP (the full GUI binary $GIMP_GUI: gimp-console cannot show
# dialogs; $BATCH_OPTIONS before the -b, and for GIMP_GENERATION=3 --quit
# rather than a quitting batch command, see tests/gimp/gen.sh) with the batch
# command SCRIPT, then for each STEP "TITLE|PNG|KEYS"
# waits for a window named TITLE, captures it into PNG and sends KEYS, words
# apart: a key (Escape cancels, alt+o presses OK), =TEXT types TEXT, wait
# waits a second. Waits for GIMP to quit; kills it after TIMEOUT
# seconds so that a dialog that never shows or never closes cannot hang the
# tests. Exit status 0 when every window was seen and GIMP quit by itself.
log=$1 timeout=$2 script=$3
shift 3

# timeout runs GIMP in a process group of its own and kills all of it (the
# plug-ins too) when the time is up.
if [ "${GIMP_GENERATION:-2}" = 2 ]; then
    timeout -k 5 "$timeout" "$GIMP_GUI" -d -f -s -b "$script" -b '(gimp-quit 1)' \
        >"$log" 2>&1 </dev/null &
else
    # shellcheck disable=SC2086 # BATCH_OPTIONS is a list of words
    timeout -k 5 "$timeout" "$GIMP_GUI" -d -f -s ${BATCH_OPTIONS:-} -b "$script" --quit \
        >"$log" 2>&1 </dev/null &
fi
gimp=$!
deadline=$(($(date +%s) + timeout))
status=0

# window TITLE: prints the id of the visible window named TITLE once it exists
window() {
    while [ "$(date +%s)" -lt "$deadline" ]; do
        id=$(xdotool search --onlyvisible --name "^$1\$" 2>/dev/null | head -n 1)
        if [ -n "$id" ]; then
            echo "$id"
            return 0
        fi
        kill -0 "$gimp" 2>/dev/null || return 1
        sleep 0.5
    done
    return 1
}

for step in "$@"; do
    title=${step%%|*} rest=${step#*|}
    png=${rest%%|*} key=${rest#*|}
    if ! id=$(window "$title"); then
        echo "no window '$title' appeared" >&2
        status=1
        break
    fi
    # on top of GIMP's own windows (no window manager here), then time to
    # draw and to load the model for its info line
    xdotool windowraise "$id" >&2
    xdotool mousemove 0 0 >&2 # off the dialog: no tooltip over the picture
    sleep 2
    import -window "$id" "$png" >&2 || status=1
    xdotool windowfocus --sync "$id" >&2
    for word in $key; do
        case $word in
        =*) xdotool type --delay 20 "${word#=}" >&2 ;;
        wait) sleep 1 ;;
        *) xdotool key --clearmodifiers "$word" >&2 ;;
        esac
        sleep 0.3
    done
done

wait "$gimp"
rc=$?
if [ "$rc" -ne 0 ]; then
    echo "GIMP exited with status $rc (124: it did not quit within $timeout s)" >&2
    status=1
fi
exit "$status"
