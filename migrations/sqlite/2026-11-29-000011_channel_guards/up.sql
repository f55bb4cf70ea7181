-- A channel's checks before any scenario runs (allow_ips, rate_limit, verify, cors) as one
-- JSON object; empty: none (channels::guards).
ALTER TABLE channels ADD COLUMN guards TEXT NOT NULL DEFAULT '';
