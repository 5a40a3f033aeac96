# bench/common.sh - sourced by bench/run.sh and bench/firmware.sh: the build
# directory, the checks for what a script needs, and small helpers. Set NAME
# (the script's name, for messages) before sourcing.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# build_dir DIR: DIR as an absolute path (relative to the repository if it is
# not a directory here)
build_dir() {
    local b=$1
    if [[ ! -d $b && -d $ROOT/$b ]]; then
        b=$ROOT/$b
    fi
    (cd "$b" && pwd)
}

# require_built BUILD FILE...: each FILE under BUILD is an executable, or exit 2
require_built() {
    local build=$1 f
    shift
    for f in "$@"; do
        [[ -x $build/$f ]] || { echo "$NAME: $build/$f is missing; build first" >&2; exit 2; }
    done
}

# require_tools TOOL...: each TOOL is on PATH, or exit 2
require_tools() {
    local t
    for t in "$@"; do
        command -v "$t" >/dev/null || { echo "$NAME: $t is required" >&2; exit 2; }
    done
}

# randhex N: N random bytes as lowercase hex
randhex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }
