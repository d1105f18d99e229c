//! The Retention service: policies of tenants and clusters, for their operators and admins.

use tonic::{Request, Response, Status};
use walvault_proto::pb;
use walvault_proto::TenantId;

use super::{blocking, cluster_ref, principal, status, Domain};
use crate::retention::{Policy, PolicyOverride, PolicyView};

#[derive(Debug)]
pub struct RetentionApi {
    domain: Domain,
}

impl RetentionApi {
    pub fn new(domain: Domain) -> Self {
        Self { domain }
    }
}

/// The tenant or the cluster a request names (exactly one).
enum Subject {
    Tenant(TenantId),
    Cluster(walvault_proto::ClusterId),
}

fn subject(tenant: &str, cluster: Option<pb::ClusterRef>) -> Result<Subject, Status> {
    match (tenant.is_empty(), cluster_ref(cluster)?) {
        (false, None) => tenant
            .parse()
            .map(Subject::Tenant)
            .map_err(|e| Status::invalid_argument(format!("{e}"))),
        (true, Some(c)) => Ok(Subject::Cluster(c)),
        _ => Err(Status::invalid_argument(
            "name either a tenant or a cluster, not both or neither",
        )),
    }
}

fn policy_pb(p: &Policy) -> pb::Policy {
    pb::Policy {
        recovery_window_days: p.recovery_window_days,
        keep_hourly: p.keep_hourly,
        keep_daily: p.keep_daily,
        keep_weekly: p.keep_weekly,
        keep_monthly: p.keep_monthly,
        min_backups: p.min_backups,
        rollforward_minutes: p.rollforward_minutes,
        rollforward_mib: p.rollforward_mib,
    }
}

fn override_pb(o: &PolicyOverride) -> pb::PolicyOverride {
    pb::PolicyOverride {
        recovery_window_days: o.recovery_window_days,
        no_recovery_window: o.no_recovery_window,
        keep_hourly: o.keep_hourly,
        keep_daily: o.keep_daily,
        keep_weekly: o.keep_weekly,
        keep_monthly: o.keep_monthly,
        min_backups: o.min_backups,
        rollforward_minutes: o.rollforward_minutes,
        rollforward_mib: o.rollforward_mib,
    }
}

fn override_from(o: pb::PolicyOverride) -> PolicyOverride {
    PolicyOverride {
        recovery_window_days: o.recovery_window_days,
        no_recovery_window: o.no_recovery_window,
        keep_hourly: o.keep_hourly,
        keep_daily: o.keep_daily,
        keep_weekly: o.keep_weekly,
        keep_monthly: o.keep_monthly,
        min_backups: o.min_backups,
        rollforward_minutes: o.rollforward_minutes,
        rollforward_mib: o.rollforward_mib,
    }
}

fn info(v: &PolicyView) -> pb::PolicyInfo {
    pb::PolicyInfo {
        tenant: v.tenant.to_string(),
        cluster: v.cluster.as_ref().map(|c| pb::ClusterRef {
            tenant: c.tenant().to_string(),
            cluster: c.name().to_owned(),
        }),
        tenant_policy: Some(policy_pb(&v.tenant_policy)),
        cluster_override: Some(override_pb(&v.cluster_override)),
        effective: Some(policy_pb(&v.effective)),
        quota_bytes: v.quota.unwrap_or(0),
    }
}

fn decision_pb(d: &crate::retention::plan::Decision) -> pb::PruneDecision {
    use crate::retention::plan::Item;
    pb::PruneDecision {
        kind: match d.item {
            Item::Backup(_) => "backup",
            Item::Wal(_) => "wal",
        }
        .into(),
        name: d.item.name().to_owned(),
        keep: d.keep,
        reasons: d.reasons.clone(),
    }
}

#[tonic::async_trait]
impl pb::retention_server::Retention for RetentionApi {
    async fn prune(
        &self,
        req: Request<pb::PruneRequest>,
    ) -> Result<Response<pb::PruneResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let cluster = p
            .resolve_cluster(cluster_ref(r.cluster)?)
            .map_err(status::auth)?;
        p.may_see_tenant(cluster.tenant()).map_err(status::auth)?;
        let domain = self.domain.clone();
        let (outcome, policy) = blocking(move || {
            let policy = domain
                .policies
                .effective(&cluster)
                .map_err(status::retention)?;
            let o = domain
                .pruner
                .prune(&cluster, crate::unix_now(), r.dry_run)
                .map_err(status::retention)?;
            Ok((o, policy))
        })
        .await?;
        Ok(Response::new(pb::PruneResponse {
            decisions: outcome.plan.decisions.iter().map(decision_pb).collect(),
            executed: outcome.executed,
            backups_dropped: outcome.backups_dropped as u32,
            wal_dropped: outcome.wal_dropped as u32,
            resumed: outcome.resumed as u32,
            skipped: outcome.skipped,
            policy: Some(policy_pb(&policy)),
        }))
    }

    async fn show_policy(
        &self,
        req: Request<pb::ShowPolicyRequest>,
    ) -> Result<Response<pb::PolicyInfo>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let subject = subject(&r.tenant, r.cluster)?;
        let policies = self.domain.policies.clone();
        let view = match subject {
            Subject::Tenant(t) => {
                p.may_see_tenant(&t).map_err(status::auth)?;
                blocking(move || policies.show_tenant(&t).map_err(status::retention)).await?
            }
            Subject::Cluster(c) => {
                p.may_see_tenant(c.tenant()).map_err(status::auth)?;
                blocking(move || policies.show_cluster(&c).map_err(status::retention)).await?
            }
        };
        Ok(Response::new(info(&view)))
    }

    async fn set_policy(
        &self,
        req: Request<pb::SetPolicyRequest>,
    ) -> Result<Response<pb::PolicyInfo>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let subject = subject(&r.tenant, r.cluster)?;
        let change = override_from(r.change.unwrap_or_default());
        let policies = self.domain.policies.clone();
        let view = match subject {
            Subject::Tenant(t) => {
                p.may_see_tenant(&t).map_err(status::auth)?;
                if r.reset {
                    return Err(Status::invalid_argument(
                        "--reset drops a cluster's override; a tenant's policy is changed field by field",
                    ));
                }
                blocking(move || policies.set_tenant(&t, &change).map_err(status::retention))
                    .await?
            }
            Subject::Cluster(c) => {
                p.may_see_tenant(c.tenant()).map_err(status::auth)?;
                blocking(move || {
                    policies
                        .set_cluster(&c, &change, r.reset)
                        .map_err(status::retention)
                })
                .await?
            }
        };
        Ok(Response::new(info(&view)))
    }
}
