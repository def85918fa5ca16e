#!/usr/bin/env bash
# The full stack under garbage: 1,000 junk requests on the control socket
# (each must get an error reply; 3 more over nng's 1 MiB limit only cost
# the sender its connection) and 1,000 junk frames on the collect socket
# (random bytes, truncated and mutated msgpack, wrong types, trailing bytes,
# oversize), twice. Afterwards every service still answers, the rejects are counted
# by reason, a normal trigger still runs end to end, memory stayed bounded,
# and SIGTERM still exits 0.
source "$(dirname "$0")/lib.sh"
# ASan keeps freed memory in a quarantine (256 MiB by default), which would
# make RSS grow with the volume of garbage rather than with any leak; a small
# quarantine keeps the RSS bound below meaningful.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}:quarantine_size_mb=8"
btl_setup
export T

RSS_BOUND_KIB=$((50 * 1024)) # growth allowed per service; ASan adds up to 8 MiB quarantine
EX="$BTL_SRC/proto/examples"

write_config "$T/btl.yaml" <<'EOF2'
scheduler: { check_interval: 200ms, failover: 2s }
worker: { concurrency: 2, lease: 10s, poll_fallback: 500ms, batch_size: 8 }
platforms:
  file: { path: "${T}/posts.log" }
tasks:
  gen_noop:
    service: generator
    schedule: "once 2099-01-01T00:00:00Z"
    job: noop
    fanout: 3
  cur_noop:
    service: curator
    schedule: "once 2099-01-01T00:00:00Z"
    job: noop
  post_noop:
    service: poster
    schedule: "once 2099-01-01T00:00:00Z"
    platform: file
    job: noop
EOF2

SERVICES="scheduler generator curator poster"
start scheduler btl-scheduler --config "$T/btl.yaml" --http "127.0.0.1:$HTTP_SCHED" --instance sched-a
start generator btl-generator --config "$T/btl.yaml" --http "127.0.0.1:$HTTP_GEN" --instance gen-a
start curator btl-curator --config "$T/btl.yaml" --http "127.0.0.1:$HTTP_CUR" --instance cur-a
start poster btl-poster --config "$T/btl.yaml" --http "127.0.0.1:$HTTP_POST" --instance post-a
http_of() { case $1 in scheduler) echo "$HTTP_SCHED" ;; generator) echo "$HTTP_GEN" ;; curator) echo "$HTTP_CUR" ;; poster) echo "$HTTP_POST" ;; esac; }

all_ready() {
    local s
    for s in $SERVICES; do http_ok "$(http_of "$s")" /health/ready || return 1; done
}
for s in $SERVICES; do
    p=$(http_of "$s")
    if wait_for "$s ready" 30 http_ok "$p" /health/ready; then
        pass "$s ready before the garbage"
    else
        fail "$s ready before the garbage: $(curl -sS --max-time 2 "http://127.0.0.1:$p/health/ready" 2>&1)"
    fi
done
check "control ping" wait_for "ping" 10 bash -c "nngcat --req --dial $CONTROL_URL --data ping --ascii --recv-timeout 2 | grep -q '\"ok\":true'"

