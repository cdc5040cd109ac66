#!/usr/bin/env bash
# Side by side, in one run: gaidaros `-S thread -N 2` with one SO_REUSEPORT
# listening socket per loop (A: reuseport=true) against one shared socket
# (B: reuseport=false), with tokio-echo (2 workers) for context, alternating
# A B T A B T ... so drift on the machine hits every server alike. Then the
# generator check: one loadgen with C connections against two loadgens with
# C/2 each, alternating, against gaidaros A.
#
# Every run starts a fresh server on port 0, reads its port from its log,
# runs loadgen --json against it, and reads the server's CPU time from
# /proc/PID/stat before and after; `server_cpu_us_per_req` is that CPU time
# over every request echoed (warm-up included). With perf, it also counts
# the server's syscalls and context switches (and instructions, where the
# CPU exposes counters) per request. One JSON line per run goes to $OUT
# (and stderr); tables of medians and ratios go to stdout.
#
#   cargo build --release -p gaidaros-bin -p gaidaros-benches
#   benches/scripts/listener-ab.sh            # defaults below
#   PAIRS=5 CONNS="64" SERVERS="A B G1 T T1" GEN_ARGS="--threads 2" \
#       benches/scripts/listener-ab.sh
#
# Needs: bash, jq, ss (iproute2), getconf; perf is optional.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BIN:-$ROOT/target/release}
PAIRS=${PAIRS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
SIZE=${SIZE:-64}
DEPTH=${DEPTH:-1}
CONNS=${CONNS:-"64 1000"}
LOOPS=${LOOPS:-2}
# Alternated in this order each round: A = gaidaros reuseport=true,
# B = reuseport=false, T = tokio-echo with LOOPS workers; also G1 =
# gaidaros -S blocking, T1 = tokio-echo with 1 worker.
SERVERS=${SERVERS:-"A B T"}
LOADGEN_CHECK=${LOADGEN_CHECK:-1}
# More loadgen flags for every run, e.g. GEN_ARGS="--threads 2" or "-d 4".
GEN_ARGS=${GEN_ARGS:-}
# Before each run, wait this many seconds at most for the machine to be
# under 10% busy (other builds and tests); 0 = do not wait.
QUIET_WAIT=${QUIET_WAIT:-120}
# A run during which other processes used more than this % of one core is
# run again, RETRIES times at most.
NOISE_LIMIT=${NOISE_LIMIT:-15}
RETRIES=${RETRIES:-3}
# perf stat on the server during the load: syscalls and context switches
# per request, and instructions per request where the CPU exposes its
# counters (virtual machines often do not). auto = when perf works.
PERF=${PERF:-auto}
OUT=${OUT:-${TMPDIR:-/tmp}/listener-ab-$(date +%Y%m%d-%H%M%S).jsonl}

mkdir -p "$(dirname "$OUT")"
: >"$OUT"
TICK=$(getconf CLK_TCK)
WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
    if [[ -n $SERVER_PID ]]; then kill "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# user + system ticks of a process: fields 14 and 15 of /proc/PID/stat,
# counted after the parenthesized command name.
cpu_ticks() {
    local rest
    rest=$(<"/proc/$1/stat")
    rest=${rest##*) }
    read -r -a f <<<"$rest"
    echo $((f[11] + f[12]))
}

# Busy ticks of the whole machine (steal included): the first line of
# /proc/stat is user nice system idle iowait irq softirq steal ...
machine_ticks() {
    local _cpu user nice system idle iowait irq softirq steal
    read -r _cpu user nice system idle iowait irq softirq steal _ </proc/stat
    echo $((user + nice + system + irq + softirq + steal))
}

PERF_EVENTS=
if [[ $PERF != 0 ]] && command -v perf >/dev/null &&
    perf stat -e syscalls:sys_enter_sendto true >/dev/null 2>&1; then
    PERF_EVENTS=context-switches,cpu-migrations
    for sc in read recvfrom readv write sendto writev epoll_wait epoll_pwait; do
        PERF_EVENTS+=,syscalls:sys_enter_$sc
    done
    if ! perf stat -x, -e instructions true 2>&1 | grep -q 'not supported'; then
        PERF_EVENTS+=,instructions
    fi
fi
echo "perf events: ${PERF_EVENTS:-none}" >&2

# perf's CSV (count,unit,event,...) as a JSON object {event: count}.
perf_json() {
    grep -v '^#' "$1" | awk -F, 'NF > 2 && $1 ~ /^[0-9.]+$/ { print $3, $1 }' |
        jq -R -s -c 'split("\n") | map(select(length > 0) | split(" "))
                     | map({(.[0] | sub("^syscalls:sys_enter_"; "")): (.[1] | tonumber)})
                     | add // {}'
}

# Per-thread CPU seconds of a process, as a JSON array of [name, seconds].
thread_cpu_json() {
    local t rest comm out=()
    for t in /proc/"$1"/task/*; do
        comm=$(<"$t/comm")
        rest=$(<"$t/stat")
        rest=${rest##*) }
        read -r -a f <<<"$rest"
        out+=("[\"$comm\",$(((f[11] + f[12]) * 1000 / TICK))]")
    done
    local IFS=,
    echo "[${out[*]}]" | jq -c 'map([.[0], .[1] / 1000])'
}

# Before each run, wait (QUIET_WAIT seconds at most) until the machine is
# under 10% busy over one second: other builds and tests skew everything.
# Runs that get disturbed anyway are caught by NOISE_LIMIT.
wait_quiet() {
    local waited=0 a b
    while ((waited < QUIET_WAIT)); do
        a=$(machine_ticks)
        sleep 1
        b=$(machine_ticks)
        # Ticks per second over all cores: TICK * cores.
        (((b - a) * 100 < TICK * $(nproc) * 10)) && return 0
        waited=$((waited + 1))
    done
}

# start_server NAME CMD... : sets SERVER_PID and PORT
start_server() {
    local log=$WORK/server.log
    shift
    "$@" >/dev/null 2>"$log" &
    SERVER_PID=$!
    PORT=
    for _ in $(seq 100); do
        PORT=$(grep -m1 -o 'listening.*addr=[^ ]*' "$log" | sed 's/.*addr=.*://' || true)
        [[ -n $PORT ]] && return 0
        sleep 0.1
    done
    echo "server did not start: $*" >&2
    cat "$log" >&2
    exit 1
}

stop_server() {
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}

server_cmd() {
    case $1 in
    A) echo "env GAIDAROS_SERVER__REUSEPORT=true $BIN/gaidaros --port 0 -S thread -N $LOOPS" ;;
    B) echo "env GAIDAROS_SERVER__REUSEPORT=false $BIN/gaidaros --port 0 -S thread -N $LOOPS" ;;
    G1) echo "$BIN/gaidaros --port 0 -S blocking" ;;
    T) echo "$BIN/tokio-echo --port 0 --workers $LOOPS" ;;
    T1) echo "$BIN/tokio-echo --port 0 --workers 1" ;;
    *)
        echo "unknown server key $1" >&2
        exit 2
        ;;
    esac
}

server_name() {
    case $1 in
    A) echo "gaidaros thread -N $LOOPS reuseport=true" ;;
    B) echo "gaidaros thread -N $LOOPS reuseport=false" ;;
    G1) echo "gaidaros blocking (1 loop)" ;;
    T) echo "tokio-echo $LOOPS workers" ;;
    T1) echo "tokio-echo 1 worker" ;;
    esac
}

# measure PHASE KEY CONNS GENERATORS ROUND: one run, repeated (RETRIES
# times at most) while other processes took more than NOISE_LIMIT % of a
# core during it; the noisy runs stay in $OUT marked "discarded".
measure() {
    local attempt record noisy
    for ((attempt = 0; ; attempt++)); do
        wait_quiet
        record=$(measure_once "$@")
        noisy=$(jq -r --argjson limit "$NOISE_LIMIT" \
            '.others_cpu_s / .wall_s * 100 > $limit' <<<"$record")
        if [[ $noisy == true ]] && ((attempt < RETRIES)); then
            jq -c '. + {discarded: true}' <<<"$record" | tee -a "$OUT" >&2
            continue
        fi
        jq -c --argjson noisy "$noisy" '. + {discarded: false, noisy: $noisy}' <<<"$record" |
            tee -a "$OUT" >&2
        return 0
    done
}

# measure_once PHASE KEY CONNS GENERATORS ROUND: prints one JSON record.
measure_once() {
    local phase=$1 key=$2 conns=$3 gens=$4 round=$5
    # shellcheck disable=SC2046
    start_server "$key" $(server_cmd "$key")
    local sockets
    sockets=$(ss -Hltn "sport = :$PORT" | wc -l)
    local perf_pid=
    if [[ -n $PERF_EVENTS ]]; then
        perf stat -x, -e "$PERF_EVENTS" -p "$SERVER_PID" -o "$WORK/perf.csv" 2>/dev/null &
        perf_pid=$!
        # Let perf attach before the load starts.
        sleep 0.3
    fi
    local before after t0 t1 m0 m1
    before=$(cpu_ticks "$SERVER_PID")
    m0=$(machine_ticks)
    t0=$(date +%s%N)
    local per=$((conns / gens)) i gen_pids=()
    for ((i = 0; i < gens; i++)); do
        # Exit status 1 means a run with errors: the report says so.
        # shellcheck disable=SC2086 # GEN_ARGS is a list of flags
        "$BIN/loadgen" --addr "127.0.0.1:$PORT" -c "$per" -m "$SIZE" -d "$DEPTH" \
            --duration "$DURATION" --warmup "$WARMUP" $GEN_ARGS --json >"$WORK/gen$i.json" &
        gen_pids+=($!)
    done
    for i in "${gen_pids[@]}"; do wait "$i" || true; done
    local perf='{}'
    if [[ -n $perf_pid ]]; then
        kill -INT "$perf_pid"
        wait "$perf_pid" || true
        perf=$(perf_json "$WORK/perf.csv")
    fi
    after=$(cpu_ticks "$SERVER_PID")
    m1=$(machine_ticks)
    t1=$(date +%s%N)
    local threads
    threads=$(thread_cpu_json "$SERVER_PID")
    stop_server
    jq -s -c \
        --arg server "$(server_name "$key")" --arg key "$key" --arg phase "$phase" \
        --argjson wall "$(((t1 - t0) / 1000))" \
        --argjson round "$round" --argjson gens "$gens" --argjson sockets "$sockets" \
        --argjson cpu "$(((after - before) * 1000000 / TICK))" \
        --argjson machine "$(((m1 - m0) * 1000000 / TICK))" \
        --argjson threads "$threads" --argjson perf "$perf" \
        'map(.echoed) as $e | {phase: $phase, server: $server, key: $key, round: $round, generators: $gens,
          listen_sockets: $sockets,
          connections: (map(.connections) | add),
          established: (map(.established) | add),
          requests_per_s: (map(.requests_per_s) | add),
          p50_us: (map(.p50_us) | max), p99_us: (map(.p99_us) | max),
          p999_us: (map(.p999_us) | max),
          errors: (map(.errors) | add), echoed: (map(.echoed) | add),
          loadgen_cpu_s: (map(.cpu_s) | add),
          wall_s: ($wall / 1e6), server_cpu_s: ($cpu / 1e6),
          server_cpu_us_per_req: ($cpu / (map(.echoed) | add)),
          server_threads_cpu_s: $threads,
          server_perf: $perf,
          server_syscalls_per_req: ([$perf | to_entries[]
                                     | select(.key | test("^(read|recvfrom|readv|write|sendto|writev|epoll_wait|epoll_pwait)$"))
                                     | .value] | add // null
                                    | if . == null then null else . / ($e | add) end),
          server_ctxsw_per_req: ($perf["context-switches"] // null
                                 | if . == null then null else . / ($e | add) end),
          server_instructions_per_req: ($perf.instructions // null
                                        | if . == null then null else . / ($e | add) end),
          others_cpu_s: ((($machine - $cpu) / 1e6 - (map(.cpu_s) | add)) * 100 | round / 100)}' \
        "$WORK"/gen*.json
    rm -f "$WORK"/gen*.json
}

for c in $CONNS; do
    for ((r = 1; r <= PAIRS; r++)); do
        for key in $SERVERS; do
            measure ab "$key" "$c" 1 "$r"
        done
    done
done
if ((LOADGEN_CHECK)); then
    c=${CONNS%% *}
    for ((r = 1; r <= PAIRS; r++)); do
        measure gencheck A "$c" 1 "$r"
        measure gencheck A "$c" 2 "$r"
    done
fi

echo "results: $OUT" >&2
# Medians per (phase, connections, generators, server); odd counts take the
# middle. CPU % is of one core over the wall time of the load (warm-up and
# connecting included). Discarded (noisy) runs are left out.
jq -s -r '
  def median: sort | .[(length - 1) / 2 | floor];
  map(select(.discarded | not))
  | group_by([.phase, .connections, .generators, .key])
  | map({phase: .[0].phase, server: .[0].server, c: .[0].connections,
         gens: .[0].generators, n: length,
         rps: (map(.requests_per_s) | median),
         p50: (map(.p50_us) | median), p99: (map(.p99_us) | median),
         p999: (map(.p999_us) | median),
         cpu: (map(.server_cpu_us_per_req) | median),
         scpu: (map(.server_cpu_s / .wall_s * 100) | median),
         lcpu: (map(.loadgen_cpu_s / .wall_s * 100) | median),
         ocpu: (map(.others_cpu_s / .wall_s * 100) | median),
         busiest: (map((.server_threads_cpu_s | map(.[1]) | max)
                       / ([.server_threads_cpu_s[][1]] | add | if . == 0 then 1 else . end) * 100)
                   | median),
         sys: (map(.server_syscalls_per_req) | if any(. == null) then null else median end),
         ctx: (map(.server_ctxsw_per_req) | if any(. == null) then null else median end),
         ins: (map(.server_instructions_per_req) | if any(. == null) then null else median end),
         errors: (map(.errors) | add), sockets: .[0].listen_sockets})
  | (["phase", "server", "conns", "loadgens", "runs", "req/s", "p50_us", "p99_us",
      "p99.9_us", "server_us/req", "server_cpu%", "loadgen_cpu%", "others_cpu%",
      "busiest_thread%", "syscalls/req", "ctxsw/req", "instr/req", "errors",
      "listen_sockets"] | @tsv),
    (.[] | [.phase, .server, .c, .gens, .n, (.rps | floor), .p50, .p99, .p999,
            (.cpu * 100 | round / 100), (.scpu | round), (.lcpu | round), (.ocpu | round), (.busiest | round),
            (.sys // "-" | if type == "number" then . * 100 | round / 100 else . end),
            (.ctx // "-" | if type == "number" then . * 1000 | round / 1000 else . end),
            (.ins // "-" | if type == "number" then round else . end), .errors,
            .sockets] | @tsv)
' "$OUT" | column -t -s $'\t'

# Ratios of median req/s against gaidaros reuseport=true (A), per
# connection count; and two generators against one.
echo
jq -s -r '
  def median: sort | .[(length - 1) / 2 | floor];
  map(select(.discarded | not))
  | (map(select(.phase == "ab")) | group_by(.connections)[]
     | (map(select(.key == "A")) | map(.requests_per_s) | median) as $a
     | group_by(.key)[] | select(.[0].key != "A")
     | "\(.[0].connections) conns: \(.[0].server) / reuseport=true = "
       + "\((map(.requests_per_s) | median) / $a * 1000 | round / 1000)"),
    (map(select(.phase == "gencheck")) | select(length > 0)
     | (map(select(.generators == 1)) | map(.requests_per_s) | median) as $one
     | (map(select(.generators == 2)) | map(.requests_per_s) | median) as $two
     | "generator check: two loadgens / one = \($two / $one * 1000 | round / 1000)")
' "$OUT"
