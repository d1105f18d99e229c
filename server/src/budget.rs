//! How much work runs at once (DESIGN §10): every push, fetch, backup and restore takes a
//! permit for its cluster, its tenant and the server before it starts, and gives it back when
//! it ends however it ends (a permit is released on drop). What would pass a limit is refused
//! at once with [`BudgetError`], which names the limit and its setting and says to retry: one
//! tenant, or one agent certificate, can never take what the others need.
//!
//! Bounding how many run also bounds what they hold: memory (a push holds one chunk and a
//! zstd window, a fetch one compressed file), blocking threads (a backup or a restore holds
//! at most two), clones and leases.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use walvault_proto::{ClusterId, TenantId};

use crate::config::Limits;

/// A kind of work the budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Work {
    Push,
    Fetch,
    Backup,
    Restore,
}

impl Work {
    fn noun(self) -> &'static str {
        match self {
            Work::Push => "pushes",
            Work::Fetch => "fetches",
            Work::Backup => "backups",
            Work::Restore => "restores",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Scope {
    Cluster(ClusterId),
    Tenant(TenantId),
    Server,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Cluster(c) => write!(f, "cluster {c}"),
            Scope::Tenant(t) => write!(f, "tenant {t}"),
            Scope::Server => f.write_str("the server"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{limit} {noun} of {scope} are running already (limits.{setting} = {limit}); retry later")]
pub struct BudgetError {
    pub noun: &'static str,
    pub scope: String,
    pub limit: u32,
    pub setting: String,
}

type Counts = Arc<Mutex<HashMap<(Work, Scope), u32>>>;

#[derive(Debug, Clone)]
pub struct Budget {
    limits: Limits,
    counts: Counts,
}

/// Held while the work runs.
#[derive(Debug)]
pub struct Permit {
    counts: Counts,
    keys: Vec<(Work, Scope)>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        for k in &self.keys {
            if let Some(n) = counts.get_mut(k) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.remove(k);
                }
            }
        }
    }
}

impl Budget {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            counts: Arc::default(),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn caps(&self, work: Work) -> (u32, u32, u32) {
        match work {
            Work::Push => self.limits.pushes,
            Work::Fetch => self.limits.fetches,
            Work::Backup => self.limits.backups,
            Work::Restore => self.limits.restores,
        }
    }

    /// A permit for one `work` of `cluster`, or the limit it would pass.
    pub fn take(&self, work: Work, cluster: &ClusterId) -> Result<Permit, BudgetError> {
        let (per_cluster, per_tenant, total) = self.caps(work);
        let noun = work.noun();
        let wanted = [
            (
                Scope::Cluster(cluster.clone()),
                per_cluster,
                format!("{noun}_per_cluster"),
            ),
            (
                Scope::Tenant(cluster.tenant().clone()),
                per_tenant,
                format!("{noun}_per_tenant"),
            ),
            (Scope::Server, total, noun.to_owned()),
        ];
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        for (scope, limit, setting) in &wanted {
            let now = counts.get(&(work, scope.clone())).copied().unwrap_or(0);
            if now >= *limit {
                return Err(BudgetError {
                    noun,
                    scope: scope.to_string(),
                    limit: *limit,
                    setting: setting.clone(),
                });
            }
        }
        let keys: Vec<(Work, Scope)> = wanted.into_iter().map(|(s, _, _)| (work, s)).collect();
        for k in &keys {
            *counts.entry(k.clone()).or_insert(0) += 1;
        }
        Ok(Permit {
            counts: self.counts.clone(),
            keys,
        })
    }

    /// How many of `work` run now on the server.
    pub fn running(&self, work: Work) -> u32 {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(work, Scope::Server))
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> ClusterId {
        s.parse().unwrap()
    }

    #[test]
    fn each_scope_is_capped_and_permits_come_back() {
        let b = Budget::new(Limits {
            pushes: (2, 3, 4),
            ..Limits::default()
        });
        let a1 = b.take(Work::Push, &c("acme/db1")).unwrap();
        let _a2 = b.take(Work::Push, &c("acme/db1")).unwrap();
        let e = b.take(Work::Push, &c("acme/db1")).unwrap_err();
        assert_eq!(e.scope, "cluster acme/db1");
        assert_eq!(e.setting, "pushes_per_cluster");
        assert!(e.to_string().contains("retry later"), "{e}");
        // The tenant's third.
        let _a3 = b.take(Work::Push, &c("acme/db2")).unwrap();
        let e = b.take(Work::Push, &c("acme/db3")).unwrap_err();
        assert_eq!(e.scope, "tenant acme");
        // The server's fourth, then none for anyone.
        let _g = b.take(Work::Push, &c("globex/db1")).unwrap();
        let e = b.take(Work::Push, &c("initech/db1")).unwrap_err();
        assert_eq!(e.scope, "the server");
        // Other work is counted apart.
        let _f = b.take(Work::Fetch, &c("initech/db1")).unwrap();
        assert_eq!(b.running(Work::Push), 4);
        drop(a1);
        assert_eq!(b.running(Work::Push), 3);
        assert!(b.take(Work::Push, &c("initech/db1")).is_ok());
    }
}
