//! DescribeCluster: the agents of the cluster, as admin clients list them.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};

use super::{Context, str_bytes};

pub fn describe(ctx: &Context, request: DescribeClusterRequest) -> DescribeClusterResponse {
    let node = &ctx.node;
    DescribeClusterResponse::default()
        .with_endpoint_type(request.endpoint_type)
        .with_cluster_id(str_bytes(ctx.cluster_id.clone()))
        .with_controller_id(BrokerId(node.id))
        .with_brokers(vec![
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(node.id))
                .with_host(str_bytes(node.host.clone()))
                .with_port(node.port)
                .with_rack(node.rack.clone().map(str_bytes)),
        ])
}
