//! Tenant and cluster names. They become dataset names, directory names and catalog keys,
//! so they are restricted to a conservative alphabet that is safe in all three.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} name is empty")]
    Empty { kind: &'static str },
    #[error("{kind} name {name} is longer than 63 characters")]
    TooLong { kind: &'static str, name: String },
    #[error(
        "{kind} name {name} is invalid: use lowercase letters, digits, '-' and '_', starting with a letter or digit"
    )]
    BadCharacters { kind: &'static str, name: String },
    #[error("cluster {0} is not of the form TENANT/CLUSTER")]
    NotQualified(String),
}

fn validate(kind: &'static str, name: &str) -> Result<(), IdError> {
    if name.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if name.len() > 63 {
        return Err(IdError::TooLong {
            kind,
            name: crate::echo(name),
        });
    }
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err(IdError::BadCharacters {
            kind,
            name: crate::echo(name),
        })
    }
}

/// A tenant's name.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

impl TenantId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TenantId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        validate("tenant", &s)?;
        Ok(Self(s))
    }
}

impl FromStr for TenantId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::try_from(s.to_owned())
    }
}

impl From<TenantId> for String {
    fn from(t: TenantId) -> String {
        t.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A cluster, always qualified by its tenant. Displays and parses as `tenant/cluster`.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct ClusterId {
    tenant: TenantId,
    name: String,
}

impl ClusterId {
    pub fn new(tenant: TenantId, name: &str) -> Result<Self, IdError> {
        validate("cluster", name)?;
        Ok(Self {
            tenant,
            name: name.to_owned(),
        })
    }

    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The cluster's own name, without the tenant.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl FromStr for ClusterId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let (tenant, name) = s
            .split_once('/')
            .ok_or_else(|| IdError::NotQualified(crate::echo(s)))?;
        Self::new(tenant.parse()?, name)
    }
}

impl TryFrom<String> for ClusterId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        s.parse()
    }
}

impl From<ClusterId> for String {
    fn from(c: ClusterId) -> String {
        c.to_string()
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names() {
        let c: ClusterId = "acme/orders-db_1".parse().unwrap();
        assert_eq!(c.tenant().as_str(), "acme");
        assert_eq!(c.name(), "orders-db_1");
        assert_eq!(c.to_string(), "acme/orders-db_1");
    }

    #[test]
    fn refuses_path_tricks() {
        for bad in ["..", "a/b", "A", "-x", "", ".hidden", "a b", "a\0b", "é"] {
            assert!(bad.parse::<TenantId>().is_err(), "{bad:?} accepted");
        }
        assert!("acme".parse::<ClusterId>().is_err());
        assert!("acme/../x".parse::<ClusterId>().is_err());
        assert!("acme/x/y".parse::<ClusterId>().is_err());
        assert!("x".repeat(64).parse::<TenantId>().is_err());
    }
}
