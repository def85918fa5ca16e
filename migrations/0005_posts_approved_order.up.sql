-- The poster claims the best approved post with ORDER BY score DESC NULLS
-- LAST, id. posts_approved_idx sorts NULL scores first (DESC's default), so
-- it could not serve that order and every claim sorted all approved posts.
DROP INDEX IF EXISTS posts_approved_idx;
CREATE INDEX IF NOT EXISTS posts_approved_idx ON posts (score DESC NULLS LAST, id)
    WHERE status = 'approved';
