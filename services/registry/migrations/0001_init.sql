-- Models, immutable versions, aliases, deployments with routes, the revision counter,
-- deployment events for the broadcast, the append-only audit log, workers, the performance store.

CREATE TABLE models (
    model_id    text PRIMARY KEY,
    model_type  text NOT NULL,
    description text NOT NULL DEFAULT '',
    tags        jsonb NOT NULL DEFAULT '{}',
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE model_versions (
    id               bigserial UNIQUE,
    model_id         text NOT NULL REFERENCES models (model_id),
    version          text NOT NULL,
    source_uri       text NOT NULL,
    checkpoint_hash  text NOT NULL,
    loader           text NOT NULL,
    inference_config jsonb NOT NULL,
    signature        jsonb NOT NULL,
    lineage          jsonb NOT NULL,
    tags             jsonb NOT NULL DEFAULT '{}',
    description      text NOT NULL DEFAULT '',
    created_by       text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    status           text NOT NULL DEFAULT 'ready',
    PRIMARY KEY (model_id, version)
);
CREATE INDEX model_versions_tags ON model_versions USING gin (tags);

CREATE TABLE aliases (
    model_id   text NOT NULL,
    alias      text NOT NULL,
    version    text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_id, alias),
    FOREIGN KEY (model_id, version) REFERENCES model_versions (model_id, version)
);

-- One row; every deployment change takes the next value under this row's lock, so revisions
-- are gap-free and commit in revision order (a watcher reading `revision > n` misses nothing).
CREATE TABLE registry_revision (
    id       int PRIMARY KEY CHECK (id = 1),
    revision bigint NOT NULL
);
INSERT INTO registry_revision VALUES (1, 0);

CREATE TABLE deployments (
    name         text PRIMARY KEY,
    model_id     text NOT NULL REFERENCES models (model_id),
    routes       jsonb NOT NULL,
    follow_alias text NOT NULL DEFAULT '',
    signature    jsonb,
    description  text NOT NULL DEFAULT '',
    revision     bigint NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE deployment_events (
    revision   bigint PRIMARY KEY,
    deployment text NOT NULL,
    kind       text NOT NULL,
    action     text NOT NULL,
    state      jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deployment_events_by_deployment ON deployment_events (deployment, revision);

CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    action      text NOT NULL,
    entity_type text NOT NULL,
    entity_id   text NOT NULL,
    before      jsonb,
    after       jsonb,
    reason      text NOT NULL DEFAULT '',
    revision    bigint NOT NULL DEFAULT 0
);
CREATE INDEX audit_log_entity ON audit_log (entity_type, entity_id, id);

CREATE FUNCTION audit_log_is_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only();

CREATE TABLE workers (
    worker_id   text PRIMARY KEY,
    address     text NOT NULL DEFAULT '',
    state       text NOT NULL DEFAULT '',
    last_error  text NOT NULL DEFAULT '',
    deployments jsonb NOT NULL DEFAULT '[]',
    last_seen   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE benchmark_runs (
    run_id      text PRIMARY KEY,
    suite       text NOT NULL,
    model_id    text NOT NULL,
    version     text NOT NULL,
    deployment  text NOT NULL DEFAULT '',
    status      text NOT NULL,
    error       text NOT NULL DEFAULT '',
    conditions  jsonb NOT NULL DEFAULT '{}',
    hardware    text NOT NULL DEFAULT '',
    started_at  timestamptz,
    finished_at timestamptz,
    created_by  text NOT NULL DEFAULT '',
    recorded_at timestamptz NOT NULL DEFAULT now(),
    seq         bigserial UNIQUE
);
CREATE INDEX benchmark_runs_version ON benchmark_runs (model_id, version, suite);

CREATE TABLE benchmark_metrics (
    run_id  text NOT NULL REFERENCES benchmark_runs (run_id) ON DELETE CASCADE,
    name    text NOT NULL,
    value   double precision NOT NULL,
    unit    text NOT NULL DEFAULT '',
    samples double precision[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (run_id, name)
);
