//! The test process's throwaway PostgreSQL cluster (see `broker::scratch_pg`). The postgres
//! tests fail, never skip, when PostgreSQL is missing.

use std::sync::OnceLock;

use broker::scratch_pg::Cluster;

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

/// The cluster, started on first use.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| match Cluster::start() {
        Ok(cluster) => cluster,
        Err(error) => panic!("cannot start the test PostgreSQL cluster: {error}"),
    })
}
