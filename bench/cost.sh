#!/usr/bin/env bash
# Cost benchmark: LLM calls and tokens per generated, per curated and per
# approved post, for the shipped narrative file and the shipped curation
# settings, with the real scheduler, generator and curator processes on a
# private PostgreSQL cluster.
#
#   bash bench/cost.sh BUILD_DIR      (`make bench` passes ./build, a Release build)
#
# Scenarios, each on a fresh database with fresh processes:
#   fake_llm        the OpenAI-compatible fake (tests/integration/fake_llm.c)
#                   over HTTP, answering at once: the provider path a real
#                   deployment takes (usage from the reply, llm_usage rows);
#                   its request record is cross-checked. One trigger: the fake
#                   is deterministic (same prompt, same reply), so a second
#                   trigger would only write duplicates of the first.
#   fake_llm_paced  the same fake answering after BENCH_COST_DELAY_MS: a run's
#                   posts arrive over many seconds instead of one burst, which
#                   changes how many the event-woken curation approves
#   offline         the built-in offline provider (no network; a per-process
#                   nonce varies its texts), BENCH_COST_RUNS triggers
# Counts come from the services' own metrics (btl_llm_requests_total and
# btl_llm_tokens_total on each service's /metrics: generator = narrative
# acts, curator = scoring), posts rows (metadata.acts: attempts and tokens
# per act) and, for fake_llm, its request record and the llm_usage table.
#
# Environment knobs (defaults are what docs/PERFORMANCE.md reports):
#   BENCH_COST_RUNS=4           generation triggers of the offline scenario
#   BENCH_COST_ITER=10          carousel iterations per trigger (the shipped value)
#   BENCH_COST_DELAY_MS=400     fake LLM delay of fake_llm_paced
#   BENCH_COST_SCENARIOS="fake_llm fake_llm_paced offline"
# Prints a markdown report and writes it to bench/results/cost.md.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH_ROOT=$(cd "$here/.." && pwd)
BENCH_BUILD=$(cd "${1:?usage: cost.sh BUILD_DIR}" && pwd)
# shellcheck source=bench/lib.sh
source "$here/lib.sh"

RUNS=${BENCH_COST_RUNS:-4}
ITER=${BENCH_COST_ITER:-10}
DELAY_MS=${BENCH_COST_DELAY_MS:-400}
PROVIDERS=${BENCH_COST_SCENARIOS:-"fake_llm fake_llm_paced offline"}

bench_setup cost
CAROUSEL="$BENCH_ROOT/config/narratives/generation_carousel.yaml"
raw="$BT/raw.txt"
acts_out="$BT/acts.txt"
: >"$raw"
: >"$acts_out"
started=$(date +%s)

# write_config FILE KIND: the shipped config/botticelli.yaml values for
# worker, curation and generation, except: LLM budget unlimited (the shipped
# 15 rpm only paces the calls, it does not change how many), scheduled fires
# far away (the runs are triggered), the posting task left out (no LLM).
write_config() {
    local llm
    if [ "$2" = offline ]; then
        llm='{ kind: offline, model: offline, budget: { rpm: 0, rpd: 0, tpm: 0, tpd: 0 } }'
    else
        llm='{ kind: openai, base_url: "http://127.0.0.1:${LLM_PORT}/v1", model: fake-model, api_key_env: LLM_API_KEY, timeout: 60s, budget: { rpm: 0, rpd: 0, tpm: 0, tpd: 0 } }'
    fi
    cat >"$1" <<EOF
database: { url: "\${DATABASE_URL}" }
bus:
  publish: "tcp://127.0.0.1:\${PUB_PORT}"
  collect: "tcp://127.0.0.1:\${COLLECT_PORT}"
  control: "tcp://127.0.0.1:\${CONTROL_PORT}"
  connect: tcp://127.0.0.1
scheduler: { check_interval: 1s, max_consecutive_failures: 5, circuit_reset: 5m, failover: 10s }
worker: { concurrency: 4, lease: 60s, poll_fallback: 5s, batch_size: 16, max_attempts: 5 }
providers:
  llm: $llm
tasks:
  generation:
    service: generator
    schedule: "once 2099-01-01T00:00:00Z"
    narrative: "$CAROUSEL"
    iterations: $ITER
    execution: { max_retries: 2, continue_on_error: false, stop_on_unrecoverable: true, strategy: single_run }
  curation:
    service: curator
    schedule: "once 2099-01-01T00:00:00Z"
    execution: { strategy: drain_queue, max_retries: 3, continue_on_error: true }
    curation:
      mode: auto
      select_top: 3
      min_score: 35
      max_chars: 2000
      batch_size: 5
      on_event: true
      keep_unselected: false
      banned_phrases: []
      near_duplicate: { days: 30, threshold: 0.8 }
EOF
}

