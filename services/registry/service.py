"""The registry's domain services, one per concern, built once per replica; the servicer calls them
(protobuf stays above, SQL below in `repository`). See README.md for the module map."""

from __future__ import annotations

from modelyard.common.artifact_roots import ArtifactRoots, default_artifact_roots
from modelyard.registry.aliases import Aliases
from modelyard.registry.audit import History
from modelyard.registry.broadcast import DeploymentBroadcast
from modelyard.registry.catalog import Catalog
from modelyard.registry.db import Database
from modelyard.registry.deployments import Deployments
from modelyard.registry.live_metrics import LiveEvidence
from modelyard.registry.performance import Performance
from modelyard.registry.rollout_plans import RolloutPlans
from modelyard.registry.rollouts import Rollouts
from modelyard.registry.transfer import Transfer


class Registry:
    """Every registry operation, in plain Python types, grouped by concern. Callers pass the acting
    principal's name to each change."""

    def __init__(
        self,
        db: Database,
        broadcast: DeploymentBroadcast,
        *,
        heartbeat_ttl_s: float,
        lost_worker_window_s: float = 300.0,
        rollout_poll_interval_s: float = 1.0,
        artifact_roots: ArtifactRoots | None = None,
        live_window_s: float = 180.0,
        live_sample_interval_s: float = 5.0,
    ) -> None:
        # Where a version's source_uri may point (default: the default artifact store).
        roots = artifact_roots or ArtifactRoots.parse(default_artifact_roots())
        self.broadcast = broadcast
        self.catalog = Catalog(db, roots)
        self.aliases = Aliases(db, broadcast)
        self.deployments = Deployments(db, broadcast)
        self.rollouts = Rollouts(
            db,
            broadcast,
            heartbeat_ttl_s=heartbeat_ttl_s,
            lost_worker_window_s=lost_worker_window_s,
            poll_interval_s=rollout_poll_interval_s,
            live_window_s=live_window_s,
            live_sample_interval_s=live_sample_interval_s,
        )
        self.live = LiveEvidence(db, heartbeat_ttl_s=heartbeat_ttl_s, live_window_s=live_window_s)
        self.plans = RolloutPlans(db, broadcast, self.live, self.aliases, heartbeat_ttl_s=heartbeat_ttl_s)
        self.performance = Performance(db)
        self.transfer = Transfer(db, broadcast, roots)
        self.history = History(db)
