//! Identities and permissions (DESIGN §10).
//!
//! A principal is read from the client certificate only: a `walvault://…` URI in its subject
//! alternative names, put there by [`pki`] when the certificate was issued by our CA (the TLS
//! layer has already checked the chain). Request fields never widen what a principal may do:
//! they only name which of its own resources it means.

pub mod pki;

use std::fmt;

use walvault_proto::{ClusterId, TenantId};

/// URI scheme of identities in certificates.
const SCHEME: &str = "walvault://";

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The database host of one cluster: pushes and fetches that cluster's WAL.
    Agent(ClusterId),
    /// The backup team of one tenant: reads and restores that tenant's clusters.
    Operator(TenantId),
    /// Everything, including tenants and clusters.
    Admin,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no client certificate was presented")]
    NoCertificate,
    #[error("the client certificate could not be read: {0}")]
    BadCertificate(String),
    #[error("the client certificate carries no walvault identity")]
    NoIdentity,
    #[error("the client certificate carries an invalid walvault identity {uri:?}: {reason}")]
    BadIdentity { uri: String, reason: String },
    #[error("{principal} may not {action}")]
    Forbidden { principal: String, action: String },
}

impl Principal {
    /// The identity URI written into a certificate.
    pub fn uri(&self) -> String {
        match self {
            Principal::Agent(c) => format!("{SCHEME}agent/{c}"),
            Principal::Operator(t) => format!("{SCHEME}operator/{t}"),
            Principal::Admin => format!("{SCHEME}admin"),
        }
    }

    /// Parses an identity URI; `Ok(None)` for URIs that are not ours.
    pub fn from_uri(uri: &str) -> Result<Option<Self>, AuthError> {
        let Some(rest) = uri.strip_prefix(SCHEME) else {
            return Ok(None);
        };
        let bad = |reason: String| AuthError::BadIdentity {
            uri: uri.to_owned(),
            reason,
        };
        let principal = if rest == "admin" {
            Principal::Admin
        } else if let Some(c) = rest.strip_prefix("agent/") {
            Principal::Agent(c.parse().map_err(|e| bad(format!("{e}")))?)
        } else if let Some(t) = rest.strip_prefix("operator/") {
            Principal::Operator(t.parse().map_err(|e| bad(format!("{e}")))?)
        } else {
            return Err(bad("unknown role".into()));
        };
        Ok(Some(principal))
    }

