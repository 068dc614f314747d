-- A rollout plan may begin with a shadow step: the candidate staged at weight 0, receiving this
-- percent of the unpinned requests as mirrored copies, judged by the same guards before it takes
-- any traffic (its steps then start with 0).
ALTER TABLE rollout_plans ADD COLUMN shadow_percent integer NOT NULL DEFAULT 0;
