//! Answers for APIs the codec knows but this agent does not implement (and does not
//! advertise): the API's own response carrying UNSUPPORTED_VERSION, so a client that sends
//! one anyway gets a clear error instead of a dropped connection. APIs without a top-level
//! error code get `None`, and their connection is closed, as Kafka does.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{
    FindCoordinatorResponse, HeartbeatResponse, InitProducerIdResponse, JoinGroupResponse,
    LeaveGroupResponse, ListGroupsResponse, RequestKind, ResponseKind, SaslHandshakeResponse,
    SyncGroupResponse,
};

pub fn response(request: RequestKind) -> Option<ResponseKind> {
    let code = ResponseError::UnsupportedVersion.code();
    Some(match request {
        RequestKind::FindCoordinator(r) => FindCoordinatorResponse::default()
            .with_error_code(code)
            .with_coordinators(
                r.coordinator_keys
                    .into_iter()
                    .map(|key| Coordinator::default().with_key(key).with_error_code(code))
                    .collect(),
            )
            .into(),
        RequestKind::InitProducerId(_) => InitProducerIdResponse::default()
            .with_error_code(code)
            .into(),
        RequestKind::JoinGroup(_) => JoinGroupResponse::default().with_error_code(code).into(),
        RequestKind::SyncGroup(_) => SyncGroupResponse::default().with_error_code(code).into(),
        RequestKind::Heartbeat(_) => HeartbeatResponse::default().with_error_code(code).into(),
        RequestKind::LeaveGroup(_) => LeaveGroupResponse::default().with_error_code(code).into(),
        RequestKind::ListGroups(_) => ListGroupsResponse::default().with_error_code(code).into(),
        RequestKind::SaslHandshake(_) => SaslHandshakeResponse::default()
            .with_error_code(ResponseError::UnsupportedSaslMechanism.code())
            .into(),
        _ => return None,
    })
}
