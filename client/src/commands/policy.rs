//! `walvault policy show|set`: a tenant's retention policy, or a cluster's override.

use walvault_proto::{pb, ClusterId, TenantId};

use crate::config::ClientConfig;
use crate::connect;
use crate::error::ClientError;
use crate::output::human_bytes;

/// The change `policy set` asks for; `window` is a number of days or `none`.
pub fn change(
    window: Option<&str>,
    counts: [Option<u32>; 5],
) -> Result<pb::PolicyOverride, ClientError> {
    let mut o = pb::PolicyOverride::default();
    match window {
        None => {}
        Some("none") => o.no_recovery_window = true,
        Some(d) => {
            let days = d.parse::<u32>().ok().filter(|d| *d > 0).ok_or_else(|| {
                ClientError::Usage(format!(
                    "--window {d:?}: give a number of days (1 or more) or none"
                ))
            })?;
            o.recovery_window_days = Some(days);
        }
    }
    [
        o.keep_hourly,
        o.keep_daily,
        o.keep_weekly,
        o.keep_monthly,
        o.min_backups,
    ] = counts;
    Ok(o)
}

/// The tenant or the cluster a command means.
fn subject(
    config: &ClientConfig,
    cluster: Option<&ClusterId>,
    tenant: Option<&TenantId>,
) -> Result<(String, Option<pb::ClusterRef>, String), ClientError> {
    match (tenant, super::cluster_ref(config, cluster)) {
        (Some(t), _) if cluster.is_none() => Ok((t.to_string(), None, format!("tenant {t}"))),
        (None, Some(c)) => {
            let name = format!("cluster {}/{}", c.tenant, c.cluster);
            Ok((String::new(), Some(c), name))
        }
        (Some(_), _) => Err(ClientError::Usage(
            "give --tenant or --cluster, not both".into(),
        )),
        (None, None) => Err(ClientError::Usage(
            "name the policy: --tenant TENANT or --cluster TENANT/CLUSTER (no cluster in the configuration)"
                .into(),
        )),
    }
}

async fn client(
    config: &ClientConfig,
) -> Result<pb::retention_client::RetentionClient<tonic::transport::Channel>, ClientError> {
    Ok(pb::retention_client::RetentionClient::new(
        connect::channel(config).await?,
    ))
}

pub async fn show(
    config: &ClientConfig,
    cluster: Option<&ClusterId>,
    tenant: Option<&TenantId>,
    json: bool,
) -> Result<(), ClientError> {
    let (tenant, cluster, name) = subject(config, cluster, tenant)?;
    let info = client(config)
        .await?
        .show_policy(pb::ShowPolicyRequest { tenant, cluster })
        .await
        .map_err(ClientError::server(format!("show the policy of {name}")))?
        .into_inner();
    print(&info, json);
    Ok(())
}

pub async fn set(
    config: &ClientConfig,
    cluster: Option<&ClusterId>,
    tenant: Option<&TenantId>,
    change: pb::PolicyOverride,
    reset: bool,
    json: bool,
) -> Result<(), ClientError> {
    let (tenant, cluster, name) = subject(config, cluster, tenant)?;
    let info = client(config)
        .await?
        .set_policy(pb::SetPolicyRequest {
            tenant,
            cluster,
            change: Some(change),
            reset,
        })
        .await
        .map_err(ClientError::server(format!("set the policy of {name}")))?
        .into_inner();
    print(&info, json);
    Ok(())
}

pub async fn prune(
    config: &ClientConfig,
    cluster: Option<&ClusterId>,
    dry_run: bool,
    json: bool,
) -> Result<(), ClientError> {
    let cluster = super::cluster_ref(config, cluster);
    let name = super::describe(&cluster);
    let r = client(config)
        .await?
        .prune(pb::PruneRequest { cluster, dry_run })
        .await
        .map_err(ClientError::server(format!("prune {name}")))?
        .into_inner();
    if json {
        let decisions: Vec<_> = r
            .decisions
            .iter()
            .map(|d| {
                serde_json::json!({
                    "kind": d.kind, "name": d.name, "keep": d.keep, "reasons": d.reasons,
                })
            })
            .collect();
        let v = serde_json::json!({
            "executed": r.executed,
            "backups_dropped": r.backups_dropped,
            "wal_dropped": r.wal_dropped,
            "resumed": r.resumed,
            "skipped": r.skipped,
            "policy": policy_json(&r.policy),
            "decisions": decisions,
        });
        crate::outln!("{v}");
        return Ok(());
    }
    crate::outln!("{:<7} {:<40} {:<5} WHY", "KIND", "NAME", "");
    for d in &r.decisions {
        crate::outln!(
            "{:<7} {:<40} {:<5} {}",
            d.kind,
            d.name,
            if d.keep { "keep" } else { "DROP" },
            d.reasons.join("; ")
        );
    }
    let drops = r.decisions.iter().filter(|d| !d.keep).count();
    if r.executed {
        crate::outln!(
            "pruned {name}: {} backups and {} WAL files destroyed",
            r.backups_dropped,
            r.wal_dropped
        );
    } else {
        crate::outln!("dry run for {name}: {drops} items would be destroyed");
    }
    if r.resumed > 0 {
        crate::outln!("finished an interrupted prune first ({} items)", r.resumed);
    }
    for s in &r.skipped {
        crate::outln!("kept for now: {s}");
    }
    Ok(())
}

