#!/bin/sh
# Tether agent installer, served by a Tether server at GET /api/agent/install.sh.
#
#   curl -fsSL <server>/api/agent/install.sh | sudo sh -s -- --site-code <code> --enrollment-key <cek_…>
#
# Downloads the agent binary from the same server and checks its SHA-256, writes the agent's
# configuration readable by root only, and installs, enables and starts a systemd unit. The
# agent enrolls on its first start; the enrollment key is not used again after that.
#
# Run again on an enrolled machine (its credentials are in the state dir), it upgrades: the site
# code and enrollment key are optional then, and the key is not written (agent.env is rewritten
# without it), so the site-wide secret does not stay on machines that no longer need it.
#
# TETHER_INSTALL_ROOT=<dir> installs under another root (an image being built, or a test):
# files go below it and the unit is enabled with `systemctl --root`, never started.
set -eu

# Filled in by the server that served this script.
SERVER='@@SERVER_URL@@'
AGENT_SHA256='@@AGENT_SHA256@@'
AGENT_PLATFORM='@@AGENT_PLATFORM@@'

ROOT="${TETHER_INSTALL_ROOT:-}"
BIN="/usr/local/bin/tether-agent"
CONF_DIR="/etc/tether"
ENV_FILE="$CONF_DIR/agent.env"
UNIT="tether-agent.service"
UNIT_FILE="/etc/systemd/system/$UNIT"
STATE_DIR="/var/lib/tether-agent"

fail() { printf 'tether install: %s\n' "$*" >&2; exit 1; }
say() { printf 'tether install: %s\n' "$*"; }

# grep matches line by line: a value with a line break would pass the checks below on one line
# and add lines of its own to agent.env (LD_PRELOAD=…). No value may hold one.
NL='
'
CR="$(printf '\r')"
one_line() { # option value
  case "$2" in *"$NL"*|*"$CR"*) fail "$1: must not contain a line break" ;; esac
}

SITE_CODE=""
ENROLLMENT_KEY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --site-code) [ $# -ge 2 ] || fail "--site-code needs a value"; one_line "$1" "$2"; SITE_CODE="$2"; shift 2 ;;
    --enrollment-key) [ $# -ge 2 ] || fail "--enrollment-key needs a value"; one_line "$1" "$2"; ENROLLMENT_KEY="$2"; shift 2 ;;
    --server) [ $# -ge 2 ] || fail "--server needs a value"; one_line "$1" "$2"; SERVER="$2"; shift 2 ;;
    -h|--help) say "usage: sh install.sh --site-code <code> --enrollment-key <cek_…> [--server <url>]  (on an enrolled machine, to upgrade: sh install.sh [--server <url>])"; exit 0 ;;
    *) fail "unknown argument: $1" ;;
  esac
done
one_line "--server" "$SERVER" # the served default too

# Enrolled already (credentials in the state dir): an upgrade. The key would never be used.
ENROLLED=""
[ -s "$ROOT$STATE_DIR/credentials.json" ] && ENROLLED=1

# Everything below is written into files and a unit: accept only the documented shapes.
if [ -z "$ENROLLED" ] || [ -n "$SITE_CODE" ]; then
  printf '%s' "$SITE_CODE" | grep -Eq '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$' || fail "--site-code: letters, digits, . _ - only"
fi
if [ -z "$ENROLLED" ] || [ -n "$ENROLLMENT_KEY" ]; then
  printf '%s' "$ENROLLMENT_KEY" | grep -Eq '^cek_[0-9a-f]{64}$' || fail "--enrollment-key: expected cek_ and 64 hex digits"
fi
printf '%s' "$SERVER" | grep -Eq '^https?://[][A-Za-z0-9.:_-]+(/[A-Za-z0-9._~/-]*)?$' || fail "--server: expected http(s)://host[:port]"
SERVER="${SERVER%/}"
if [ -n "$ENROLLED" ]; then
  [ -z "$ENROLLMENT_KEY" ] || say "already enrolled ($STATE_DIR/credentials.json): the enrollment key is not needed and is not written"
  ENROLLMENT_KEY=""
