//! The Admin service: who am I, tenants and clusters.

use std::pin::Pin;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use walvault_proto::pb;
use walvault_proto::{ClusterId, TenantId};

use super::{blocking, cluster_ref, principal, status, Domain};
use crate::auth::Principal;
use crate::tenancy::{ClusterView, TenantView};
use crate::verify::{Health, Report};

type VerifyStream = Pin<Box<dyn Stream<Item = Result<pb::ClusterVerification, Status>> + Send>>;

#[derive(Debug)]
pub struct AdminApi {
    domain: Domain,
}

impl AdminApi {
    pub fn new(domain: Domain) -> Self {
        Self { domain }
    }
}

fn tenant_id(s: &str) -> Result<TenantId, Status> {
    s.parse()
        .map_err(|e| Status::invalid_argument(format!("{e}")))
}

/// 0 on the wire means "no quota".
fn quota(bytes: u64) -> Option<u64> {
    (bytes > 0).then_some(bytes)
}

fn tenant_pb(t: TenantView) -> pb::Tenant {
    pb::Tenant {
        name: t.record.name.to_string(),
        quota_bytes: t.record.quota.unwrap_or(0),
        dedup: t.record.dedup,
        used_bytes: t.space.used,
    }
}

fn cluster_pb(c: ClusterView, h: Health) -> pb::Cluster {
    let b = c.record.binding;
    pb::Cluster {
        tenant: c.record.id.tenant().to_string(),
        name: c.record.id.name().to_owned(),
        system_identifier: b.map_or(0, |b| b.system_identifier),
        wal_segment_size: b.map_or(0, |b| b.wal_segment_size),
        pg_major: b.map_or(0, |b| b.pg_major),
        wal_files: c.wal_files,
        used_bytes: c.used,
        wal_holes: h.holes as u32,
        damaged_files: h.damaged as u32,
        verified_unix: h.verified.map_or(0, |(t, _)| t),
        verify_problems: h.verified.map_or(0, |(_, n)| n as u32),
    }
}

