#!/usr/bin/env bash
# Sets up and runs signetd with embedded defaults on this machine:
# installs packages, builds, creates (once) a SoftHSM2 token with the three
# keys, a SQLite store, a development configuration with generated tokens,
# then runs both listeners (write 127.0.0.1:7700, read 127.0.0.1:7701).
# Everything lives in var/dev/ (mode 700); tokens are in var/dev/tokens.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cmake -S . -B build >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
dev=$PWD/var/dev
umask 077
mkdir -p "$dev/softhsm/tokens"
export SOFTHSM2_CONF=$dev/softhsm2.conf
[ -f "$SOFTHSM2_CONF" ] || sed "s|^directories.tokendir.*|directories.tokendir = $dev/softhsm/tokens|" \
  pkcs11/softhsm2.conf > "$SOFTHSM2_CONF"
if [ ! -f "$dev/pins.env" ]; then
  printf 'SIGNET_PIN=%s\nSIGNET_SO_PIN=%s\n' "$(openssl rand -hex 16)" "$(openssl rand -hex 16)" > "$dev/pins.env"
fi
set -a; . "$dev/pins.env"; set +a
if [ ! -f "$dev/signet.json" ]; then
  : > "$dev/tokens.txt"
  principals=""
  for p in "ci builder" "ops operator" "alice approver" "bob approver" "audit auditor" \
           "admin admin" "dev-0001 device"; do
    set -- $p
    tok=$(openssl rand -hex 24)
    echo "$1 ($2): $tok" >> "$dev/tokens.txt"
    extra=""; [ "$2" = device ] && extra=", \"device_id\": \"$1\""
    principals="$principals${principals:+,
    }{\"name\": \"$1\", \"token_sha256\": \"$(build/signet token-hash "$tok")\", \"roles\": [\"$2\"]$extra}"
  done
  cat > "$dev/signet.json" <<JSON
{
  "data_dir": "data",
  "store": "sqlite:data/events.db",
  "write_listen": "127.0.0.1:7700",
  "read_listen": "127.0.0.1:7701",
  "pkcs11": {
    "module": "/usr/lib/softhsm/libsofthsm2.so",
    "token_label": "signet",
    "pin_env": "SIGNET_PIN",
    "so_pin_env": "SIGNET_SO_PIN"
  },
  "principals": [
    $principals
  ],
  "approvals": {"default": 2, "actions": {"reboot": 1}},
  "limits": {"max_image_bytes": 1073741824, "max_json_bytes": 65536}
}
JSON
fi
build/signet init --config "$dev/signet.json"
echo "dev-run: configuration $dev/signet.json; bearer tokens in $dev/tokens.txt" >&2
echo "dev-run: SOFTHSM2_CONF=$SOFTHSM2_CONF; PINs in $dev/pins.env" >&2
exec build/signetd --config "$dev/signet.json"