fi

[ -n "$AGENT_SHA256" ] || fail "the server has no agent binary to install (build it there with: npm run build:agent)"

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64|Linux-amd64) here="linux-x64" ;;
  Linux-aarch64|Linux-arm64) here="linux-arm64" ;;
  *) here="$(uname -s)-$(uname -m)" ;;
esac
[ "$here" = "$AGENT_PLATFORM" ] || fail "this machine is $here; the server offers an agent for $AGENT_PLATFORM"

if [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then fail "run as root (sudo sh -s -- …)"; fi

download() { # url file
  if command -v curl >/dev/null 2>&1; then curl -fsSL --proto '=http,https' -o "$2" "$1"
  elif command -v wget >/dev/null 2>&1; then wget -q -O "$2" "$1"
  else fail "needs curl or wget"; fi
}
sha256() { # file
  if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d' ' -f1
  elif command -v shasum >/dev/null 2>&1; then shasum -a 256 "$1" | cut -d' ' -f1
  else openssl dgst -sha256 -r "$1" | cut -d' ' -f1; fi
}

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT INT TERM
say "downloading the agent from $SERVER"
download "$SERVER/api/agent/binary" "$tmp/tether-agent" || fail "download failed: $SERVER/api/agent/binary"
got="$(sha256 "$tmp/tether-agent")"
[ "$got" = "$AGENT_SHA256" ] || fail "checksum mismatch: expected $AGENT_SHA256, got $got; nothing was installed"

umask 022
mkdir -p "$ROOT/usr/local/bin" "$ROOT/etc/systemd/system"
install -m 0755 "$tmp/tether-agent" "$ROOT$BIN.new"
mv -f "$ROOT$BIN.new" "$ROOT$BIN"

# The enrollment key is a secret of the whole site: root only, never on a command line, and
# only until the machine has enrolled (an upgrade leaves it out).
umask 077
mkdir -p "$ROOT$CONF_DIR"
chmod 0700 "$ROOT$CONF_DIR"
{
  printf 'TETHER_AGENT_SERVER=%s\n' "$SERVER"
  [ -z "$SITE_CODE" ] || printf 'TETHER_AGENT_SITE_CODE=%s\n' "$SITE_CODE"
  [ -z "$ENROLLMENT_KEY" ] || printf 'TETHER_AGENT_ENROLLMENT_KEY=%s\n' "$ENROLLMENT_KEY"
  printf 'TETHER_AGENT_STATE_DIR=%s\n' "$STATE_DIR"
} > "$tmp/agent.env"
chmod 0600 "$tmp/agent.env"
mv -f "$tmp/agent.env" "$ROOT$ENV_FILE"

umask 022
cat > "$ROOT$UNIT_FILE" <<UNITEOF
[Unit]
Description=Tether agent
Documentation=$SERVER/api/docs
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=$BIN
EnvironmentFile=$ENV_FILE
StateDirectory=tether-agent
StateDirectoryMode=0700
Restart=always
RestartSec=5
# 2: bad usage; 6: a cloned state dir and no enrollment key. A restart cannot fix either.
RestartPreventExitStatus=2 6
KillSignal=SIGTERM
TimeoutStopSec=15

[Install]
WantedBy=multi-user.target
UNITEOF

if ! command -v systemctl >/dev/null 2>&1; then
  say "installed $BIN; no systemctl here: start it with  $BIN  (environment from $ENV_FILE)"
elif [ -n "$ROOT" ]; then
  systemctl --root="$ROOT" enable "$UNIT"
  say "installed under $ROOT and enabled $UNIT (not started)"
else
  systemctl daemon-reload
  systemctl enable "$UNIT"
  systemctl restart "$UNIT"
  say "installed and started $UNIT; follow it with: journalctl -u $UNIT -f"
fi
