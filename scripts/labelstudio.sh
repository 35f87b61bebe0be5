#!/usr/bin/env bash
# A local Label Studio for nerloop's tests and demo: headless, on loopback, with a fixed user and a
# fixed legacy API token. Its database is SQLite, or PostgreSQL as deployed (docker-compose.yml) when
# the caller sets POSTGRE_NAME (and, if not the defaults below, POSTGRE_HOST/PORT/USER/PASSWORD): the
# database must exist.
#
#   scripts/labelstudio.sh install        install label-studio into .venv-ls (idempotent)
#   scripts/labelstudio.sh start [PORT]   start it in the background (default port 8089) and print
#                                         LABEL_STUDIO_URL=... and LABEL_STUDIO_API_KEY=... (idempotent)
#   scripts/labelstudio.sh pat [PORT]     print LABEL_STUDIO_PAT=<personal access token> for the same user
#   scripts/labelstudio.sh stop           stop it
#
# Data (SQLite database if used, media, log, pid file) lives in $LS_DATA_DIR, default .nerloop/label-studio.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LS_VERSION=1.23.2
# Its own virtualenv: label-studio pins versions that clash with ours (redis<5.3 where we run
# redis 8, an exact label-studio-sdk, pytz<2023, Django 5.2, dozens of ==).
LS_VENV="$REPO/.venv-ls"
LS_MARKER="$LS_VENV/.nerloop-installed"
LS_DATA_DIR="${LS_DATA_DIR:-$REPO/.nerloop/label-studio}"
LS_LOG="$LS_DATA_DIR/label-studio.log"
LS_PID_FILE="$LS_DATA_DIR/label-studio.pid"
LS_PORT_FILE="$LS_DATA_DIR/label-studio.port"
LS_PAT_FILE="$LS_DATA_DIR/personal-access-token"
DEFAULT_PORT=8089
START_TIMEOUT_S=180

# Fixed credentials, so that tests can rely on them. Loopback only, never for a real deployment.
LS_USERNAME=admin@nerloop.local
LS_PASSWORD=nerloop-admin
LS_TOKEN=nerloop-legacy-api-token-for-tests-only # DRF's token column holds at most 40 characters

die() {
    echo "labelstudio.sh: $*" >&2
    exit 1
}

install_ls() {
    if [[ -x "$LS_VENV/bin/label-studio" && "$(cat "$LS_MARKER" 2>/dev/null)" == "$LS_VERSION" ]]; then
        return 0
    fi
    echo "labelstudio.sh: installing label-studio==$LS_VERSION into $LS_VENV" >&2
    [[ -x "$LS_VENV/bin/python" ]] || python3 -m venv "$LS_VENV"
    # stdout to stderr: `start` installs on demand and must print only its env lines.
    "$LS_VENV/bin/python" -m pip install --quiet "label-studio==$LS_VERSION" >&2
    echo "$LS_VERSION" >"$LS_MARKER"
}

