#!/usr/bin/env bash
# bench/firmware.sh - firmware upload and download of a 1 GiB image, next to
# what the machine does without signet: upload (POST /v1/firmware with curl,
# until the 201: streamed to disk, hashed, fsynced, linked, manifest signed,
# event durable) against `sha256sum` of the same file, and download
# (GET /v1/firmware/{id}/image with curl, -o /dev/null) against a plain curl
# copy of the same file from a loopback static server (python3 -m
# http.server, -o /dev/null too: both measure the server and the wire, not
# the client's disk). Before each run the disk is synced and every file is
# read once, so each contender starts from the page cache and a quiet disk. Prints each figure (median of BENCH_FW_RUNS runs), the two
# ratios and signetd's peak RSS. Everything lives in a temporary directory,
# on 127.0.0.1.
#
# usage: bench/firmware.sh [BUILD_DIR]        (default: build)
# env:   BENCH_FW_MIB (1024), BENCH_FW_RUNS (3),
#        SOFTHSM2_MODULE (/usr/lib/softhsm/libsofthsm2.so)
# Aims (issue 7): upload >= 0.7 x sha256sum, download >= 0.8 x the plain copy.
# Also printed: the upload against `dd conv=fsync` of the same file onto the
# same file system: on a busy or slow disk that, not hashing, sets the pace.
set -euo pipefail

NAME=firmware.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
BUILD=$(build_dir "${1:-build}")
MODULE=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
MIB=${BENCH_FW_MIB:-1024}
RUNS=${BENCH_FW_RUNS:-3}

require_built "$BUILD" signet signetd
require_tools python3 curl sha256sum od dd

