-- Workers say whether they serve the deployments they last applied (stored beside their cache)
-- because they started while the registry was unreachable.
ALTER TABLE workers ADD COLUMN fallback boolean NOT NULL DEFAULT false;
