#!/usr/bin/env bash
# The statement cache of the db module (prepared statements per connection)
# against a private PostgreSQL: prepared once, results and errors identical
# to the unprepared path, cache emptied by reconnects, statements removed
# (DEALLOCATE ALL, DISCARD ALL) or invalidated (ALTER TABLE) behind its back,
# and the per-connection bound.
source "$(dirname "$0")/lib.sh"
btl_setup

check "db_check (statement cache)" "$BTL_BUILD/db_check" "$DATABASE_URL"
finish
