#!/usr/bin/env bash
# A real multi-node Ray cluster on this one machine, for rehearsing cluster runs:
# a head node, N worker nodes (each its own raylet, object store and agents),
# token authentication on, the dashboard and Ray Jobs API on 127.0.0.1, and an
# MLflow tracking server (SQLite backend) on 127.0.0.1.
#
#   cluster/local.sh up N     start head + N workers + MLflow, write the env file
#   cluster/local.sh status   show what is running
#   cluster/local.sh down     stop exactly the processes `up` started
#   source "$RESSTUDY_LOCAL_CLUSTER/cluster.env"   # then: resstudy submit SPEC
#
# Settings (environment):
#   RESSTUDY_LOCAL_CLUSTER   state dir (default /tmp/resstudy-local-cluster): pids,
#                            token, logs, Ray temp dir, MLflow db, shared storage
#   RESSTUDY_GCS_PORT=6390  RESSTUDY_DASHBOARD_PORT=8265  RESSTUDY_CLIENT_PORT=10091
#   RESSTUDY_AGENT_PORT=52400 (head's dashboard agent; worker i uses +i)
#   RESSTUDY_MLFLOW_PORT=5050  RESSTUDY_MLFLOW=1 (0: no MLflow server)
#   RESSTUDY_HEAD_CPUS=0 (like a cloud head, trials run on workers)
#   RESSTUDY_WORKER_CPUS=1  RESSTUDY_OBJECT_STORE_BYTES=200000000
#   RESSTUDY_UP_TIMEOUT=240 (seconds per component)  RESSTUDY_VENV (default <repo>/.venv)
#
# Notes on Ray 2.60 that shape this script:
# - Token auth: `ray start` turns it on when RAY_AUTH_MODE=token; every Ray process
#   then reads the token from RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH,
#   else ~/.ray/auth_token. We keep a fresh token in the state dir and point
#   RAY_AUTH_TOKEN_PATH at it, so ~/.ray is never touched. HTTP clients (Jobs API,
#   dashboard) send it as `Authorization: Bearer <token>`.
# - Ray rewrites a loopback --node-ip-address to the machine's routable IP and its
#   gRPC servers (GCS, raylets) bind all interfaces; the token guards them. The
#   dashboard/Jobs API and MLflow bind 127.0.0.1 only.
# - Several nodes on one host need distinct dashboard-agent ports, random worker
#   ports, must start one after another (concurrent starts race on ports), and
#   need their own temp dirs (n0 = head, n1.. = workers): in a shared session dir
#   one node's runtime-env agent deletes a job's unpacked working_dir that
#   another node's job driver is still running in.
# - `ray stop` would kill every Ray on the machine, so each node runs as
#   `ray start --block` in its own session; `down` signals those and their
#   recorded descendants only (pid + start time guard against pid reuse).
set -euo pipefail

STATE=${RESSTUDY_LOCAL_CLUSTER:-/tmp/resstudy-local-cluster}
GCS_PORT=${RESSTUDY_GCS_PORT:-6390}
DASHBOARD_PORT=${RESSTUDY_DASHBOARD_PORT:-8265}
CLIENT_PORT=${RESSTUDY_CLIENT_PORT:-10091}
AGENT_PORT=${RESSTUDY_AGENT_PORT:-52400}
MLFLOW_PORT=${RESSTUDY_MLFLOW_PORT:-5050}
WITH_MLFLOW=${RESSTUDY_MLFLOW:-1}
HEAD_CPUS=${RESSTUDY_HEAD_CPUS:-0}
WORKER_CPUS=${RESSTUDY_WORKER_CPUS:-1}
OBJECT_STORE=${RESSTUDY_OBJECT_STORE_BYTES:-200000000}
UP_TIMEOUT=${RESSTUDY_UP_TIMEOUT:-240}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${RESSTUDY_VENV:-$REPO/.venv}
[[ -x $VENV/bin/ray ]] && export PATH="$VENV/bin:$PATH"
PROCS=$STATE/procs          # lines: role pid starttime
DASH_URL=http://127.0.0.1:$DASHBOARD_PORT
MLFLOW_URL=http://127.0.0.1:$MLFLOW_PORT