# end_to_end TAG: trigger one noop task per worker service; each run must
# produce a successful executions row with all its items.
end_to_end() {
    local task n reply run
    for task in gen_noop:3 cur_noop:1 post_noop:1; do
        n=${task#*:}; task=${task%:*}
        reply=$(control "trigger $task")
        run=$(sed -n 's/.*"run_id":\([0-9]*\).*/\1/p' <<<"$reply")
        check "$1: trigger $task replies with a run id" test -n "$run"
        check "$1: $task runs end to end" wait_for "$task execution" 30 \
            sql_ge "SELECT coalesce(sum(items_ok),0) FROM executions WHERE run_id = ${run:-0} AND success" "$n"
    done
}
# A first run warms every code path, so the RSS baseline is not a cold start.
end_to_end "before"
declare -A RSS0
for s in $SERVICES; do RSS0[$s]=$(rss_kib "$(pid_of "$s")"); done
log "RSS before (KiB): $(for s in $SERVICES; do printf '%s=%s ' "$s" "${RSS0[$s]}"; done)"

# ---- build the garbage ---------------------------------------------------
G="$T/garbage"; mkdir -p "$G/ctl" "$G/bus" "$G/rep"
rnd() { echo $(( (RANDOM << 15 | RANDOM) % $1 )); }
# Hex helpers, so binary frames can be edited in bash.
hexof() { xxd -p "$1" | tr -d '\n'; }
unhex() { xxd -r -p >"$1"; }
examples=("$EX"/*.msgpack)
check "proto examples present" test "${#examples[@]}" -ge 5

# File names come from a counter bumped in this shell (a redirection of an
# external command is expanded in the child, so $((i++)) there is lost).
ci=0
ctl() { ci=$((ci + 1)); CF="$G/ctl/$ci.$1"; }
bi=0
bus() { bi=$((bi + 1)); BF="$G/bus/$bi"; }

# Control: random binary (may look like msgpack), random text, and requests
# over the 4 KiB request limit but under nng's 1 MiB frame limit.
for _ in $(seq 1 495); do ctl bin; head -c $(( $(rnd 2048) + 1 )) /dev/urandom >"$CF"; done
for _ in $(seq 1 495); do
    ctl txt; head -c $(( $(rnd 300) + 1 )) /dev/urandom | base64 -w0 | tr '+/=' ' ;x' >"$CF"
done
for _ in $(seq 1 10); do
    ctl txt; head -c $(( 4096 + $(rnd 500000) )) /dev/urandom | base64 -w0 >"$CF"
done

# Bus: random bytes; a real topic then random bytes.
for _ in $(seq 1 305); do bus; head -c $(( $(rnd 4096) + 1 )) /dev/urandom >"$BF"; done
for _ in $(seq 1 150); do
    bus; { printf 'exec.result '; head -c $(( $(rnd 512) + 1 )) /dev/urandom; } >"$BF"
done
# Truncated valid frames (cut inside the envelope, after the topic).
for _ in $(seq 1 150); do
    e=${examples[$(rnd ${#examples[@]})]}; sz=$(stat -c %s "$e")
    bus; head -c $(( 20 + $(rnd $((sz - 21))) )) "$e" >"$BF"
done
# Mutated valid frames: 1-4 bytes of the envelope replaced at random, which
# mostly yields wrong types, bad lengths or unknown markers (a change inside
# a string value can leave a valid frame: counted as accepted below).
for _ in $(seq 1 200); do
    e=${examples[$(rnd ${#examples[@]})]}; h=$(hexof "$e"); sz=$(( ${#h} / 2 ))
    for _ in $(seq 0 "$(rnd 4)"); do
        pos=$(( 16 + $(rnd $((sz - 16))) ))
        h="${h:0:$((pos * 2))}$(printf '%02x' "$(rnd 256)")${h:$((pos * 2 + 2))}"
    done
    bus; unhex "$BF" <<<"$h"
done
# Valid frames with trailing bytes.
for _ in $(seq 1 100); do
    e=${examples[$(rnd ${#examples[@]})]}
    bus; { cat "$e"; head -c $(( $(rnd 64) + 1 )) /dev/urandom; } >"$BF"
done
# Wrong types and values on purpose: v as a string, v = 2, ts as a string,
# body as an array, a topic that does not match the envelope's type.
for _ in $(seq 1 18); do
    for e in "${examples[@]}"; do
        h=$(hexof "$e")
        case $(rnd 5) in
        0) h=${h/a17601/a176a131} ;;               # v: "1"
        1) h=${h/a17601/a17602} ;;                 # v: 2
        2) h=${h/a27473cf/a27473a3313233cf} ;;     # ts: "123", then a stray value
        3) h=${h/a4626f647987/a4626f647990} ;;     # body: [] then the map's bytes
        4) h="7469636b2e706f7374657220${h#*20}" ;; # topic tick.poster on any type
        esac
        bus; unhex "$BF" <<<"$h"
    done
done
nbus_small=$bi
# Oversize (> 1 MiB): nng drops these with the connection, never delivered.
mkdir -p "$G/bus_huge"
for k in 1 2 3 4 5; do
    { cat "${examples[0]}"; head -c $((1024 * 1024 + 100)) /dev/urandom; } >"$G/bus_huge/$k"
done
nctl=$ci; nbus=$bi
log "garbage: $nctl control requests, $nbus bus frames (+5 oversize)"

frames_in() {
    curl -fsS --max-time 5 "http://127.0.0.1:$HTTP_SCHED/metrics" |
        awk '/^btl_bus_frames_total\{direction="in"/ {s += $NF} END {printf "%d\n", s}'
}
ctl_bad() {
    curl -fsS --max-time 5 "http://127.0.0.1:$HTTP_SCHED/metrics" |
        awk '/^btl_control_requests_total\{.*"(invalid|unknown)"/ {s += $NF} END {printf "%d\n", s}'
}
rej0=$(metric "$HTTP_SCHED" btl_bus_frames_rejected_total)
in0=$(frames_in)
ctl_bad0=$(ctl_bad)

# ---- send it -----------------------------------------------------------
export CONTROL_URL G
BUS_URL="tcp://127.0.0.1:$COLLECT_PORT"; export BUS_URL
mapfile -t busfiles < <(find "$G/bus" -type f | sort -V)
send_garbage() {
    local t0 f
    t0=$(date +%s)
    # One nngcat per request; the reply (or its absence) is kept per request.
    find "$G/ctl" -type f -printf '%f\n' | xargs -P 4 -I{} sh -c \
        'nngcat --req --dial "$CONTROL_URL" --file "$G/ctl/{}" --raw --recv-timeout 10 >"$G/rep/{}" 2>"$G/rep/{}.err" || true'
    log "control garbage sent in $(( $(date +%s) - t0 )) s"
    # Requests over nng's 1 MiB frame limit: nng drops the connection, so no
    # reply is expected; the socket must keep serving others.
    for _ in 1 2 3; do
        head -c $((1024 * 1024 + 10)) /dev/urandom >"$G/huge"
        nngcat --req --dial "$CONTROL_URL" --file "$G/huge" --raw --recv-timeout 2 >/dev/null 2>&1 || true
    done
    check "control still answers after oversize requests" \
        bash -c "nngcat --req --dial $CONTROL_URL --data ping --ascii --recv-timeout 5 | grep -q '\"ok\":true'"
    t0=$(date +%s)
    # A few through nngcat itself, the bulk over one connection.
    for f in "${busfiles[@]:0:20}"; do
        nngcat --push --dial "$BUS_URL" --file "$f" --send-timeout 5 2>>"$G/bus.err" || true
    done
    check "bus_flood sent the rest" "$BTL_BUILD/bus_flood" "$BUS_URL" "${busfiles[@]:20}"
    # Oversize last, through nngcat: each costs the sender its connection.
    for f in "$G"/bus_huge/*; do
        nngcat --push --dial "$BUS_URL" --file "$f" --send-timeout 2 2>>"$G/bus.err" || true
    done
    log "bus garbage sent in $(( $(date +%s) - t0 )) s"
}
send_garbage

# ---- control replies ----------------------------------------------------
no_reply=0; not_error=0; ok_true=0
for f in "$G"/ctl/*; do
    r="$G/rep/$(basename "$f")"
    if [ ! -s "$r" ]; then no_reply=$((no_reply + 1)); continue; fi
    # A JSON error, or a msgpack map holding "ok": false (a2 6f 6b c2).
    if ! LC_ALL=C grep -aq '"ok":false' "$r" && ! xxd -p "$r" | tr -d '\n' | grep -q 'a26f6bc2'; then
        not_error=$((not_error + 1))
        [ $not_error -le 3 ] && log "not an error reply to $(basename "$f"): $(head -c 200 "$r" | tr -c '[:print:]' '.')"
    fi
    LC_ALL=C grep -aq '"ok":true' "$r" && ok_true=$((ok_true + 1))
done
check "every control request got a reply ($no_reply without)" test "$no_reply" -eq 0
check "every reply is an error (ok false) ($not_error otherwise)" test "$not_error" -eq 0
check "no garbage request succeeded ($ok_true ok:true)" test "$ok_true" -eq 0
sample=$(find "$G/rep" -name "*.txt" -size +0 -print -quit)
log "sample text reply: $(head -c 200 "$sample")"
ctl_bad1=$(ctl_bad)
check "control_requests_total counts the garbage as invalid/unknown (+$((ctl_bad1 - ctl_bad0)) of $nctl)" \
    test $((ctl_bad1 - ctl_bad0)) -ge "$nctl"

# ---- bus rejects --------------------------------------------------------
# Every deliverable frame is either accepted (it happened to decode) or
# rejected with a reason: none may vanish, none may be counted twice.
accounted() { [ $(( $(frames_in) - in0 + $(metric "$HTTP_SCHED" btl_bus_frames_rejected_total) - rej0 )) -eq "$1" ]; }
check "each of the $nbus_small deliverable frames accepted or rejected exactly once" \
    wait_for "frame accounting" 30 accounted "$nbus_small"
rej=$(( $(metric "$HTTP_SCHED" btl_bus_frames_rejected_total) - rej0 ))
log "rejected $rej, accepted $(( $(frames_in) - in0 )) of $nbus_small"
floor=$(( nbus_small * 8 / 10 ))
check "frames_rejected_total counts the garbage ($rej >= $floor)" test "$rej" -ge "$floor"
rejects=$(curl -fsS "http://127.0.0.1:$HTTP_SCHED/metrics" | grep '^btl_bus_frames_rejected_total' || true)
log "rejects by reason:"$'\n'"$rejects"
check "rejects carry reason labels (>= 3 distinct)" \
    test "$(grep -c '^btl_bus_frames_rejected_total{reason="[a-z_]*"}' <<<"$rejects")" -ge 3
check "no reject reason outside the fixed label set" \
    bash -c "! grep '^btl_bus_frames_rejected_total{' <<<'$rejects' | grep -vq '{reason=\"[a-z_]*\"}'"

# ---- still alive, still working -----------------------------------------
for s in $SERVICES; do
    check "$s process alive" kill -0 "$(pid_of "$s")"
done
check "all four ready after the garbage" wait_for "ready after" 15 all_ready
for s in $SERVICES; do
    check "$s /health/ready 200" http_ok "$(http_of "$s")" /health/ready
done
check "control ping ok after the garbage" bash -c "nngcat --req --dial $CONTROL_URL --data ping --ascii --recv-timeout 5 | grep -q '\"ok\":true'"
end_to_end "after"

declare -A RSS1
for s in $SERVICES; do
    RSS1[$s]=$(rss_kib "$(pid_of "$s")")
    d=$(( RSS1[$s] - RSS0[$s] ))
    check "$s RSS growth ${d} KiB < ${RSS_BOUND_KIB} KiB (before ${RSS0[$s]}, after ${RSS1[$s]})" test "$d" -lt "$RSS_BOUND_KIB"
done

# The same garbage once more: memory must level off, not keep growing.
rej0=$(metric "$HTTP_SCHED" btl_bus_frames_rejected_total)
in0=$(frames_in)
send_garbage
check "round 2: every frame accounted for" wait_for "frame accounting 2" 30 accounted "$nbus_small"
end_to_end "round 2"
for s in $SERVICES; do
    r2=$(rss_kib "$(pid_of "$s")")
    d=$(( r2 - RSS1[$s] ))
    check "$s RSS growth in round 2 ${d} KiB < $((RSS_BOUND_KIB / 3)) KiB (after ${r2})" test "$d" -lt $((RSS_BOUND_KIB / 3))
done

for s in $SERVICES; do
    stop_wait "$s"
    check "$s exits 0 on SIGTERM (got $STOP_STATUS)" test "$STOP_STATUS" = 0
done
finish
