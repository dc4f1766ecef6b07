#!/usr/bin/env bash
# A throwaway Label Studio (PyPI label-studio 1.23.x, SQLite) on 127.0.0.1 for the integration tests.
#   scripts/label-studio.sh install  # the venv, cached under ${LABELGATE_CACHE:-~/.cache/labelgate}
#   scripts/label-studio.sh start    # install, start, wait until it answers, make the admin's token
#   scripts/label-studio.sh restart  # stop and start the server, keeping its data and token
#   scripts/label-studio.sh stop     # stop it and delete its run dir (data included)
#   scripts/label-studio.sh status
# LABEL_STUDIO_PORT (18080) overrides the port. start prints one line on stdout, the path of a file
# (mode 600) holding the admin's personal access token, for `token_file=$(scripts/label-studio.sh start)`;
# messages go to stderr. The admin is LABEL_STUDIO_ADMIN (admin@labelgate.test) with a password
# generated into the run dir.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
port=${LABEL_STUDIO_PORT:-18080}
version=${LABEL_STUDIO_VERSION:-1.23.2}
cache=${LABELGATE_CACHE:-$HOME/.cache/labelgate}
venv=$cache/label-studio-$version
run=${LABEL_STUDIO_RUN_DIR:-/tmp/labelgate-label-studio-$port}
admin=${LABEL_STUDIO_ADMIN:-admin@labelgate.test}
url=http://127.0.0.1:$port

install() {
  [ -f "$venv/.installed" ] && return
  command -v python3 >/dev/null || { echo "label-studio.sh: python3 is needed (Debian packages python3 python3-venv)" >&2; exit 1; }
  echo "label-studio.sh: installing label-studio $version into $venv (about 1 GB, a few minutes)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv" >&2 || { echo "label-studio.sh: python3 -m venv failed (Debian package python3-venv)" >&2; exit 1; }
  "$venv/bin/pip" install -q --disable-pip-version-check "label-studio==$version" >&2 || { rm -rf "$venv"; exit 1; }
  # Written last: an interrupted install is redone, not used half-made.
  touch "$venv/.installed"
}

# The settings the tests need, measured on 1.23: no calls to the internet (version check, Sentry),
# webhooks to the loopback bridge allowed, SQLite in the run dir, the admin made at start.
server() {
  mkdir -p "$run/data"
  if ss -ltn "sport = :$port" 2>/dev/null | grep -q LISTEN; then
    # Label Studio would silently pick another port.
    echo "label-studio.sh: port $port is taken; set LABEL_STUDIO_PORT" >&2; exit 1
  fi
  (
    cd "$run"
    LABEL_STUDIO_USERNAME=$admin LABEL_STUDIO_PASSWORD=$(cat "$run/password") \
    LABEL_STUDIO_BASE_DATA_DIR=$run/data LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK=true \
    LABEL_STUDIO_SSRF_PROTECTION_ENABLED=false LABEL_STUDIO_LATEST_VERSION_CHECK=false \
    LABEL_STUDIO_SENTRY_DSN= LABEL_STUDIO_FRONTEND_SENTRY_DSN= SENTRY_DSN= FRONTEND_SENTRY_DSN= \
    LABEL_STUDIO_COLLECT_ANALYTICS=false DJANGO_DB=sqlite SECRET_KEY=$(cat "$run/secret_key") \
      setsid "$venv/bin/label-studio" start --no-browser --internal-host 127.0.0.1 --port "$port" \
      >>"$run/label-studio.log" 2>&1 &
    echo $! >"$run/pid"
  )
  # The first start migrates a new SQLite database: about a minute, several on a loaded machine.
  local limit=${LABEL_STUDIO_START_TIMEOUT:-300}
  for _ in $(seq 1 $((limit * 2))); do
    if curl -fsS -o /dev/null "$url/health" 2>/dev/null; then return; fi
    if ! kill -0 "$(cat "$run/pid")" 2>/dev/null; then
      echo "label-studio.sh: label-studio exited; log tail ($run/label-studio.log):" >&2; tail -30 "$run/label-studio.log" >&2; exit 1
    fi
    sleep 0.5
  done
  echo "label-studio.sh: no answer on $url/health within $limit s (LABEL_STUDIO_START_TIMEOUT); log tail:" >&2; tail -30 "$run/label-studio.log" >&2; exit 1
}

# A personal access token (JWT refresh token) of the admin, made through a session login as the
# web UI does: 1.23 has legacy `Token` auth off, and the UI is the only place that issues one.
token() {
  [ -s "$run/token" ] && return
  local jar=$run/cookies csrf
  rm -f "$jar"
  curl -fsS -c "$jar" -o /dev/null "$url/user/login/"
  csrf=$(awk '$6 == "csrftoken" {print $7}' "$jar")
  curl -fsS -b "$jar" -c "$jar" -o /dev/null -H "Referer: $url/user/login/" \
    --data-urlencode "csrfmiddlewaretoken=$csrf" --data-urlencode "email=$admin" --data-urlencode "password=$(cat "$run/password")" \
    "$url/user/login/"
  csrf=$(awk '$6 == "csrftoken" {print $7}' "$jar")
  local body
  body=$(curl -fsS -b "$jar" -H "X-CSRFToken: $csrf" -H "Referer: $url/" -X POST "$url/api/token/") || {
    echo "label-studio.sh: cannot create the admin's access token (login failed?)" >&2; exit 1; }
  (umask 077; printf '%s' "$body" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"], end="")' >"$run/token")
  rm -f "$jar"
}

start() {
  command -v curl >/dev/null || { echo "label-studio.sh: curl is needed" >&2; exit 1; }
  install
  if [ -f "$run/pid" ] && kill -0 "$(cat "$run/pid")" 2>/dev/null; then
    echo "label-studio.sh: already running on $url" >&2
  else
    mkdir -p "$run"; chmod 700 "$run"
    [ -s "$run/password" ] || (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$run/password")
    # Django's key, which also signs the access tokens, set here: left to Label Studio, each of
    # its starting processes may generate and append its own to data/.env (a race seen on loaded
    # machines), and a token one signed is then "invalid" to another.
    [ -s "$run/secret_key" ] || (umask 077; head -c 48 /dev/urandom | base64 | tr -d '/+=\n' >"$run/secret_key")
    server
  fi
  token
  echo "label-studio.sh: label-studio up on $url (admin $admin, password in $run/password; logs in $run)" >&2
  echo "$run/token"
}

# Only the server: the data dir, password and token stay.
stop_server() {
  if [ -f "$run/pid" ]; then
    local pid; pid=$(cat "$run/pid")
    # setsid made it a process group leader: TERM the group (the server and its workers).
    kill -- -"$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 -- -"$pid" 2>/dev/null || true
    rm -f "$run/pid"
  fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  restart) stop_server; server; echo "label-studio.sh: restarted on $url" >&2 ;;
  stop) stop_server; rm -rf "$run" ;;
  status) if curl -fsS -o /dev/null "$url/health" 2>/dev/null; then echo "up on $url"; else echo "down"; exit 1; fi ;;
  *) echo "usage: scripts/label-studio.sh install|start|restart|stop|status" >&2; exit 2 ;;
esac
