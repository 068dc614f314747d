-- Live evidence in each worker's row, so that a heartbeat stays one statement: the newest cumulative
-- counters (rewritten by every heartbeat) and a short history of them (one snapshot appended per
-- live_sample_interval_s, trimmed to live_window_s; see live_metrics.py), with when it last grew.
-- live_latest is json, not jsonb: an UPDATE writes the changed part of the row to the WAL, and the
-- text is half the size of jsonb's binary form (317 against 668 bytes for two versions' counters).
ALTER TABLE workers ADD COLUMN live_latest json;
ALTER TABLE workers ADD COLUMN live_history jsonb NOT NULL DEFAULT '[]';
ALTER TABLE workers ADD COLUMN live_sampled_at timestamptz;