fn verification_pb(r: &Report) -> pb::ClusterVerification {
    pb::ClusterVerification {
        cluster: Some(pb::ClusterRef {
            tenant: r.cluster.tenant().to_string(),
            cluster: r.cluster.name().to_owned(),
        }),
        files_checked: r.files_checked,
        bytes_checked: r.bytes_checked,
        backups_checked: r.backups_checked,
        problems: r
            .problems
            .iter()
            .map(|p| pb::VerifyProblem {
                kind: p.kind.as_str().into(),
                name: p.name.clone(),
                detail: p.detail.clone(),
            })
            .collect(),
        catalogued: r.catalogued,
        duration_ms: r.duration_ms,
        verified_unix: r.verified_unix,
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminApi {
    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let who = principal(&request)?;
        Ok(Response::new(pb::WhoAmIResponse {
            principal: who.to_string(),
        }))
    }

    async fn create_tenant(
        &self,
        request: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        principal(&request)?
            .may_administer()
            .map_err(status::auth)?;
        let req = request.into_inner();
        let name = tenant_id(&req.name)?;
        let tenancy = self.domain.tenancy.clone();
        let view = blocking(move || {
            tenancy
                .create_tenant(&name, quota(req.quota_bytes), req.dedup)
                .map_err(status::tenancy)?;
            tenancy.tenant(&name).map_err(status::tenancy)
        })
        .await?;
        Ok(Response::new(tenant_pb(view)))
    }

    async fn update_tenant(
        &self,
        request: Request<pb::UpdateTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        principal(&request)?
            .may_administer()
            .map_err(status::auth)?;
        let req = request.into_inner();
        let name = tenant_id(&req.name)?;
        let tenancy = self.domain.tenancy.clone();
        let view = blocking(move || {
            if let Some(q) = req.quota_bytes {
                tenancy
                    .set_quota(&name, quota(q))
                    .map_err(status::tenancy)?;
            }
            tenancy.tenant(&name).map_err(status::tenancy)
        })
        .await?;
        Ok(Response::new(tenant_pb(view)))
    }

    async fn list_tenants(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        let who = principal(&request)?;
        let tenancy = self.domain.tenancy.clone();
        let views = blocking(move || match &who {
            Principal::Admin => tenancy.tenants().map_err(status::tenancy),
            Principal::Operator(t) => Ok(vec![tenancy.tenant(t).map_err(status::tenancy)?]),
            Principal::Agent(_) => who
                .may_administer()
                .map(|_| Vec::new())
                .map_err(status::auth),
        })
        .await?;
        Ok(Response::new(pb::ListTenantsResponse {
            tenants: views.into_iter().map(tenant_pb).collect(),
        }))
    }

    async fn create_cluster(
        &self,
        request: Request<pb::CreateClusterRequest>,
    ) -> Result<Response<pb::Cluster>, Status> {
        principal(&request)?
            .may_administer()
            .map_err(status::auth)?;
        let req = request.into_inner();
        let id = ClusterId::new(tenant_id(&req.tenant)?, &req.name)
            .map_err(|e| Status::invalid_argument(format!("{e}")))?;
        let tenancy = self.domain.tenancy.clone();
        let record = blocking(move || tenancy.create_cluster(&id).map_err(status::tenancy)).await?;
        Ok(Response::new(cluster_pb(
            ClusterView {
                record,
                wal_files: 0,
                used: 0,
            },
            Health::default(),
        )))
    }

    async fn list_clusters(
        &self,
        request: Request<pb::ListClustersRequest>,
    ) -> Result<Response<pb::ListClustersResponse>, Status> {
        let who = principal(&request)?;
        let req = request.into_inner();
        let tenant = if req.tenant.is_empty() {
            match &who {
                Principal::Admin => None,
                Principal::Operator(t) => Some(t.clone()),
                Principal::Agent(c) => Some(c.tenant().clone()),
            }
        } else {
            Some(tenant_id(&req.tenant)?)
        };
        let tenancy = self.domain.tenancy.clone();
        let verifier = self.domain.verifier.clone();
        let views = blocking(move || {
            if let Some(t) = &tenant {
                if let Principal::Agent(_) = who {
                    // An agent sees its own cluster only.
                } else {
                    who.may_see_tenant(t).map_err(status::auth)?;
                }
            }
            let mut all = tenancy.clusters(tenant.as_ref()).map_err(status::tenancy)?;
            if let Principal::Agent(own) = &who {
                all.retain(|c| &c.record.id == own);
            }
            all.into_iter()
                .map(|c| {
                    let h = verifier.health(&c.record.id).map_err(status::verify)?;
                    Ok((c, h))
                })
                .collect::<Result<Vec<_>, Status>>()
        })
        .await?;
        Ok(Response::new(pb::ListClustersResponse {
            clusters: views.into_iter().map(|(c, h)| cluster_pb(c, h)).collect(),
        }))
    }

    type VerifyStream = VerifyStream;

    async fn verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<Self::VerifyStream>, Status> {
        let who = principal(&request)?;
        let req = request.into_inner();
        let named = cluster_ref(req.cluster)?;
        let snapshot = (!req.snapshot.is_empty()).then_some(req.snapshot);
        if snapshot.is_some() && named.is_none() {
            return Err(Status::invalid_argument(
                "--snapshot needs the cluster it belongs to (--cluster)",
            ));
        }
        let tenant = (!req.tenant.is_empty())
            .then(|| tenant_id(&req.tenant))
            .transpose()?;
        let tenancy = self.domain.tenancy.clone();
        let clusters = blocking(move || {
            let list: Vec<ClusterId> = match (named, tenant, &who) {
                (Some(_), Some(_), _) => {
                    return Err(Status::invalid_argument(
                        "give a cluster or a tenant to verify, not both",
                    ))
                }
                (Some(c), None, _) => vec![c],
                (None, Some(t), _) => {
                    who.may_see_tenant(&t).map_err(status::auth)?;
                    tenancy.tenant(&t).map_err(status::tenancy)?;
                    ids(&tenancy, Some(&t))?
                }
                (None, None, Principal::Operator(t)) => ids(&tenancy, Some(t))?,
                (None, None, _) => {
                    who.may_administer().map_err(status::auth)?;
                    ids(&tenancy, None)?
                }
            };
            for c in &list {
                who.may_verify(c).map_err(status::auth)?;
            }
            Ok(list)
        })
        .await?;
        let (tx, rx) = mpsc::channel(4);
        let verifier = self.domain.verifier.clone();
        tokio::task::spawn_blocking(move || {
            for c in clusters {
                // The caller went away: stop after the cluster at hand.
                if tx.is_closed() {
                    return;
                }
                if let Some(id) = &snapshot {
                    if let Err(e) = verifier.check_snapshot(&c, id) {
                        let _ = tx.blocking_send(Err(status::verify(e)));
                        return;
                    }
                }
                let msg = verifier
                    .verify(&c)
                    .map(|r| verification_pb(&r))
                    .map_err(status::verify);
                if tx.blocking_send(msg).is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn ids(
    tenancy: &crate::tenancy::Tenancy,
    tenant: Option<&TenantId>,
) -> Result<Vec<ClusterId>, Status> {
    Ok(tenancy
        .clusters(tenant)
        .map_err(status::tenancy)?
        .into_iter()
        .map(|c| c.record.id)
        .collect())
}
