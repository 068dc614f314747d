-- Rollout plans (progressive delivery): the canary's steps, guards and where it stands, so that a
-- registry killed mid-rollout resumes it at the same step and any replica can take over driving it.
CREATE TABLE rollout_plans (
    plan_id         bigserial PRIMARY KEY,
    deployment      text NOT NULL REFERENCES deployments (name) ON DELETE CASCADE,
    model_id        text NOT NULL,
    baseline        text NOT NULL,
    candidate       text NOT NULL,
    steps           integer[] NOT NULL,
    step_index      integer NOT NULL DEFAULT 0,
    step_duration_s double precision NOT NULL,
    min_requests    integer NOT NULL,
    warmup_s        double precision NOT NULL DEFAULT 0,
    guards          jsonb NOT NULL,
    state           text NOT NULL,
    step_started_at timestamptz NOT NULL DEFAULT now(),
    created_by      text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    outcome         text NOT NULL DEFAULT '',
    -- The last judgement: guard readings, request counts, window, when and by which replica.
    judgement       jsonb NOT NULL DEFAULT '{}'
);
-- One active plan per deployment: a second StartRolloutPlan is refused even under a race.
CREATE UNIQUE INDEX rollout_plans_one_active ON rollout_plans (deployment)
    WHERE state IN ('running', 'paused');
CREATE INDEX rollout_plans_by_deployment ON rollout_plans (deployment, plan_id DESC);