die() { echo "local.sh: error: $*" >&2; exit 1; }

# ------------------------------------------------------------ process helpers

# Start time (clock ticks since boot) of a pid; with the pid it names a process
# uniquely, so a recycled pid is never mistaken for ours.
start_time() {
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    s=${s##*) }
    # shellcheck disable=SC2086
    set -- $s
    echo "${20}"
}

alive() {  # alive PID STARTTIME
    local now
    now=$(start_time "$1") || return 1
    [[ $now == "$2" ]]
}

descendants() {  # all descendants of the given pids, one per line
    ps -eo pid=,ppid= | awk -v roots="$*" '
        { kids[$2] = kids[$2] " " $1 }
        END {
            n = split(roots, queue, " ")
            for (i = 1; i <= n; i++) {
                m = split(kids[queue[i]], k, " ")
                for (j = 1; j <= m; j++) { print k[j]; queue[++n] = k[j] }
            }
        }'
}

group_members() { pgrep -g "$1" 2>/dev/null || true; }

# Processes of our own Ray sessions (their command lines name our temp dirs).
session_members() { pgrep -f -- "$(printf '%s' "$STATE" | sed 's/[][\\.*^$+?(){}|]/\\&/g')/n[0-9]+/session_" 2>/dev/null || true; }

record() {  # record ROLE PID
    local st
    st=$(start_time "$2") || die "$1 (pid $2) exited right after it was started; see $STATE/logs/$1.log"
    echo "$1 $2 $st" >>"$PROCS"
}

spawn() {  # spawn ROLE CMD...: run in its own session, log to logs/ROLE.log, record it
    local role=$1; shift
    setsid "$@" </dev/null >"$STATE/logs/$role.log" 2>&1 &
    local pid=$!
    record "$role" "$pid"
    # setsid only forks when the caller leads a process group; then $! would be
    # the short-lived parent and we could not stop the node by its group.
    [[ $(ps -o pgid= -p "$pid" | tr -d ' ') == "$pid" ]] || die "$role (pid $pid) did not get its own process group"
}

port_free() {  # port_free HOST PORT
    python - "$1" "$2" <<'EOF'
import socket, sys
s = socket.socket()
# A port in TIME_WAIT is reusable; one with a listener still is not.
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind((sys.argv[1], int(sys.argv[2])))
except OSError:
    sys.exit(1)
EOF
}

# ------------------------------------------------------------ down

stop_all() {
    [[ -f $PROCS ]] || { echo "local.sh: nothing recorded in $STATE (already down)"; return 0; }
    local -A track=()   # pid -> start time
    local leaders=() role pid st p
    # Workers first, then the head, then MLflow: a head that goes first makes the
    # workers' raylets log spurious GCS-lost errors.
    while read -r role pid st; do
        alive "$pid" "$st" || continue
        leaders+=("$pid")
        track[$pid]=$st
    done < <(grep -v '^head ' "$PROCS" || true; grep '^head ' "$PROCS" || true)

    snapshot() {
        local roots=() q s
        for q in "${!track[@]}"; do roots+=("$q"); done
        ((${#roots[@]})) || return 0
        for q in $(descendants "${roots[@]}") $(for l in "${leaders[@]}"; do group_members "$l"; done) $(session_members); do
            [[ -n ${track[$q]:-} ]] && continue
            s=$(start_time "$q") && track[$q]=$s
        done
    }
    snapshot
    for p in "${leaders[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    local deadline=$((SECONDS + 30)) left
    while ((SECONDS < deadline)); do
        snapshot
        left=0
        for p in "${!track[@]}"; do
            if alive "$p" "${track[$p]}"; then left=$((left + 1)); fi
        done
        if ((left == 0)); then break; fi
        sleep 1
    done
    for p in "${!track[@]}"; do
        if alive "$p" "${track[$p]}"; then kill -KILL "$p" 2>/dev/null || true; fi
    done
    sleep 1
    left=0
    for p in "${!track[@]}"; do
        if alive "$p" "${track[$p]}"; then echo "local.sh: pid $p still running" >&2; left=1; fi
    done
    mv -f "$PROCS" "$STATE/procs.down"
    if ((left)); then die "some processes did not stop"; fi
    echo "local.sh: stopped ${#track[@]} processes (state kept in $STATE)"
}

# ------------------------------------------------------------ up

wait_for() {  # wait_for WHAT ROLE CHECK-CMD...: poll until CHECK succeeds or ROLE dies
    local what=$1 role=$2 pid st; shift 2
    read -r _ pid st < <(grep "^$role " "$PROCS")
    local deadline=$((SECONDS + UP_TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        if ! alive "$pid" "$st"; then
            tail -n 30 "$STATE/logs/$role.log" >&2 || true
            die "$what exited during startup; log: $STATE/logs/$role.log"
        fi
        ((SECONDS < deadline)) || { tail -n 30 "$STATE/logs/$role.log" >&2 || true; die "$what not up after ${UP_TIMEOUT}s; log: $STATE/logs/$role.log"; }
        sleep 1
    done
}

alive_nodes() {
    curl -sf -H "Authorization: Bearer $(cat "$STATE/auth_token")" "$DASH_URL/api/v0/nodes?limit=1000" |
        python -c 'import json,sys; print(sum(n["state"] == "ALIVE" for n in json.load(sys.stdin)["data"]["result"]["result"]))'
}

nodes_at_least() { [[ $(alive_nodes) -ge $1 ]]; }

start_all() {
    local n=$1 i
    [[ $n =~ ^[0-9]+$ ]] || die "up N: N (number of worker nodes) must be a whole number >= 0, got '$n'"
    command -v ray >/dev/null || die "ray not found (looked in $VENV/bin and PATH); set RESSTUDY_VENV"
    if [[ -f $PROCS ]]; then
        local role pid st running=0
        while read -r role pid st; do alive "$pid" "$st" && running=1; done <"$PROCS"
        ((running)) && die "a cluster recorded in $STATE is running; run '$0 down' first"
        rm -f "$PROCS"
    fi
    # Ray's Unix sockets live at <temp dir>/session_<date>_<pid>/sockets/plasma_store,
    # which must stay under 108 bytes.
    ((${#STATE} <= 36)) || die "RESSTUDY_LOCAL_CLUSTER='$STATE' is too long (${#STATE} chars); Ray's socket paths need it <= 36"
    port_free 0.0.0.0 "$GCS_PORT" || die "RESSTUDY_GCS_PORT=$GCS_PORT is in use; choose a free port"
    port_free 127.0.0.1 "$DASHBOARD_PORT" || die "RESSTUDY_DASHBOARD_PORT=$DASHBOARD_PORT is in use; choose a free port"
    port_free 0.0.0.0 "$CLIENT_PORT" || die "RESSTUDY_CLIENT_PORT=$CLIENT_PORT is in use; choose a free port"
    for ((i = 0; i <= n; i++)); do
        port_free 0.0.0.0 $((AGENT_PORT + i)) || die "port $((AGENT_PORT + i)) (RESSTUDY_AGENT_PORT=$AGENT_PORT + node $i) is in use; choose another RESSTUDY_AGENT_PORT"
    done
    if [[ $WITH_MLFLOW == 1 ]]; then
        port_free 127.0.0.1 "$MLFLOW_PORT" || die "RESSTUDY_MLFLOW_PORT=$MLFLOW_PORT is in use; choose a free port"
    fi

    mkdir -p "$STATE/logs" "$STATE/mlflow/artifacts" "$STATE/storage"
    (umask 077 && python -c 'import secrets; print(secrets.token_hex(32), end="")' >"$STATE/auth_token")
    : >"$PROCS"
    UP_OK=0
    # Any failure from here on (die, set -e) stops whatever was already started.
    trap 'if [[ $UP_OK != 1 ]]; then echo "local.sh: up failed, stopping what was started" >&2; stop_all >&2 || true; fi' EXIT

    # Environment every Ray process (and so every job driver and trial) inherits.
    unset RAY_ADDRESS RAY_API_SERVER_ADDRESS RAY_AUTH_TOKEN
    export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$STATE/auth_token
    export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0 RAY_USAGE_STATS_ENABLED=0
    if [[ $WITH_MLFLOW == 1 ]]; then
        export MLFLOW_TRACKING_URI=$MLFLOW_URL
        # MLflow boots slowly: start it first so it comes up while Ray does.
        # Its background job runner is not needed for tracking.
        spawn mlflow env MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow server \
            --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
            --backend-store-uri "sqlite:///$STATE/mlflow/mlflow.db" \
            --artifacts-destination "$STATE/mlflow/artifacts" \
            --allowed-hosts "127.0.0.1:$MLFLOW_PORT,localhost:$MLFLOW_PORT"
    fi

    local common=(--block --min-worker-port=0 --max-worker-port=0
        --object-store-memory="$OBJECT_STORE" --disable-usage-stats)
    spawn head ray start --head "${common[@]}" --port="$GCS_PORT" --num-cpus="$HEAD_CPUS" \
        --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" \
        --ray-client-server-port="$CLIENT_PORT" --dashboard-agent-listen-port="$AGENT_PORT" \
        --temp-dir="$STATE/n0"
    wait_for "Ray head" head nodes_at_least 1
    for ((i = 1; i <= n; i++)); do
        spawn "worker$i" ray start --address="127.0.0.1:$GCS_PORT" "${common[@]}" \
            --num-cpus="$WORKER_CPUS" --resources="{\"local_worker_$i\": 1}" \
            --dashboard-agent-listen-port=$((AGENT_PORT + i)) --temp-dir="$STATE/n$i"
        wait_for "Ray worker $i" "worker$i" nodes_at_least $((i + 1))
    done
    if [[ $WITH_MLFLOW == 1 ]]; then wait_for "MLflow server" mlflow curl -sf "$MLFLOW_URL/health"; fi

    {
        echo "# source me: the local resstudy cluster in $STATE"
        # RAY_API_SERVER_ADDRESS (not RAY_ADDRESS): Ray 2.60's job CLI and SDK read it
        # first, while an http:// RAY_ADDRESS breaks ray.init(address="auto").
        echo "export RAY_API_SERVER_ADDRESS=$DASH_URL"
        echo "export RAY_AUTH_MODE=token"
        echo "export RAY_AUTH_TOKEN_PATH=$STATE/auth_token"
        if [[ $WITH_MLFLOW == 1 ]]; then echo "export MLFLOW_TRACKING_URI=$MLFLOW_URL"; fi
        echo "export RESSTUDY_SHARED_STORAGE=$STATE/storage"
        echo "export RESSTUDY_GCS_ADDRESS=127.0.0.1:$GCS_PORT"
    } >"$STATE/cluster.env"
    UP_OK=1
    echo "local.sh: Ray up with $((n + 1)) nodes (head + $n workers), dashboard $DASH_URL"
    if [[ $WITH_MLFLOW == 1 ]]; then echo "local.sh: MLflow at $MLFLOW_URL"; fi
    echo "local.sh: source $STATE/cluster.env"
}

# ------------------------------------------------------------ status

show_status() {
    [[ -f $PROCS ]] || { echo "local.sh: down (nothing recorded in $STATE)"; return 3; }
    local role pid st bad=0
    while read -r role pid st; do
        if alive "$pid" "$st"; then echo "$role: running (pid $pid)"; else echo "$role: NOT running (pid $pid)"; bad=1; fi
    done <"$PROCS"
    echo "ray nodes alive: $(alive_nodes 2>/dev/null || echo '? (dashboard not answering)')"
    if grep -q '^mlflow ' "$PROCS"; then
        if curl -sf "$MLFLOW_URL/health" >/dev/null 2>&1; then echo "mlflow: healthy at $MLFLOW_URL"; else echo "mlflow: not answering at $MLFLOW_URL"; bad=1; fi
    fi
    echo "env file: $STATE/cluster.env"
    return $bad
}

case ${1:-} in
    up) start_all "${2:-1}" ;;
    down) stop_all ;;
    status) show_status ;;
    *) echo "usage: $0 up N | down | status" >&2; exit 2 ;;
esac