    /// Reads the principal from a DER certificate (already verified by TLS).
    pub fn from_certificate(der: &[u8]) -> Result<Self, AuthError> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| AuthError::BadCertificate(e.to_string()))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| AuthError::BadCertificate(e.to_string()))?;
        let mut found = None;
        for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
            if let GeneralName::URI(uri) = name {
                if let Some(p) = Self::from_uri(uri)? {
                    if found.is_some() {
                        return Err(AuthError::BadIdentity {
                            uri: (*uri).to_owned(),
                            reason: "more than one walvault identity".into(),
                        });
                    }
                    found = Some(p);
                }
            }
        }
        found.ok_or(AuthError::NoIdentity)
    }

    fn forbidden(&self, action: impl Into<String>) -> AuthError {
        AuthError::Forbidden {
            principal: self.to_string(),
            action: action.into(),
        }
    }

    /// Sending a base backup: only the cluster's own agent, like WAL.
    pub fn may_back_up(&self, cluster: &ClusterId) -> Result<(), AuthError> {
        match self {
            Principal::Agent(c) if c == cluster => Ok(()),
            _ => Err(self.forbidden(format!("send a base backup of cluster {cluster}"))),
        }
    }

    /// Pushing WAL: only the cluster's own agent.
    pub fn may_push(&self, cluster: &ClusterId) -> Result<(), AuthError> {
        match self {
            Principal::Agent(c) if c == cluster => Ok(()),
            _ => Err(self.forbidden(format!("archive WAL of cluster {cluster}"))),
        }
    }

    /// Reading a cluster (fetching WAL, listing): its agent, its tenant's operators, admins.
    pub fn may_read(&self, cluster: &ClusterId) -> Result<(), AuthError> {
        match self {
            Principal::Agent(c) if c == cluster => Ok(()),
            Principal::Operator(t) if t == cluster.tenant() => Ok(()),
            Principal::Admin => Ok(()),
            _ => Err(self.forbidden(format!("read cluster {cluster}"))),
        }
    }

    /// Writing a restore out to a directory: like reading (an agent may rebuild its own host,
    /// as an old primary does after a failover).
    pub fn may_restore_to_dir(&self, cluster: &ClusterId) -> Result<(), AuthError> {
        self.may_read(cluster)
            .map_err(|_| self.forbidden(format!("restore cluster {cluster}")))
    }

    /// Starting and dropping instances on the server: the tenant's operators and admins.
    pub fn may_run_instances(&self, cluster: &ClusterId) -> Result<(), AuthError> {
        match self {
            Principal::Operator(t) if t == cluster.tenant() => Ok(()),
            Principal::Admin => Ok(()),
            _ => Err(self.forbidden(format!(
                "start or drop PostgreSQL instances of cluster {cluster} on the server"
            ))),
        }
    }

    /// Verifying a cluster's archive and backups: its tenant's operators and admins.
    pub fn may_verify(&self, cluster: &ClusterId) -> Result<(), AuthError> {
        match self {
            Principal::Operator(t) if t == cluster.tenant() => Ok(()),
            Principal::Admin => Ok(()),
            _ => Err(self.forbidden(format!("verify cluster {cluster}"))),
        }
    }

    /// Seeing a tenant's list of clusters: its operators and admins.
    pub fn may_see_tenant(&self, tenant: &TenantId) -> Result<(), AuthError> {
        match self {
            Principal::Operator(t) if t == tenant => Ok(()),
            Principal::Admin => Ok(()),
            _ => Err(self.forbidden(format!("see tenant {tenant}"))),
        }
    }

    /// Creating and changing tenants and clusters.
    pub fn may_administer(&self) -> Result<(), AuthError> {
        match self {
            Principal::Admin => Ok(()),
            _ => Err(self.forbidden("administer tenants and clusters")),
        }
    }

    /// The cluster a request means: the one named in it, or for an agent its own.
    pub fn resolve_cluster(&self, named: Option<ClusterId>) -> Result<ClusterId, AuthError> {
        match (named, self) {
            (Some(c), _) => Ok(c),
            (None, Principal::Agent(c)) => Ok(c.clone()),
            (None, _) => Err(self.forbidden("act without naming a cluster")),
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Agent(c) => write!(f, "agent of {c}"),
            Principal::Operator(t) => write!(f, "operator of tenant {t}"),
            Principal::Admin => f.write_str("admin"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(s: &str) -> ClusterId {
        s.parse().unwrap()
    }

    #[test]
    fn uris_round_trip() {
        for p in [
            Principal::Admin,
            Principal::Agent(cluster("acme/db1")),
            Principal::Operator("acme".parse().unwrap()),
        ] {
            assert_eq!(Principal::from_uri(&p.uri()).unwrap(), Some(p));
        }
        assert_eq!(Principal::from_uri("https://example.com").unwrap(), None);
        assert!(Principal::from_uri("walvault://agent/acme/../x").is_err());
        assert!(Principal::from_uri("walvault://root").is_err());
    }

    #[test]
    fn agents_are_confined_to_their_cluster() {
        let a = Principal::Agent(cluster("acme/db1"));
        assert!(a.may_push(&cluster("acme/db1")).is_ok());
        assert!(a.may_push(&cluster("acme/db2")).is_err());
        assert!(a.may_read(&cluster("other/db1")).is_err());
        assert!(a.may_administer().is_err());
        assert!(a.may_see_tenant(&"acme".parse().unwrap()).is_err());
    }

    #[test]
    fn operators_read_their_tenant_only_and_never_push() {
        let o = Principal::Operator("acme".parse().unwrap());
        assert!(o.may_read(&cluster("acme/db1")).is_ok());
        assert!(o.may_read(&cluster("other/db1")).is_err());
        assert!(o.may_push(&cluster("acme/db1")).is_err());
        let err = o.may_push(&cluster("acme/db1")).unwrap_err().to_string();
        assert_eq!(
            err,
            "operator of tenant acme may not archive WAL of cluster acme/db1"
        );
    }
}
