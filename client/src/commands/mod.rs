//! One module per verb; each is thin over the channel and the wire types.

pub mod admin;
pub mod backup;
pub mod policy;
pub mod restore;
pub mod verify;
pub mod wal_fetch;
pub mod wal_list;
pub mod wal_push;

use walvault_proto::{pb, ClusterId};

use crate::config::ClientConfig;

/// The cluster a command means: `--cluster`, else the configuration's, else none (the
/// server then takes an agent's own cluster from its certificate).
pub fn cluster_ref(config: &ClientConfig, flag: Option<&ClusterId>) -> Option<pb::ClusterRef> {
    flag.or(config.cluster.as_ref()).map(|c| pb::ClusterRef {
        tenant: c.tenant().to_string(),
        cluster: c.name().to_owned(),
    })
}

/// How a cluster reads in messages.
pub fn describe(r: &Option<pb::ClusterRef>) -> String {
    match r {
        Some(r) => format!("{}/{}", r.tenant, r.cluster),
        None => "this agent's cluster".into(),
    }
}
