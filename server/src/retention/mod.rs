//! Retention (DESIGN §9): policies, the prune planner (pure) and its executor.
//!
//! Policies live in the catalog and, so that `catalog rebuild` finds them, as a property of
//! the tenant's dataset (`walvault:policy`) and of the cluster's (`walvault:policy_override`).

pub mod plan;
pub mod policy;
pub mod prune;

use std::sync::Arc;

use walvault_proto::{ClusterId, TenantId};

use crate::catalog::{Catalog, CatalogError};
use crate::layout::{self, ClusterLayout};
use crate::storage::{Storage, StorageError};
pub use policy::{Policy, PolicyOverride};

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("tenant {0} does not exist")]
    TenantNotFound(TenantId),
    #[error("cluster {0} does not exist")]
    ClusterNotFound(ClusterId),
    #[error("{0}")]
    Invalid(String),
    #[error("a prune of {0} is already running")]
    Busy(ClusterId),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Restore(Box<crate::restore::RestoreError>),
    #[error(transparent)]
    Archive(Box<crate::wal::ArchiveError>),
    #[error(transparent)]
    RollForward(Box<crate::rollforward::RollForwardError>),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Storage {
        context: String,
        #[source]
        source: StorageError,
    },
}

pub(crate) fn storage_err(
    context: impl Into<String>,
) -> impl FnOnce(StorageError) -> RetentionError {
    let context = context.into();
    move |source| RetentionError::Storage { context, source }
}

/// A tenant's or a cluster's policy as shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyView {
    pub tenant: TenantId,
    pub cluster: Option<ClusterId>,
    pub tenant_policy: Policy,
    pub cluster_override: PolicyOverride,
    pub effective: Policy,
    pub quota: Option<u64>,
}

/// Longest window and largest count a policy may name: beyond these it is a typo.
const MAX_WINDOW_DAYS: u32 = 36_600;
const MAX_COUNT: u32 = 100_000;

fn check(o: &PolicyOverride) -> Result<(), RetentionError> {
    if let Some(d) = o.recovery_window_days {
        if d == 0 || d > MAX_WINDOW_DAYS {
            return Err(RetentionError::Invalid(format!(
                "a recovery window of {d} days: give 1 to {MAX_WINDOW_DAYS} days, or none"
            )));
        }
    }
    for (name, v) in [
        ("hourly", o.keep_hourly),
        ("daily", o.keep_daily),
        ("weekly", o.keep_weekly),
        ("monthly", o.keep_monthly),
        ("min-backups", o.min_backups),
    ] {
        if v.is_some_and(|v| v > MAX_COUNT) {
            return Err(RetentionError::Invalid(format!(
                "{name} {}: at most {MAX_COUNT}",
                v.unwrap_or_default()
            )));
        }
    }
    if o.rollforward_minutes
        .is_some_and(|m| m > MAX_CADENCE_MINUTES)
    {
        return Err(RetentionError::Invalid(format!(
            "roll forward every {} minutes: at most {MAX_CADENCE_MINUTES} (a week), or 0 for never by age",
            o.rollforward_minutes.unwrap_or_default()
        )));
    }
    if o.rollforward_mib.is_some_and(|m| m > MAX_CADENCE_MIB) {
        return Err(RetentionError::Invalid(format!(
            "roll forward every {} MiB: at most {MAX_CADENCE_MIB} (1 TiB), or 0 for never by size",
            o.rollforward_mib.unwrap_or_default()
        )));
    }
    Ok(())
}

/// Longest roll-forward cadence a policy may name.
const MAX_CADENCE_MINUTES: u32 = 7 * 24 * 60;
const MAX_CADENCE_MIB: u32 = 1 << 20;

#[derive(Debug, Clone)]
pub struct Policies {
    storage: Arc<dyn Storage>,
    catalog: Catalog,
}

impl Policies {
    pub fn new(storage: Arc<dyn Storage>, catalog: Catalog) -> Self {
        Self { storage, catalog }
    }

    fn tenant_policy(&self, t: &TenantId) -> Result<(Policy, Option<u64>), RetentionError> {
        let record = self
            .catalog
            .tenant(t)?
            .ok_or_else(|| RetentionError::TenantNotFound(t.clone()))?;
        let p = self.catalog.tenant_policy(t)?.unwrap_or_default();
        Ok((p, record.quota))
    }

    fn cluster_override(&self, c: &ClusterId) -> Result<PolicyOverride, RetentionError> {
        if self.catalog.cluster(c)?.is_none() {
            return Err(RetentionError::ClusterNotFound(c.clone()));
        }
        Ok(self.catalog.cluster_policy(c)?.unwrap_or_default())
    }

    /// The policy `cluster` lives by.
    pub fn effective(&self, cluster: &ClusterId) -> Result<Policy, RetentionError> {
        let (base, _) = self.tenant_policy(cluster.tenant())?;
        Ok(self.cluster_override(cluster)?.apply(base))
    }

    pub fn show_tenant(&self, t: &TenantId) -> Result<PolicyView, RetentionError> {
        let (p, quota) = self.tenant_policy(t)?;
        Ok(PolicyView {
            tenant: t.clone(),
            cluster: None,
            tenant_policy: p,
            cluster_override: PolicyOverride::default(),
            effective: p,
            quota,
        })
    }

    pub fn show_cluster(&self, c: &ClusterId) -> Result<PolicyView, RetentionError> {
        let (p, quota) = self.tenant_policy(c.tenant())?;
        let o = self.cluster_override(c)?;
        Ok(PolicyView {
            tenant: c.tenant().clone(),
            cluster: Some(c.clone()),
            tenant_policy: p,
            cluster_override: o,
            effective: o.apply(p),
            quota,
        })
    }

