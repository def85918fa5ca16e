#!/usr/bin/env bash
# LLM budget accounting across connections in llm_usage (real PostgreSQL,
# real HTTP to tests/integration/fake_llm): rpm/rpd/tpm/tpd x multiplier hold
# cluster-wide, an exhausted budget answers BTL_EAGAIN fast with retry_after,
# and nothing reaches the server while over budget.
source "$(dirname "$0")/lib.sh"
btl_setup

LLM_PORT=$(free_port)
start fake_llm fake_llm --port "$LLM_PORT" --record "$T/llm.jsonl"
wait_for "fake_llm listening" 30 grep -q "^listening $LLM_PORT" "$T/fake_llm.log" ||
    fail "fake_llm did not start"

if timeout 100 "$BTL_BUILD/llm_check" "$DATABASE_URL" "$BTL_SRC/migrations" "$LLM_PORT" \
    "$T/llm.jsonl" >"$T/llm_check.log" 2>&1; then
    pass "llm_check: $(tail -n 1 "$T/llm_check.log")"
else
    fail "llm_check (exit $?)"
    cat "$T/llm_check.log"
fi

# A clean stop lets ASan's leak check run in the fake too.
stop_wait fake_llm
check "fake_llm stopped cleanly (status $STOP_STATUS)" [ "$STOP_STATUS" = 0 ]
finish
