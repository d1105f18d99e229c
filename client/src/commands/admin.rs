//! Administration: tenants, clusters, and who the server thinks we are.

use walvault_proto::{pb, ClusterId, TenantId};

use crate::config::ClientConfig;
use crate::connect;
use crate::error::ClientError;
use crate::output::{human_bytes, utc_time};

async fn client(
    config: &ClientConfig,
) -> Result<pb::admin_client::AdminClient<tonic::transport::Channel>, ClientError> {
    Ok(pb::admin_client::AdminClient::new(
        connect::channel(config).await?,
    ))
}

fn quota_text(q: u64) -> String {
    if q == 0 {
        "none".into()
    } else {
        human_bytes(q)
    }
}

fn print_tenants(tenants: &[pb::Tenant], json: bool) {
    if json {
        let rows: Vec<_> = tenants
            .iter()
            .map(|t| {
                serde_json::json!({
                    "name": t.name,
                    "quota_bytes": (t.quota_bytes > 0).then_some(t.quota_bytes),
                    "dedup": t.dedup,
                    "used_bytes": t.used_bytes,
                })
            })
            .collect();
        crate::outln!("{}", serde_json::Value::Array(rows));
        return;
    }
    crate::outln!(
        "{:<24} {:>12} {:>12} {:>6}",
        "TENANT",
        "USED",
        "QUOTA",
        "DEDUP"
    );
    for t in tenants {
        crate::outln!(
            "{:<24} {:>12} {:>12} {:>6}",
            t.name,
            human_bytes(t.used_bytes),
            quota_text(t.quota_bytes),
            if t.dedup { "on" } else { "off" }
        );
    }
}

pub async fn whoami(config: &ClientConfig) -> Result<(), ClientError> {
    let r = client(config)
        .await?
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .map_err(ClientError::server("ask who we are"))?;
    crate::outln!("{}", r.into_inner().principal);
    Ok(())
}

pub async fn tenant_create(
    config: &ClientConfig,
    name: &TenantId,
    quota: Option<u64>,
    dedup: bool,
) -> Result<(), ClientError> {
    let t = client(config)
        .await?
        .create_tenant(pb::CreateTenantRequest {
            name: name.to_string(),
            quota_bytes: quota.unwrap_or(0),
            dedup,
        })
        .await
        .map_err(ClientError::server(format!("create tenant {name}")))?
        .into_inner();
    crate::outln!(
        "created tenant {} (quota {}, dedup {})",
        t.name,
        quota_text(t.quota_bytes),
        if t.dedup { "on" } else { "off" }
    );
    Ok(())
}

pub async fn tenant_set_quota(
    config: &ClientConfig,
    name: &TenantId,
    quota: Option<u64>,
) -> Result<(), ClientError> {
    let t = client(config)
        .await?
        .update_tenant(pb::UpdateTenantRequest {
            name: name.to_string(),
            quota_bytes: Some(quota.unwrap_or(0)),
        })
        .await
        .map_err(ClientError::server(format!(
            "set the quota of tenant {name}"
        )))?
        .into_inner();
    crate::outln!(
        "tenant {}: quota {}, {} used",
        t.name,
        quota_text(t.quota_bytes),
        human_bytes(t.used_bytes)
    );
    Ok(())
}

pub async fn tenant_list(config: &ClientConfig, json: bool) -> Result<(), ClientError> {
    let r = client(config)
        .await?
        .list_tenants(pb::ListTenantsRequest {})
        .await
        .map_err(ClientError::server("list tenants"))?;
    print_tenants(&r.into_inner().tenants, json);
    Ok(())
}

pub async fn cluster_create(config: &ClientConfig, id: &ClusterId) -> Result<(), ClientError> {
    client(config)
        .await?
        .create_cluster(pb::CreateClusterRequest {
            tenant: id.tenant().to_string(),
            name: id.name().to_owned(),
        })
        .await
        .map_err(ClientError::server(format!("create cluster {id}")))?;
    crate::outln!("created cluster {id}");
    Ok(())
}

pub async fn cluster_list(
    config: &ClientConfig,
    tenant: Option<&TenantId>,
    json: bool,
) -> Result<(), ClientError> {
    let clusters = client(config)
        .await?
        .list_clusters(pb::ListClustersRequest {
            tenant: tenant.map(|t| t.to_string()).unwrap_or_default(),
        })
        .await
        .map_err(ClientError::server("list clusters"))?
        .into_inner()
        .clusters;
    if json {
        let rows: Vec<_> = clusters
            .iter()
            .map(|c| {
                serde_json::json!({
                    "cluster": format!("{}/{}", c.tenant, c.name),
                    "system_identifier": (c.system_identifier > 0).then(|| c.system_identifier.to_string()),
                    "wal_segment_size": (c.wal_segment_size > 0).then_some(c.wal_segment_size),
                    "pg_major": (c.pg_major > 0).then_some(c.pg_major),
                    "wal_files": c.wal_files,
                    "used_bytes": c.used_bytes,
                    "wal_holes": c.wal_holes,
                    "damaged_files": c.damaged_files,
                    "verified_unix": (c.verified_unix > 0).then_some(c.verified_unix),
                    "verify_problems": c.verify_problems,
                })
            })
            .collect();
        crate::outln!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    crate::outln!(
        "{:<36} {:>20} {:>4} {:>10} {:>10} {:>6} {:>8}  {:<23} {:>8}",
        "CLUSTER",
        "SYSTEM ID",
        "PG",
        "WAL FILES",
        "STORED",
        "HOLES",
        "DAMAGED",
        "VERIFIED",
        "PROBLEMS"
    );
    for c in &clusters {
        let sysid = if c.system_identifier > 0 {
            c.system_identifier.to_string()
        } else {
            "-".into()
        };
        let pg = if c.pg_major > 0 {
            c.pg_major.to_string()
        } else {
            "-".into()
        };
        let verified = if c.verified_unix > 0 {
            utc_time(c.verified_unix)
        } else {
            "never".into()
        };
        crate::outln!(
            "{:<36} {:>20} {:>4} {:>10} {:>10} {:>6} {:>8}  {:<23} {:>8}",
            format!("{}/{}", c.tenant, c.name),
            sysid,
            pg,
            c.wal_files,
            human_bytes(c.used_bytes),
            c.wal_holes,
            c.damaged_files,
            verified,
            c.verify_problems,
        );
    }
    Ok(())
}
