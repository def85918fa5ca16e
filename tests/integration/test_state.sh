#!/usr/bin/env bash
# Narrative state, bot commands and the posts/state CLI against a private
# PostgreSQL: state_check (state API incl. TTL, prefixes, db.update
# whitelist, Discord commands against an in-process fake), then the real
# `btl state ...` and `btl posts ...` with their outputs and exit codes.
source "$(dirname "$0")/lib.sh"
btl_setup

write_config "$T/btl.yaml" <<'EOF'
tasks: {}
EOF
export BTL_CONFIG="$T/btl.yaml"
BTL="$BTL_BUILD/btl"

check "btl migrate" "$BTL" migrate
check "state_check (state API, botcmd, fake Discord)" \
    "$BTL_BUILD/state_check" "$DATABASE_URL" "$BTL_SRC/migrations"

# run NAME WANT_RC CMD...: run CMD, keep stdout/stderr in $T/NAME.{out,err},
# pass when the exit code is WANT_RC.
run() {
    local name=$1 want=$2 rc=0; shift 2
    "$@" >"$T/$name.out" 2>"$T/$name.err" || rc=$?
    if [ "$rc" -eq "$want" ]; then
        pass "$name: exit $rc"
    else
        fail "$name: exit $rc, want $want (stderr: $(head -c 300 "$T/$name.err"))"
    fi
}
out_is() { [ "$(cat "$T/$1.out")" = "$2" ] || { log "  $1 stdout: $(cat "$T/$1.out")"; return 1; }; }
err_has() { grep -qF -- "$2" "$T/$1.err" || { log "  $1 stderr: $(cat "$T/$1.err")"; return 1; }; }

# ---- btl state ---------------------------------------------------------------
run set1 0 "$BTL" state set camp.week '{"n": 3, "tags": ["a","b"]}'
check "set prints the stored value" out_is set1 '{"n": 3, "tags": ["a", "b"]}'
run get1 0 "$BTL" state get camp.week
check "get prints the JSON value" out_is get1 '{"n": 3, "tags": ["a", "b"]}'
run set2 0 "$BTL" state set camp.week.day -5
check "a negative number is a value, not an option" out_is set2 '-5'
run set3 0 "$BTL" state set camp.weekly '"x"' --ttl 1h
run set4 0 "$BTL" state set camp_other.k true
check "ttl stored" sql_eq "SELECT expires_at > now() + interval '59 minutes' FROM narrative_state WHERE key = 'camp.weekly'" t
run list1 0 "$BTL" state list camp.week
check "list is hierarchical (not camp.weekly)" \
    out_is list1 "$(printf 'camp.week\t{"n": 3, "tags": ["a", "b"]}\ncamp.week.day\t-5')"
run list2 0 "$BTL" state list camp -n 1
check "list -n bounds the output" out_is list2 "$(printf 'camp.week\t{"n": 3, "tags": ["a", "b"]}')"
run list3 0 "$BTL" state list camp. -n 2
check "list children, ordered, bounded" \
    out_is list3 "$(printf 'camp.week\t{"n": 3, "tags": ["a", "b"]}\ncamp.week.day\t-5')"
run badjson 2 "$BTL" state set camp.x '{"a":'
check "invalid JSON is a usage error" err_has badjson "not valid JSON"
check "invalid JSON stored nothing" sql_eq "SELECT count(*) FROM narrative_state WHERE key = 'camp.x'" 0
run badkey 2 "$BTL" state get 'camp..x'
check "invalid key is a usage error" err_has badkey "invalid key"
run badttl 2 "$BTL" state set camp.x 1 --ttl soon
run nokey 1 "$BTL" state get camp.missing
check "missing key: message" err_has nokey "key camp.missing not found"
run del1 0 "$BTL" state delete camp.week.day
check "delete prints what it deleted" out_is del1 "deleted camp.week.day"
run del2 1 "$BTL" state delete camp.week.day
check "delete of an absent key fails" err_has del2 "not found"
run clear1 0 "$BTL" state clear camp
check "clear prints the count (camp, camp.week, camp.weekly: not camp_other)" out_is clear1 "deleted 2"
check "camp_other.k survived" sql_eq "SELECT count(*) FROM narrative_state WHERE key = 'camp_other.k'" 1
run clear2 2 "$BTL" state clear
run usage1 2 "$BTL" state frobnicate x
run usage2 2 "$BTL" state get a --reason x