run_provider() { # run_provider SCENARIO PROVIDER DELAY_MS TRIGGERS
    local prov=$1 kind=$2 delay=$3 triggers=$4
    local dir="$BT/$prov"
    mkdir -p "$dir"
    DATABASE_URL=$(fresh_db "cost_$prov")
    export DATABASE_URL LLM_API_KEY="sk-bench-$RANDOM"
    LLM_PORT=$(free_port); PUB_PORT=$(free_port); COLLECT_PORT=$(free_port); CONTROL_PORT=$(free_port)
    export LLM_PORT PUB_PORT COLLECT_PORT CONTROL_PORT
    write_config "$dir/btl.yaml" "$kind"
    "$BENCH_BUILD/btl" validate "$dir/btl.yaml" >/dev/null
    "$BENCH_BUILD/btl" migrate --config "$dir/btl.yaml" >/dev/null
    if [ "$kind" = fake_llm ]; then
        bstart "$dir" fake_llm fake_llm --port "$LLM_PORT" --record "$dir/llm.jsonl" --delay-ms "$delay"
        wait_until "fake_llm" 20 grep -q "^listening $LLM_PORT" "$dir/fake_llm.log"
    fi
    local hs hg hc
    hs=$(free_port); hg=$(free_port); hc=$(free_port)
    bstart "$dir" scheduler btl-scheduler --config "$dir/btl.yaml" --http "127.0.0.1:$hs" --instance sched
    bstart "$dir" generator btl-generator --config "$dir/btl.yaml" --http "127.0.0.1:$hg" --instance gen-1
    bstart "$dir" curator btl-curator --config "$dir/btl.yaml" --http "127.0.0.1:$hc" --instance cur-1
    for p in $hs $hg $hc; do wait_until "ready :$p" 30 http_ready "$p"; done
    wait_until "tasks synced" 20 bash -c "[ \$(psql '$DATABASE_URL' -qAtX -c \"SELECT count(*) FROM tasks\") = 2 ]"

    local i reply run
    for i in $(seq 1 "$triggers"); do
        reply=$(nngcat --req --dial "tcp://127.0.0.1:$CONTROL_PORT" --data "trigger generation" --ascii --recv-timeout 5)
        run=$(sed -n 's/.*"run_id":\([0-9]*\).*/\1/p' <<<"$reply")
        [ -n "$run" ] || { echo "cost: trigger failed: $reply" >&2; exit 1; }
        # This run's narratives all finished, every post decided, no
        # curation job left (on_event jobs run 3 s after each event).
        local q="SELECT (SELECT count(*) FROM jobs WHERE run_id = $run AND kind = 'generate.post' AND status IN ('done','dead')) = $((ITER * 5))
            AND NOT EXISTS (SELECT 1 FROM posts WHERE curated_at IS NULL)
            AND NOT EXISTS (SELECT 1 FROM jobs WHERE queue = 'curator' AND status IN ('queued','running'))"
        wait_until "$prov run $i" 300 bash -c "[ \"\$(psql '$DATABASE_URL' -qAtX -c \"$q\")\" = t ]" || {
            psql "$DATABASE_URL" -c "SELECT status, count(*) FROM posts GROUP BY 1" >&2
            exit 1
        }
        blog "$prov: generation run $i of $triggers (run $run) generated and curated: $(psql "$DATABASE_URL" -qAtX -c \
            "SELECT count(*) || ' posts, ' || count(*) FILTER (WHERE status = 'approved') || ' approved, last curated ' ||
                    round(extract(epoch FROM max(curated_at) - min(generated_at))::numeric, 2) || ' s after the first generated'
             FROM posts WHERE run_id = $run")"
    done

    local gen_req gen_ok gen_pt gen_ct cur_req cur_ok cur_pt cur_ct
    gen_req=$(metric_sum "$hg" btl_llm_requests_total)
    gen_ok=$(($(metric_sum "$hg" btl_llm_requests_total 'code="ok"') + $(metric_sum "$hg" btl_llm_requests_total 'code="200"')))
    gen_pt=$(metric_sum "$hg" btl_llm_tokens_total 'kind="prompt"')
    gen_ct=$(metric_sum "$hg" btl_llm_tokens_total 'kind="completion"')
    cur_req=$(metric_sum "$hc" btl_llm_requests_total)
    cur_ok=$(($(metric_sum "$hc" btl_llm_requests_total 'code="ok"') + $(metric_sum "$hc" btl_llm_requests_total 'code="200"')))
    cur_pt=$(metric_sum "$hc" btl_llm_tokens_total 'kind="prompt"')
    cur_ct=$(metric_sum "$hc" btl_llm_tokens_total 'kind="completion"')
    local dups audit
    dups=$(metric_sum "$hg" btl_posts_duplicates_total)
    audit=$(metric_sum "$hg" btl_posts_audit_rejected_total)
    local counts
    counts=$(psql "$DATABASE_URL" -qAtX -F' ' -c "
        SELECT (SELECT count(*) FROM jobs WHERE kind = 'generate.post'),
               (SELECT count(*) FROM posts),
               (SELECT count(*) FROM posts WHERE curated_at IS NOT NULL),
               (SELECT count(*) FROM posts WHERE status = 'approved'),
               (SELECT count(*) FROM posts WHERE status = 'rejected' AND reject_reason LIKE 'near-duplicate%'),
               (SELECT count(*) FROM posts WHERE status = 'rejected' AND reject_reason LIKE '%below min_score%'),
               (SELECT count(*) FROM posts WHERE status = 'rejected' AND reject_reason LIKE 'not in top%'),
               (SELECT count(*) FROM posts WHERE scores IS NOT NULL),
               (SELECT count(*) FROM jobs WHERE kind = 'generate.post' AND status = 'dead'),
               (SELECT count(*) FROM jobs WHERE queue = 'curator'),
               (SELECT count(DISTINCT curated_at) FROM posts WHERE status = 'approved')")
    # A curation job writes its selection in one transaction: one
    # curated_at (now()) per job that approved something.
    local jobs gen cur appr r_dup r_min r_top scored dead cjobs deciding
    read -r jobs gen cur appr r_dup r_min r_top scored dead cjobs deciding <<<"$counts"
    # Cross-checks: the fake's record and llm_usage count the same requests.
    local rec_gen="-" rec_cur="-" usage_req="-" usage_pt="-" usage_ct="-"
    if [ "$kind" = fake_llm ]; then
        rec_cur=$(jq -s '[.[] | select(.status == 200 and (.prompt | contains("### POST ")))] | length' "$dir/llm.jsonl")
        rec_gen=$(jq -s '[.[] | select(.status == 200 and ((.prompt | contains("### POST ")) | not))] | length' "$dir/llm.jsonl")
        read -r usage_req usage_pt usage_ct <<<"$(psql "$DATABASE_URL" -qAtX -F' ' -c \
            "SELECT sum(requests), sum(prompt_tokens), sum(completion_tokens) FROM llm_usage WHERE window_kind = 'day'")"
        if [ "$rec_gen" != "$gen_ok" ] || [ "$rec_cur" != "$cur_ok" ] || [ "$usage_req" != "$((gen_req + cur_req))" ] ||
            [ "$usage_pt" != "$((gen_pt + cur_pt))" ] || [ "$usage_ct" != "$((gen_ct + cur_ct))" ]; then
            echo "cost: counts disagree: record gen $rec_gen / cur $rec_cur, metrics ok gen $gen_ok / cur $cur_ok," \
                "llm_usage $usage_req req $usage_pt+$usage_ct tok, metrics $((gen_req + cur_req)) req" \
                "$((gen_pt + cur_pt))+$((gen_ct + cur_ct)) tok" >&2
            exit 1
        fi
    fi
    echo "RESULT provider=$prov llm=$kind delay_ms=$delay runs=$triggers jobs=$jobs generated=$gen duplicates=$dups audit_refused=$audit curated=$cur scored=$scored approved=$appr rejected_near_dup=$r_dup rejected_min_score=$r_min rejected_not_top=$r_top dead_jobs=$dead curate_jobs=$cjobs deciding_jobs=$deciding gen_requests=$gen_req gen_ok=$gen_ok gen_prompt_tokens=$gen_pt gen_completion_tokens=$gen_ct cur_requests=$cur_req cur_ok=$cur_ok cur_prompt_tokens=$cur_pt cur_completion_tokens=$cur_ct record_gen=$rec_gen record_cur=$rec_cur llm_usage_requests=$usage_req" |
        tee -a "$raw" >&2
    # Per act, from the posts' own reports (stored posts only).
    psql "$DATABASE_URL" -qAtX -F' ' -c "
        SELECT a->>'name', round(avg((a->>'attempts')::int), 3), round(avg((a->>'prompt_tokens')::int)),
               round(avg((a->>'completion_tokens')::int)), count(*)
        FROM posts, jsonb_array_elements(metadata->'acts') WITH ORDINALITY AS x(a, k)
        GROUP BY a->>'name' ORDER BY min(k)" 2>/dev/null |
        sed "s/^/ACT provider=$prov /" >>"$acts_out" || true
    bstop curator generator scheduler
    if [ "$kind" = fake_llm ]; then bstop fake_llm; fi
    psql "$PG_BASE/postgres" -qAtX -c "DROP DATABASE cost_$prov" >/dev/null
}

for p in $PROVIDERS; do
    case $p in
    fake_llm) run_provider fake_llm fake_llm 0 1 ;;
    fake_llm_paced) run_provider fake_llm_paced fake_llm "$DELAY_MS" 1 ;;
    offline) run_provider offline offline 0 "$RUNS" ;;
    *) echo "cost: unknown scenario $p" >&2; exit 2 ;;
    esac