running_pid() {
    local pid
    pid="$(cat "$LS_PID_FILE" 2>/dev/null)" || return 1
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

answers() {
    curl -fsS --max-time 5 -o /dev/null "http://127.0.0.1:$1/health" 2>/dev/null
}

token_accepted() {
    curl -fsS --max-time 10 -o /dev/null -H "Authorization: Token $LS_TOKEN" \
        "http://127.0.0.1:$1/api/current-user/whoami" 2>/dev/null
}

port_in_use() {
    (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

print_env() {
    echo "LABEL_STUDIO_URL=http://127.0.0.1:$1"
    echo "LABEL_STUDIO_API_KEY=$LS_TOKEN"
}

report_failure() {
    echo "labelstudio.sh: $1; last lines of $LS_LOG:" >&2
    tail -n 40 "$LS_LOG" >&2 || true
    return 1
}

wait_healthy() {
    local port="$1" pid="$2" deadline=$((SECONDS + START_TIMEOUT_S))
    until answers "$port"; do
        kill -0 "$pid" 2>/dev/null || report_failure "Label Studio (pid $pid) exited during start" || return 1
        ((SECONDS < deadline)) ||
            report_failure "Label Studio did not answer on port $port within ${START_TIMEOUT_S}s" || return 1
        sleep 1
    done
    # Legacy tokens count only if enabled when the organisation was created, i.e. at the first start
    # on this data dir.
    token_accepted "$port" ||
        report_failure "Label Studio on port $port rejects the legacy token (data dir made without it? remove $LS_DATA_DIR)"
}

kill_server() {
    local pid="$1"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    rm -f "$LS_PID_FILE" "$LS_PORT_FILE"
}

start_ls() {
    local port="${1:-$DEFAULT_PORT}" pid
    [[ "$port" =~ ^[0-9]+$ ]] || die "port must be a number, got '$port'"
    install_ls
    mkdir -p "$LS_DATA_DIR"
    # Serialise concurrent starts (e.g. parallel test sessions); released when this script exits.
    exec 9>"$LS_DATA_DIR/.lock"
    flock 9

    if pid="$(running_pid)"; then
        # One server per data dir: two on the same SQLite database would step on each other.
        [[ "$(cat "$LS_PORT_FILE" 2>/dev/null)" == "$port" ]] ||
            die "already running (pid $pid) on port $(cat "$LS_PORT_FILE" 2>/dev/null); run 'stop' first"
        wait_healthy "$port" "$pid" || exit 1 # it may still be starting from an earlier call
        print_env "$port"
        return 0
    fi
    # label-studio silently moves to the next free port when its port is taken; refuse instead.
    port_in_use "$port" && die "port $port is in use by another process"
    local database=(DJANGO_DB=sqlite)
    if [[ -n "${POSTGRE_NAME:-}" ]]; then
        database=(DJANGO_DB=default POSTGRE_NAME="$POSTGRE_NAME" POSTGRE_HOST="${POSTGRE_HOST:-127.0.0.1}"
            POSTGRE_PORT="${POSTGRE_PORT:-5432}" POSTGRE_USER="${POSTGRE_USER:-postgres}"
            POSTGRE_PASSWORD="${POSTGRE_PASSWORD:-}")
    fi

    # A clean environment: its settings also read bare names (HOST, PORT, USERNAME, CI, DEBUG,
    # DATABASE_NAME, ...), which a caller's environment must not leak into.
    env -i \
        PATH="$LS_VENV/bin:/usr/local/bin:/usr/bin:/bin" \
        HOME="${HOME:-/tmp}" \
        LANG=C.UTF-8 \
        LABEL_STUDIO_BASE_DATA_DIR="$LS_DATA_DIR" \
        "${database[@]}" \
        LABEL_STUDIO_USERNAME="$LS_USERNAME" \
        LABEL_STUDIO_PASSWORD="$LS_PASSWORD" \
        LABEL_STUDIO_USER_TOKEN="$LS_TOKEN" \
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true \
        LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK=true \
        SSRF_PROTECTION_ENABLED=false \
        ML_BLOCK_LOCAL_IP=false \
        SENTRY_DSN= \
        FRONTEND_SENTRY_DSN= \
        LATEST_VERSION_CHECK=false \
        COLLECT_ANALYTICS=false \
        setsid "$LS_VENV/bin/label-studio" start --no-browser --internal-host 127.0.0.1 --port "$port" \
        </dev/null >"$LS_LOG" 2>&1 9>&- & # 9>&-: the server must not inherit (and hold) the lock
    pid=$!
    echo "$pid" >"$LS_PID_FILE"
    echo "$port" >"$LS_PORT_FILE"
    wait_healthy "$port" "$pid" || {
        kill_server "$pid"
        exit 1
    }
    print_env "$port"
}

stop_ls() {
    local pid
    [[ -d "$LS_DATA_DIR" ]] || return 0
    exec 9>"$LS_DATA_DIR/.lock"
    flock 9
    if pid="$(running_pid)"; then
        kill_server "$pid"
    else
        rm -f "$LS_PID_FILE" "$LS_PORT_FILE"
    fi
}

# A personal access token (a JWT refresh token, what the SDK calls api_key in 2.x) for the same user.
# Label Studio allows one live PAT per user (409 on a second), so the one created here is kept in the
# data dir and printed again while the server still accepts it.
print_pat() {
    local port="${1:-$(cat "$LS_PORT_FILE" 2>/dev/null || echo "$DEFAULT_PORT")}" url pat response
    url="http://127.0.0.1:$port"
    answers "$port" || die "Label Studio is not running on port $port; run 'start' first"
    if [[ -s "$LS_PAT_FILE" ]]; then
        pat="$(cat "$LS_PAT_FILE")"
        if curl -fsS --max-time 10 -o /dev/null -H 'Content-Type: application/json' \
            -d "{\"refresh\": \"$pat\"}" "$url/api/token/refresh/" 2>/dev/null; then
            echo "LABEL_STUDIO_PAT=$pat"
            return 0
        fi
    fi
    response="$(curl -sS --max-time 10 -w '\n%{http_code}' -X POST -H "Authorization: Token $LS_TOKEN" \
        "$url/api/token/")"
    [[ "${response##*$'\n'}" == 201 ]] ||
        die "POST /api/token/ failed (${response##*$'\n'}): ${response%$'\n'*}" \
            "(409: a PAT made elsewhere exists; revoke it in the UI or remove $LS_DATA_DIR)"
    pat="$(sed -n 's/.*"token" *: *"\([^"]*\)".*/\1/p' <<<"${response%$'\n'*}")"
    [[ -n "$pat" ]] || die "no token in the answer of POST /api/token/: ${response%$'\n'*}"
    (umask 077 && echo "$pat" >"$LS_PAT_FILE")
    echo "LABEL_STUDIO_PAT=$pat"
}

case "${1:-}" in
install) install_ls ;;
start) start_ls "${2:-}" ;;
stop) stop_ls ;;
pat) print_pat "${2:-}" ;;
*) die "usage: $0 install | start [PORT] | pat [PORT] | stop" ;;
esac
