//! DescribeCluster: the live agents of the cluster, as admin clients list them (every zone).

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};

use super::metadata::controller;
use super::{Context, str_bytes};

pub fn describe(ctx: &Context, request: DescribeClusterRequest) -> DescribeClusterResponse {
    let agents = ctx.fleet.live();
    let brokers = agents
        .iter()
        .map(|agent| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(agent.id))
                .with_host(str_bytes(agent.host.clone()))
                .with_port(agent.port)
                .with_rack(agent.zone.clone().map(str_bytes))
        })
        .collect();
    DescribeClusterResponse::default()
        .with_endpoint_type(request.endpoint_type)
        .with_cluster_id(str_bytes(ctx.cluster_id.clone()))
        .with_controller_id(BrokerId(controller(&agents)))
        .with_brokers(brokers)
}
