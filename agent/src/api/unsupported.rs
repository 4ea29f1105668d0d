//! Answers for APIs the codec knows but this agent does not implement (and does not
//! advertise): the API's own response carrying an error, so a client that sends one anyway
//! gets a clear error instead of a dropped connection. APIs without a top-level error code get
//! `None`, and their connection is closed, as Kafka does.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    InitProducerIdResponse, RequestKind, ResponseKind, SaslHandshakeResponse,
};

pub fn response(request: RequestKind) -> Option<ResponseKind> {
    Some(match request {
        RequestKind::InitProducerId(_) => InitProducerIdResponse::default()
            .with_error_code(ResponseError::UnsupportedVersion.code())
            .into(),
        RequestKind::SaslHandshake(_) => SaslHandshakeResponse::default()
            .with_error_code(ResponseError::UnsupportedSaslMechanism.code())
            .into(),
        _ => return None,
    })
}
