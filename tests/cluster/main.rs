//! The engine on a real Redis Cluster, started by the tests (`flashsale_testkit::LocalCluster`):
//! a reshard and a failover in the middle of a sale.

mod failover;
mod reshard;
mod support;
