#!/usr/bin/env bash
# The pilot's wrapper: what a batch system (Slurm, HTCondor) or a pilot factory (Harvester) runs on the
# worker node. It chooses the bundle (production; a release candidate for a share of pilots; the
# development bundle for test pilots) and passes the matching version tag, makes a private work dir,
# runs `python3 BUNDLE run ...` there, forwards SIGTERM, SIGINT and SIGUSR1 to the pilot, ends a pilot
# whose log stopped changing, maps the exit code and cleans up.
#
#   pilot-wrapper.sh [wrapper options] [--] PILOT-RUN-OPTIONS...
#
# Wrapper options (all optional; everything else is passed to `pandapilot run`):
#   --bundle FILE         production bundle (default: $PANDAPILOT_BUNDLE, else pandapilot.pyz beside this script)
#   --rc-bundle FILE      release-candidate bundle
#   --rc-share PERCENT    share of pilots (0-100) that run the release candidate (default 1)
#   --rc-tag TAG          the candidate's version tag: RC, RCM or ALRB (default RC)
#   --dev-bundle FILE     development bundle, run by test pilots
#   --test-pilot          this is a test pilot: the development bundle, version tag PT
#   --python PATH         the python3 (>= 3.9) to run the bundle with (default: python3 on PATH)
#   --workdir-base DIR    where the pilot's work dir is made (default: $TMPDIR, else /tmp)
#   --stale-log SECONDS   end a pilot whose log has not changed for this long (default 3600; 0: never)
#   --kill-grace SECONDS  SIGTERM to SIGKILL for such a pilot (default 60)
#   --keep-workdir        keep the work dir (by default it is removed unless job dirs were left in it)
#
# Exit codes: the pilot's own (README, "Exit codes"), except 82 (no job was ever received: an idle pilot
# is not a failed batch job) which becomes 0; and the wrapper's: 90 no usable bundle or python,
# 91 the work dir cannot be made, 92 the pilot was ended because its log stopped changing.
set -u

log() { printf '%s pilot-wrapper: %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S')" "$*"; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bundle=${PANDAPILOT_BUNDLE:-$here/pandapilot.pyz}
rc_bundle="" rc_share=1 rc_tag=RC dev_bundle="" test_pilot=0 python=python3
workdir_base=${TMPDIR:-/tmp} stale_log=3600 kill_grace=60 keep_workdir=0

while (( $# )); do
    case $1 in
        --bundle) bundle=$2; shift 2 ;;
        --rc-bundle) rc_bundle=$2; shift 2 ;;
        --rc-share) rc_share=$2; shift 2 ;;
        --rc-tag) rc_tag=$2; shift 2 ;;
        --dev-bundle) dev_bundle=$2; shift 2 ;;
        --test-pilot) test_pilot=1; shift ;;
        --python) python=$2; shift 2 ;;
        --workdir-base) workdir_base=$2; shift 2 ;;
        --stale-log) stale_log=$2; shift 2 ;;
        --kill-grace) kill_grace=$2; shift 2 ;;
        --keep-workdir) keep_workdir=1; shift ;;
        --) shift; break ;;
        *) break ;;
    esac
done
for number in "$rc_share" "$stale_log" "$kill_grace"; do
    [[ $number =~ ^[0-9]+$ ]] || { log "not a whole number: '$number'"; exit 90; }
done

# --- which code runs ---------------------------------------------------------------------------
tag=PR
if (( test_pilot )); then
    bundle=$dev_bundle tag=PT
elif [[ -n $rc_bundle ]] && (( (RANDOM * 32768 + RANDOM) % 100 < rc_share )); then
    bundle=$rc_bundle tag=$rc_tag
fi
if [[ -z $bundle || ! -f $bundle ]]; then
    log "no $tag bundle to run ('$bundle')"; exit 90
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 9))' 2>/dev/null; then
    log "'$python' is not a python >= 3.9"; exit 90
fi
bundle=$(cd "$(dirname "$bundle")" && pwd)/$(basename "$bundle")

# --- the work dir --------------------------------------------------------------------------------
if ! workdir=$(mktemp -d "$workdir_base/pandapilot.XXXXXXXX" 2>/dev/null); then
    log "cannot make a work dir under '$workdir_base'"; exit 91
fi
pilot_log=$workdir/pilot.log
stamp=$workdir/.log-checked
tick=$workdir/.tick
cd "$workdir" || exit 91
mkfifo "$tick" && exec 3<>"$tick"  # `read -t` on it is a sleep that needs no process and that signals cut short
: >"$pilot_log"; : >"$stamp"
log "running $bundle ($tag) in $workdir; its log: $pilot_log"

# --- the pilot, under watch -----------------------------------------------------------------------
PANDA_PILOT_VERSION_TAG=$tag "$python" "$bundle" run --version-tag "$tag" --workdir "$workdir/pilot" "$@" \
    >"$pilot_log" 2>&1 </dev/null &
pid=$!
forward() {
    log "SIG$1: forwarding it to the pilot (pid $pid)"
    kill -s "$1" "$pid" 2>/dev/null
}
trap 'forward TERM' TERM
trap 'forward INT' INT
trap 'forward USR1' USR1

stale=0 changed=$SECONDS term_sent=0
while kill -0 "$pid" 2>/dev/null; do
    read -r -t 1 -u 3 _ 2>/dev/null
    (( stale_log > 0 )) || continue
    if [[ $pilot_log -nt $stamp ]]; then
        : >"$stamp"; changed=$SECONDS
    elif (( ! stale && SECONDS - changed >= stale_log )); then
        log "the pilot's log has not changed for $stale_log s: ending it (SIGTERM)"
        stale=1 term_sent=$SECONDS
        kill -s TERM "$pid" 2>/dev/null
    elif (( stale && SECONDS - term_sent >= kill_grace )); then
        log "the pilot is still there $kill_grace s after SIGTERM: SIGKILL"
        kill -s KILL "$pid" 2>/dev/null
        term_sent=$SECONDS
    fi
done
wait "$pid"
rc=$?
trap - TERM INT USR1
exec 3>&-

cat "$pilot_log"
log "the pilot exited with code $rc"
case $rc in
    82) log "no job was received: exit 0"; rc=0 ;;
esac
(( stale )) && rc=92

# --- clean up ---------------------------------------------------------------------------------------
cd / || true
if (( keep_workdir )); then
    log "work dir kept: $workdir"
elif compgen -G "$workdir/pilot/PanDA_Pilot-*" >/dev/null; then
    log "work dir kept: job dirs were left in it for recovery ($workdir/pilot)"
else
    rm -rf -- "$workdir"
fi
exit "$rc"