done
elapsed=$(($(date +%s) - started))

# ---- report -------------------------------------------------------------------
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }
div() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 > 0) printf "%.2f", a / b; else print "n/a" }'; }
divi() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 > 0) printf "%.0f", a / b; else print "n/a" }'; }
report() {
    echo "# LLM cost per post"
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ), run time ${elapsed}s; machine: $(machine_line)"
    echo "- each trigger: $ITER iterations (shipped) × 5 narratives of config/narratives/generation_carousel.yaml"
    echo "  = $((ITER * 5)) generate.post jobs; fake_llm and fake_llm_paced (--delay-ms $DELAY_MS): 1 trigger;"
    echo "  offline: $RUNS triggers. Shipped worker settings (concurrency 4, batch 16) and curation settings"
    echo "  (auto, select_top 3, min_score 35, batch_size 5, on_event true, near_duplicate 30 d / 0.8,"
    echo "  max_chars 2000); LLM budget unlimited (the shipped 15 rpm only paces calls). No poster: posting"
    echo "  makes no LLM call."
    echo "- tokens: the fake and the offline provider count tokens as words + punctuation marks"
    echo "  (btl__llm_count_tokens); a real model's tokenizer gives more (BPE: ~1.3 per English word)"
    echo "  and a real model writes texts of other lengths: the call counts are the structural part."
    echo
    echo "| scenario | jobs | generated | curated | approved | gen calls | gen tokens (prompt + completion) | scoring calls | scoring tokens | calls / generated post | calls / curated post (scoring) | **calls / approved post** | **tokens / approved post** |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    local l p
    for p in $PROVIDERS; do
        l=$(grep "provider=$p " "$raw") || continue
        local gen cur appr gr gp gc cr cp cc
        gen=$(field generated "$l"); cur=$(field curated "$l"); appr=$(field approved "$l")
        gr=$(field gen_requests "$l"); gp=$(field gen_prompt_tokens "$l"); gc=$(field gen_completion_tokens "$l")
        cr=$(field cur_requests "$l"); cp=$(field cur_prompt_tokens "$l"); cc=$(field cur_completion_tokens "$l")
        echo "| $p | $(field jobs "$l") | $gen | $cur | $appr | $gr | $gp + $gc | $cr | $cp + $cc | $(div "$gr" "$gen") | $(div "$cr" "$cur") | **$(div $((gr + cr)) "$appr")** | **$(divi $((gp + gc + cp + cc)) "$appr")** |"
    done
    echo
    echo "Why posts were not approved (of the curated): near-duplicate / below min_score / not in top 3 —"
    for p in $PROVIDERS; do
        l=$(grep "provider=$p " "$raw") || continue
        echo "- $p: $(field rejected_near_dup "$l") / $(field rejected_min_score "$l") / $(field rejected_not_top "$l");" \
            "$(field scored "$l") posts scored by the LLM; $(field curate_jobs "$l") curation jobs (one per post.generated" \
            "event, 3 s after it), $(field deciding_jobs "$l") of them approved posts; jobs that stored no post:" \
            "$(field duplicates "$l") duplicate text, $(field audit_refused "$l") refused by the audit act, $(field dead_jobs "$l") dead"
    done
    echo
    echo "Per act (averages over the stored posts' metadata.acts: attempts = calls, tokens per post):"
    echo
    echo "| scenario | act | calls per post | prompt tokens | completion tokens | posts |"
    echo "|---|---|---|---|---|---|"
    awk '{ sub("provider=", "", $2); printf "| %s | %s | %s | %s | %s | %s |\n", $2, $3, $4, $5, $6, $7 }' "$acts_out"
    echo
    echo "fake_llm cross-check: its request record (scoring = prompts with \"### POST\" blocks) and the"
    echo "llm_usage table agree with the services' metrics (the script stops if they do not)."
    echo
    echo "## Raw results"
    echo
    echo '```'
    cat "$raw"
    echo '```'
}
mkdir -p "$here/results"
report | tee "$here/results/cost.md"