fn policy_json(p: &Option<pb::Policy>) -> serde_json::Value {
    let p = p.unwrap_or_default();
    serde_json::json!({
        "recovery_window_days": p.recovery_window_days,
        "keep_hourly": p.keep_hourly,
        "keep_daily": p.keep_daily,
        "keep_weekly": p.keep_weekly,
        "keep_monthly": p.keep_monthly,
        "min_backups": p.min_backups,
        "rollforward_minutes": p.rollforward_minutes,
        "rollforward_mib": p.rollforward_mib,
    })
}

fn override_json(o: &Option<pb::PolicyOverride>) -> serde_json::Value {
    let o = o.unwrap_or_default();
    serde_json::json!({
        "recovery_window_days": o.recovery_window_days,
        "no_recovery_window": o.no_recovery_window,
        "keep_hourly": o.keep_hourly,
        "keep_daily": o.keep_daily,
        "keep_weekly": o.keep_weekly,
        "keep_monthly": o.keep_monthly,
        "min_backups": o.min_backups,
        "rollforward_minutes": o.rollforward_minutes,
        "rollforward_mib": o.rollforward_mib,
    })
}

fn window_text(days: Option<u32>) -> String {
    days.map_or("none".into(), |d| format!("{d} days"))
}

fn print(info: &pb::PolicyInfo, json: bool) {
    let cluster = info
        .cluster
        .as_ref()
        .map(|c| format!("{}/{}", c.tenant, c.cluster));
    if json {
        let v = serde_json::json!({
            "tenant": info.tenant,
            "cluster": cluster,
            "tenant_policy": policy_json(&info.tenant_policy),
            "cluster_override": cluster.as_ref().map(|_| override_json(&info.cluster_override)),
            "effective": policy_json(&info.effective),
            "quota_bytes": (info.quota_bytes > 0).then_some(info.quota_bytes),
        });
        crate::outln!("{v}");
        return;
    }
    let e = info.effective.unwrap_or_default();
    let o = info.cluster_override.unwrap_or_default();
    let mark = |set: bool| {
        if cluster.is_some() && set {
            " (cluster)"
        } else {
            ""
        }
    };
    match &cluster {
        Some(c) => crate::outln!("policy of cluster {c} (tenant {}):", info.tenant),
        None => crate::outln!("policy of tenant {}:", info.tenant),
    }
    crate::outln!(
        "  recovery window  {}{}",
        window_text(e.recovery_window_days),
        mark(o.recovery_window_days.is_some() || o.no_recovery_window)
    );
    for (name, v, set) in [
        ("hourly", e.keep_hourly, o.keep_hourly.is_some()),
        ("daily", e.keep_daily, o.keep_daily.is_some()),
        ("weekly", e.keep_weekly, o.keep_weekly.is_some()),
        ("monthly", e.keep_monthly, o.keep_monthly.is_some()),
        ("min backups", e.min_backups, o.min_backups.is_some()),
    ] {
        crate::outln!("  {name:<16} {v}{}", mark(set));
    }
    let cadence = |v: Option<u32>, unit: &str| match v {
        None => "server default".to_owned(),
        Some(0) => "never".to_owned(),
        Some(n) => format!("every {n} {unit}"),
    };
    crate::outln!(
        "  roll forward     by age: {}; by WAL: {}{}",
        cadence(e.rollforward_minutes, "min with commits"),
        cadence(e.rollforward_mib, "MiB"),
        mark(o.rollforward_minutes.is_some() || o.rollforward_mib.is_some())
    );
    let quota = if info.quota_bytes == 0 {
        "none".into()
    } else {
        human_bytes(info.quota_bytes)
    };
    crate::outln!("  quota (tenant)   {quota}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_days_or_none() {
        let c = change(Some("7"), [None, Some(24), None, None, Some(3)]).unwrap();
        assert_eq!(c.recovery_window_days, Some(7));
        assert_eq!(c.keep_daily, Some(24));
        assert_eq!(c.min_backups, Some(3));
        assert!(change(Some("none"), [None; 5]).unwrap().no_recovery_window);
        for bad in ["0", "-1", "week"] {
            let e = change(Some(bad), [None; 5]).unwrap_err().to_string();
            assert!(e.contains("--window"), "{e}");
        }
    }
}