# ---- btl posts ---------------------------------------------------------------
sql "DELETE FROM posts" >/dev/null # state_check's rows
sql "INSERT INTO posts (content_hash, body, narrative, angle, status, score)
     VALUES ('h1', 'First post: ' || repeat('x', 100), 'carousel', 'feature', 'pending', NULL),
            ('h2', E'Second\npost with a newline', 'carousel', 'usecase', 'pending', 41.5),
            ('h3', 'Third post', 'carousel', 'tutorial', 'rejected', 12),
            ('h4', 'Fourth post', 'carousel', 'community', 'posted', 44)" >/dev/null
id() { sql "SELECT id FROM posts WHERE content_hash = '$1'"; }
P1=$(id h1); P2=$(id h2); P3=$(id h3); P4=$(id h4)

run plist 0 "$BTL" posts
check "posts lists 4 rows + header" [ "$(wc -l <"$T/plist.out")" -eq 5 ]
check "header" grep -q '^ID  *STATUS  *SCORE  *NARRATIVE  *GENERATED  *BODY$' "$T/plist.out"
check "newest first" [ "$(sed -n 2p "$T/plist.out" | awk '{print $1}')" = "$P4" ]
check "body cut at 60 characters" grep -q "First post: $(printf 'x%.0s' $(seq 48))\$" "$T/plist.out"
check "newline flattened, score shown" grep -qE "^$P2 +pending +41\\.5 +carousel .*Second post with a newline\$" "$T/plist.out"
run plist2 0 "$BTL" posts --status pending -n 1
check "--status and -n" [ "$(wc -l <"$T/plist2.out")" -eq 2 ] 
check "--status pending -n 1 is the newest pending" grep -qE "^$P2 +pending" "$T/plist2.out"
run plist3 2 "$BTL" posts --status bogus

run appr 0 "$BTL" posts approve "$P1"
check "approve prints the new state" grep -q "^post $P1: approved (curated_at 20" "$T/appr.out"
check "approved in the table, curated_at set" \
    sql_eq "SELECT status || ',' || (curated_at IS NOT NULL) FROM posts WHERE id = $P1" "approved,true"
run appr2 1 "$BTL" posts approve "$P1"
check "approve twice: message" err_has appr2 "post $P1 is approved, cannot approve"
run appr3 1 "$BTL" posts approve "$P3"
check "approving a rejected post fails" err_has appr3 "post $P3 is rejected, cannot approve"
check "rejected post unchanged" sql_eq "SELECT status FROM posts WHERE id = $P3" rejected
run appr4 1 "$BTL" posts approve 999999
check "unknown post" err_has appr4 "post 999999 not found"
run appr5 2 "$BTL" posts approve abc

run rej1 0 "$BTL" posts reject "$P1" --reason "off topic"
check "reject an approved post" out_is rej1 "post $P1: rejected (reason: off topic)"
check "reason stored" sql_eq "SELECT status || ',' || reject_reason FROM posts WHERE id = $P1" "rejected,off topic"
run rej2 0 "$BTL" posts reject "$P2"
check "default reason" out_is rej2 "post $P2: rejected (reason: rejected by operator)"
run rej3 1 "$BTL" posts reject "$P4"
check "cannot reject a posted post" err_has rej3 "post $P4 is posted, cannot reject"
check "posted post unchanged" sql_eq "SELECT status FROM posts WHERE id = $P4" posted
run rej4 2 "$BTL" posts approve "$P2" --reason x
run rej5 2 "$BTL" posts reject

# No database: a clear failure, not a crash.
printf 'database: { url: "postgresql:///nodb?host=/nonexistent" }\n' >"$T/nodb.yaml"
run nodb 1 "$BTL" state get a.b --config "$T/nodb.yaml"
check "no database: message" err_has nodb "database"

finish
