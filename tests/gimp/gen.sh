# shellcheck shell=sh disable=SC2034 # a file to source: its variables are used there
# gen.sh: sourced by tests/test_gimp.sh and tests/test_gimp_dialog.sh; what
# differs between the GIMP generations they test, chosen by GIMP_GENERATION
# (2, the default: GIMP 2.10 on this host; 3: GIMP 3.0, as tests/gimp3/run.sh
# runs them inside a Debian trixie chroot). Needs $BUILD and $ROOT set.
#   GIMP_VERSION    the profile folder's name (~/.config/GIMP/$GIMP_VERSION)
#   PLUGIN_DIR      where make builds the plug-in, the folder gimprc adds
#   PLUGIN          the plug-in binary
#   UNIT_TEST       the core's unit test built against this generation's libgimp
#   GIMP_CONSOLE_DEFAULT, GIMP_GUI_DEFAULT, GIMP_DEV_PACKAGE
#   GENLIB          the Script-Fu loaded before tests/gimp/lib.scm
#   BATCH_OPTIONS   GIMP's options before the -b commands (Script-Fu as the
#                   batch interpreter in 3.0, which has no default one)
# and the functions make_profile and diffuse_call below. How GIMP quits
# differs too: 2.10 runs every -b command, so the last one quits it; 3.0 stops
# at a failing command and would then wait for ever, so it gets --quit.

GIMP_GENERATION=${GIMP_GENERATION:-2}
case $GIMP_GENERATION in
2)
    GIMP_VERSION=2.10
    PLUGIN_DIR=$BUILD/plug-ins
    GIMP_CONSOLE_DEFAULT=gimp-console-2.10
    GIMP_GUI_DEFAULT=gimp-2.10
    GIMP_DEV_PACKAGE=libgimp2.0-dev
    BATCH_OPTIONS=""
    ;;
3)
    GIMP_VERSION=3.0
    PLUGIN_DIR=$BUILD/plug-ins-3
    GIMP_CONSOLE_DEFAULT=gimp-console-3.0
    GIMP_GUI_DEFAULT=gimp-3.0
    GIMP_DEV_PACKAGE=libgimp-3.0-dev
    BATCH_OPTIONS="--batch-interpreter=plug-in-script-fu-eval"
    ;;
*)
    echo "GIMP_GENERATION is '$GIMP_GENERATION': 2 (GIMP 2.10) or 3 (GIMP 3.0)" >&2
    exit 2
    ;;
esac
PLUGIN=$PLUGIN_DIR/diffuse/diffuse
GENLIB=$ROOT/tests/gimp/gimp$GIMP_GENERATION.scm
UNIT_TEST=$BUILD/tests/gimp/test_core
[ "$GIMP_GENERATION" = 2 ] || UNIT_TEST=$BUILD/tests/gimp3/test_core

# make_profile HOME: a fresh GIMP profile under HOME (its folder is printed)
# whose gimprc adds the build tree's plug-ins to the default plug-in path;
# the data folders exist so that GIMP can save into them at exit.
make_profile() {
    profile_dir=$1/.config/GIMP/$GIMP_VERSION
    for d in brushes dynamics fonts gradients mypaint-brushes palettes patterns tool-presets \
        plug-ins modules interpreters environ scripts templates themes icons tmp; do
        mkdir -p "$profile_dir/$d"
    done
    # shellcheck disable=SC2016 # ${gimp_dir} is gimprc's own variable, for GIMP to expand
    printf '(plug-in-path "${gimp_dir}/plug-ins:${gimp_plug_in_dir}/plug-ins:%s/%s")\n' \
        "$ROOT" "$PLUGIN_DIR" >"$profile_dir/gimprc"
    echo "$profile_dir"
}

# diffuse_call RUN-MODE PROCEDURE IMAGE DRAWABLE NAME=VALUE...: the Script-Fu
# of a call to one of the plug-in's procedures, the values Scheme literals in
# the PDB order. 2.10 takes them by position with the one drawable; 3.0 takes
# keyword arguments (#:name value) with the drawables array.
diffuse_call() {
    call_mode=$1 call_proc=$2 call_image=$3 call_drawable=$4
    shift 4
    if [ "$GIMP_GENERATION" = 2 ]; then
        call="($call_proc $call_mode $call_image $call_drawable"
        for a; do call="$call ${a#*=}"; done
    else
        call="($call_proc #:run-mode $call_mode #:image $call_image"
        call="$call #:drawables (vector $call_drawable)"
        for a; do call="$call #:${a%%=*} ${a#*=}"; done
    fi
    echo "$call)"
}