TMP=$(mktemp -d "${TMPDIR:-/var/tmp}/signet-fwbench.XXXXXX")
SIGNETD_PID=
HTTPD_PID=
cleanup() {
    for p in $SIGNETD_PID $HTTPD_PID; do
        if kill -0 "$p" 2>/dev/null; then
            kill -KILL "$p" 2>/dev/null || true
            wait "$p" 2>/dev/null || true
        fi
    done
    [[ -n ${BENCH_FW_KEEP_LOG:-} ]] && cp "$TMP/signetd.log" "$BENCH_FW_KEEP_LOG"
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() {
    echo "firmware.sh: $*" >&2
    [[ -s $TMP/signetd.log ]] && tail -n 20 "$TMP/signetd.log" >&2
    exit 1
}
median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f\n", b - a }'; }
wait_http() { # URL
    local deadline=$((SECONDS + 30))
    until [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$1" || true) == 200 ]]; do
        ((SECONDS < deadline)) || fail "$1 did not answer 200 within 30 s"
        sleep 0.1
    done
}

# --- a token, a builder and an auditor, a config --------------------------
mkdir -p "$TMP/tokens" "$TMP/www"
cat > "$TMP/softhsm2.conf" <<EOF
directories.tokendir = $TMP/tokens
objectstore.backend = file
log.level = ERROR
EOF
export SOFTHSM2_CONF=$TMP/softhsm2.conf
SIGNET_PIN=$(randhex 16)
SIGNET_SO_PIN=$(randhex 16)
export SIGNET_PIN SIGNET_SO_PIN
BUILDER=$(randhex 32)
READER=$(randhex 32)
read -r WP RP SP < <(python3 -c '
import socket
s = [socket.socket() for _ in range(3)]
for x in s: x.bind(("127.0.0.1", 0))
print(*(x.getsockname()[1] for x in s))
for x in s: x.close()')
sha() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
cat > "$TMP/signet.json" <<EOF
{
  "data_dir": "var",
  "store": "sqlite:var/events.db",
  "write_listen": "127.0.0.1:$WP",
  "read_listen": "127.0.0.1:$RP",
  "pkcs11": {"module": "$MODULE", "token_label": "signet", "pin_env": "SIGNET_PIN",
             "so_pin_env": "SIGNET_SO_PIN"},
  "principals": [
    {"name": "ci", "token_sha256": "$(sha "$BUILDER")", "roles": ["builder"]},
    {"name": "reader", "token_sha256": "$(sha "$READER")", "roles": ["auditor"]}
  ],
  "limits": {"max_image_bytes": $((MIB * 1048576)), "max_json_bytes": 65536}
}
EOF
"$BUILD/signet" init --config "$TMP/signet.json" > "$TMP/init.log" 2>&1 ||
    { cat "$TMP/init.log" >&2; fail "signet init failed"; }

# --- the images: one per run (the same bytes twice would be a 409) --------
echo "== making $RUNS image(s) of $MIB MiB in $TMP"
head -c $((MIB * 1048576)) /dev/urandom > "$TMP/www/image-1.bin"
for ((i = 2; i <= RUNS; i++)); do
    cp "$TMP/www/image-1.bin" "$TMP/www/image-$i.bin"
    printf 'run%05d' "$i" | dd of="$TMP/www/image-$i.bin" bs=1 seek=0 conv=notrunc status=none
done

"$BUILD/signetd" --config "$TMP/signet.json" 2> "$TMP/signetd.log" > /dev/null &
SIGNETD_PID=$!
wait_http "http://127.0.0.1:$RP/healthz"
(cd "$TMP/www" && exec python3 -m http.server --bind 127.0.0.1 "$SP") > "$TMP/httpd.log" 2>&1 &
HTTPD_PID=$!
wait_http "http://127.0.0.1:$SP/image-1.bin"

: > "$TMP/sha.t"
: > "$TMP/up.t"
: > "$TMP/dl.t"
: > "$TMP/plain.t"
: > "$TMP/dd.t"
for ((i = 1; i <= RUNS; i++)); do
    img=$TMP/www/image-$i.bin
    sync
    cat "$img" > /dev/null # in the page cache for every contender alike
    t0=$(now)
    want=$(sha256sum "$img" | cut -d' ' -f1)
    elapsed "$t0" "$(now)" >> "$TMP/sha.t"

    # What the disk allows: a plain durable copy onto the data directory's
    # file system (an upload cannot be answered before its bytes are on disk).
    sync
    t0=$(now)
    dd if="$img" of="$TMP/durable.bin" bs=1M conv=fsync status=none
    elapsed "$t0" "$(now)" >> "$TMP/dd.t"
    rm -f "$TMP/durable.bin"
    sync

    t0=$(now)
    code=$(curl -sS -o "$TMP/up.json" -w '%{http_code}' -X POST -T "$img" -H "Expect:" \
        -H "Authorization: Bearer $BUILDER" -H "Content-Type: application/octet-stream" \
        "http://127.0.0.1:$WP/v1/firmware?name=bench&version=$i&hardware=hw-bench&security_version=1")
    elapsed "$t0" "$(now)" >> "$TMP/up.t"
    [[ $code == 201 ]] || fail "upload $i answered $code: $(cat "$TMP/up.json")"
    id=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["firmware_id"], d["position"])' "$TMP/up.json")
    pos=${id#* }
    id=${id% *}
    [[ $id == "sha256:$want" ]] || fail "upload $i: firmware id $id, sha256sum says $want"

    t0=$(now)
    code=$(curl -sS -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $READER" \
        "http://127.0.0.1:$RP/v1/firmware/$id/image?min_position=$pos&wait_ms=10000")
    elapsed "$t0" "$(now)" >> "$TMP/dl.t"
    [[ $code == 200 ]] || fail "download $i answered $code"

    t0=$(now)
    curl -sS -o /dev/null "http://127.0.0.1:$SP/image-$i.bin"
    elapsed "$t0" "$(now)" >> "$TMP/plain.t"
    echo "run $i: sha256sum $(tail -n1 "$TMP/sha.t") s, durable copy $(tail -n1 "$TMP/dd.t") s, upload $(tail -n1 "$TMP/up.t") s," \
        "download $(tail -n1 "$TMP/dl.t") s, plain copy $(tail -n1 "$TMP/plain.t") s"
done
HWM=$(awk '/^VmHWM:/ { print $2 }' "/proc/$SIGNETD_PID/status")

SHA_S=$(median < "$TMP/sha.t")
UP_S=$(median < "$TMP/up.t")
DL_S=$(median < "$TMP/dl.t")
PLAIN_S=$(median < "$TMP/plain.t")
DD_S=$(median < "$TMP/dd.t")
mibs() { awk -v m="$MIB" -v s="$1" 'BEGIN { printf "%.0f", (s > 0 ? m / s : 0) }'; }
UP_RATIO=$(awk -v a="$SHA_S" -v b="$UP_S" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
DD_RATIO=$(awk -v a="$DD_S" -v b="$UP_S" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
DL_RATIO=$(awk -v a="$PLAIN_S" -v b="$DL_S" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
verdict() { awk -v x="$1" -v t="$2" 'BEGIN { print (x >= t ? "meets" : "below") }'; }

cat <<EOF

== firmware summary ($MIB MiB image, median of $RUNS)
fw_image_mib $MIB
fw_sha256sum_s $SHA_S
fw_upload_s $UP_S
fw_download_s $DL_S
fw_plain_copy_s $PLAIN_S
fw_durable_copy_s $DD_S
fw_sha256sum_mib_per_s $(mibs "$SHA_S")
fw_upload_mib_per_s $(mibs "$UP_S")
fw_download_mib_per_s $(mibs "$DL_S")
fw_plain_copy_mib_per_s $(mibs "$PLAIN_S")
fw_ratio_upload_over_sha256sum $UP_RATIO
fw_ratio_download_over_plain_copy $DL_RATIO
fw_ratio_upload_over_durable_copy $DD_RATIO
fw_signetd_peak_rss_kib $HWM
upload: $(mibs "$UP_S") MiB/s against sha256sum's $(mibs "$SHA_S") MiB/s (ratio $UP_RATIO, $(verdict "$UP_RATIO" 0.7) the 0.7 aim; $DD_RATIO x a durable dd copy at $(mibs "$DD_S") MiB/s); download: $(mibs "$DL_S") MiB/s against a plain copy's $(mibs "$PLAIN_S") MiB/s (ratio $DL_RATIO, $(verdict "$DL_RATIO" 0.8) the 0.8 aim); signetd peak RSS $HWM KiB
EOF
