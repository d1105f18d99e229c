//! `walvault verify`: the server re-reads every archived file of the clusters asked for,
//! checks the continuity of every timeline and that every backup's snapshots exist, and
//! reports per cluster. Exits 1 (quietly: the report says why) when anything is wrong.

use serde_json::{json, Value};
use walvault_proto::{pb, ClusterId, TenantId};

use crate::config::ClientConfig;
use crate::connect;
use crate::error::ClientError;
use crate::output::{human_bytes, utc_time};

/// What to verify.
pub enum Scope<'a> {
    /// `--cluster`, else the configuration's, else (for an operator) its tenant's clusters.
    Cluster(Option<&'a ClusterId>),
    Tenant(&'a TenantId),
    /// Every cluster the certificate may see.
    All,
}

/// `snapshot`: with a cluster, also check that snapshot now.
pub async fn run(
    config: &ClientConfig,
    scope: Scope<'_>,
    snapshot: Option<&str>,
    json: bool,
) -> Result<bool, ClientError> {
    let (request, what) = match scope {
        Scope::Cluster(c) => {
            let r = super::cluster_ref(config, c);
            let what = match &r {
                Some(_) => super::describe(&r),
                None => "every cluster you may see".into(),
            };
            (
                pb::VerifyRequest {
                    cluster: r,
                    tenant: String::new(),
                    snapshot: snapshot.unwrap_or_default().to_owned(),
                },
                what,
            )
        }
        Scope::Tenant(t) => (
            pb::VerifyRequest {
                cluster: None,
                tenant: t.to_string(),
                snapshot: String::new(),
            },
            format!("the clusters of tenant {t}"),
        ),
        Scope::All => (
            pb::VerifyRequest {
                cluster: None,
                tenant: String::new(),
                snapshot: String::new(),
            },
            "every cluster you may see".into(),
        ),
    };
    let context = format!("verify {what}");
    let mut stream = pb::admin_client::AdminClient::new(connect::channel(config).await?)
        .verify(request)
        .await
        .map_err(ClientError::server(context.clone()))?
        .into_inner();
    let mut reports = Vec::new();
    while let Some(r) = stream
        .message()
        .await
        .map_err(ClientError::server(context.clone()))?
    {
        if !json {
            print_report(&r);
        }
        reports.push(r);
    }
    let problems: usize = reports.iter().map(|r| r.problems.len()).sum();
    if json {
        crate::outln!(
            "{}",
            Value::Array(reports.iter().map(report_json).collect())
        );
    } else {
        let clusters = match reports.len() {
            1 => "1 cluster".to_owned(),
            n => format!("{n} clusters"),
        };
        match problems {
            0 => crate::outln!("verified {clusters}: no problem found"),
            1 => crate::outln!("verified {clusters}: 1 problem found"),
            n => crate::outln!("verified {clusters}: {n} problems found"),
        }
    }
    Ok(problems == 0)
}

fn cluster_name(r: &pb::ClusterVerification) -> String {
    r.cluster
        .as_ref()
        .map_or_else(String::new, |c| format!("{}/{}", c.tenant, c.cluster))
}

fn print_report(r: &pb::ClusterVerification) {
    crate::outln!(
        "{}: {} files ({}) and {} backups checked in {:.1} s at {}{}: {}",
        cluster_name(r),
        r.files_checked,
        human_bytes(r.bytes_checked),
        r.backups_checked,
        r.duration_ms as f64 / 1000.0,
        utc_time(r.verified_unix),
        if r.catalogued > 0 {
            format!(", {} uncatalogued files catalogued", r.catalogued)
        } else {
            String::new()
        },
        if r.problems.is_empty() {
            "ok".to_owned()
        } else {
            format!("{} problems", r.problems.len())
        }
    );
    for p in &r.problems {
        crate::outln!("  {:<10} {}: {}", p.kind.to_uppercase(), p.name, p.detail);
    }
}

fn report_json(r: &pb::ClusterVerification) -> Value {
    json!({
        "cluster": cluster_name(r),
        "files_checked": r.files_checked,
        "bytes_checked": r.bytes_checked,
        "backups_checked": r.backups_checked,
        "catalogued": r.catalogued,
        "duration_ms": r.duration_ms,
        "verified_unix": r.verified_unix,
        "ok": r.problems.is_empty(),
        "problems": r.problems.iter().map(|p| json!({
            "kind": p.kind,
            "name": p.name,
            "detail": p.detail,
        })).collect::<Vec<_>>(),
    })
}