    /// Changes the fields `change` names in a tenant's policy.
    pub fn set_tenant(
        &self,
        t: &TenantId,
        change: &PolicyOverride,
    ) -> Result<PolicyView, RetentionError> {
        check(change)?;
        let (p, _) = self.tenant_policy(t)?;
        let new = change.apply(p);
        let ds = layout::tenant(t).map_err(storage_err(format!("name tenant {t}")))?;
        self.storage
            .set_property(
                &ds,
                layout::tenant_props::POLICY,
                &serde_json::to_string(&new).unwrap_or_default(),
            )
            .map_err(storage_err(format!("record the policy of tenant {t}")))?;
        self.catalog.put_tenant_policy(t, &new)?;
        tracing::info!(tenant = %t, policy = ?new, "policy set");
        self.show_tenant(t)
    }

    /// Adds `change` to a cluster's override (after dropping it, with `reset`).
    pub fn set_cluster(
        &self,
        c: &ClusterId,
        change: &PolicyOverride,
        reset: bool,
    ) -> Result<PolicyView, RetentionError> {
        check(change)?;
        let old = if reset {
            PolicyOverride::default()
        } else {
            self.cluster_override(c)?
        };
        self.cluster_override(c)?;
        let new = merge(old, change);
        let l = ClusterLayout::of(c).map_err(storage_err(format!("name cluster {c}")))?;
        let json = serde_json::to_string(&new).unwrap_or_default();
        self.storage
            .set_property(&l.cluster, layout::cluster_props::POLICY_OVERRIDE, &json)
            .map_err(storage_err(format!("record the policy of cluster {c}")))?;
        if new.is_empty() {
            self.catalog.remove_cluster_policy(c)?;
        } else {
            self.catalog.put_cluster_policy(c, &new)?;
        }
        tracing::info!(cluster = %c, policy = ?new, "policy override set");
        self.show_cluster(c)
    }
}

/// `change`'s fields over `old`'s.
fn merge(old: PolicyOverride, change: &PolicyOverride) -> PolicyOverride {
    PolicyOverride {
        // Naming a window lifts a cluster's "no window", and "no window" drops its days.
        recovery_window_days: if change.no_recovery_window {
            None
        } else {
            change.recovery_window_days.or(old.recovery_window_days)
        },
        no_recovery_window: change.no_recovery_window
            || (old.no_recovery_window && change.recovery_window_days.is_none()),
        keep_hourly: change.keep_hourly.or(old.keep_hourly),
        keep_daily: change.keep_daily.or(old.keep_daily),
        keep_weekly: change.keep_weekly.or(old.keep_weekly),
        keep_monthly: change.keep_monthly.or(old.keep_monthly),
        min_backups: change.min_backups.or(old.min_backups),
        rollforward_minutes: change.rollforward_minutes.or(old.rollforward_minutes),
        rollforward_mib: change.rollforward_mib.or(old.rollforward_mib),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::dir::DirStorage;
    use crate::tenancy::Tenancy;

    fn setup() -> (tempfile::TempDir, Policies) {
        let d = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(DirStorage::open(&d.path().join("s")).unwrap());
        let catalog = Catalog::open(&d.path().join("c")).unwrap();
        let tenancy = Tenancy::new(storage.clone(), catalog.clone());
        tenancy
            .create_tenant(&"acme".parse().unwrap(), None, false)
            .unwrap();
        tenancy.create_cluster(&"acme/db".parse().unwrap()).unwrap();
        (d, Policies::new(storage, catalog))
    }

    #[test]
    fn tenant_policies_and_cluster_overrides() {
        let (_d, p) = setup();
        let t: TenantId = "acme".parse().unwrap();
        let c: ClusterId = "acme/db".parse().unwrap();
        assert_eq!(p.show_tenant(&t).unwrap().tenant_policy, Policy::default());
        p.set_tenant(
            &t,
            &PolicyOverride {
                keep_daily: Some(7),
                recovery_window_days: Some(3),
                ..Default::default()
            },
        )
        .unwrap();
        let v = p
            .set_cluster(
                &c,
                &PolicyOverride {
                    min_backups: Some(4),
                    ..Default::default()
                },
                false,
            )
            .unwrap();
        assert_eq!(v.effective.keep_daily, 7);
        assert_eq!(v.effective.min_backups, 4);
        assert_eq!(v.effective.recovery_window_days, Some(3));
        // A later change adds to the override; reset drops it.
        let v = p
            .set_cluster(
                &c,
                &PolicyOverride {
                    no_recovery_window: true,
                    ..Default::default()
                },
                false,
            )
            .unwrap();
        assert_eq!(v.effective.recovery_window_days, None);
        assert_eq!(v.effective.min_backups, 4);
        let v = p.set_cluster(&c, &PolicyOverride::default(), true).unwrap();
        assert!(v.cluster_override.is_empty());
        assert_eq!(p.effective(&c).unwrap().min_backups, 2);
    }

    #[test]
    fn refuses_nonsense_and_unknown_names() {
        let (_d, p) = setup();
        let t: TenantId = "acme".parse().unwrap();
        let e = p
            .set_tenant(
                &t,
                &PolicyOverride {
                    recovery_window_days: Some(0),
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert!(e.to_string().contains("recovery window of 0 days"), "{e}");
        assert!(matches!(
            p.show_tenant(&"nobody".parse().unwrap()),
            Err(RetentionError::TenantNotFound(_))
        ));
        assert!(matches!(
            p.show_cluster(&"acme/none".parse().unwrap()),
            Err(RetentionError::ClusterNotFound(_))
        ));
    }
}
