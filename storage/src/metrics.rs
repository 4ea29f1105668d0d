//! What this process asks of the object store, for `/metrics`: requests by operation and
//! outcome, their latency, and the bytes moved. Object-store requests are Shoal's main cost,
//! so every call through [`crate::ObjectStorage`] is counted, whichever component made it.

use std::future::Future;
use std::time::Instant;

/// Requests by `operation` (get, put, delete, list, head) and `outcome` (ok, not_found,
/// exists, error).
pub const REQUESTS: &str = "shoal_object_store_requests_total";
/// Request latency by `operation`, seconds.
pub const DURATION: &str = "shoal_object_store_request_duration_seconds";
/// Payload bytes moved by `operation` (get: read, put: written).
pub const BYTES: &str = "shoal_object_store_bytes_total";

/// Registers the help text of this crate's metrics with the installed recorder.
pub fn describe() {
    metrics::describe_counter!(
        REQUESTS,
        "Object store requests by operation (get, put, delete, list, head) and outcome (ok, not_found, exists, error)."
    );
    metrics::describe_histogram!(
        DURATION,
        "Object store request latency by operation, in seconds."
    );
    metrics::describe_counter!(
        BYTES,
        "Payload bytes read (get) and written (put) from and to the object store."
    );
}

/// Runs one object-store request and records it; `bytes` tells the payload size of a
/// success.
pub(crate) async fn observe<T>(
    operation: &'static str,
    request: impl Future<Output = Result<T, object_store::Error>>,
    bytes: impl FnOnce(&T) -> u64,
) -> Result<T, object_store::Error> {
    let start = Instant::now();
    let result = request.await;
    metrics::histogram!(DURATION, "operation" => operation).record(start.elapsed().as_secs_f64());
    let outcome = match &result {
        Ok(value) => {
            let moved = bytes(value);
            if moved > 0 {
                metrics::counter!(BYTES, "operation" => operation).increment(moved);
            }
            "ok"
        }
        Err(object_store::Error::NotFound { .. }) => "not_found",
        Err(
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. },
        ) => "exists",
        Err(_) => "error",
    };
    metrics::counter!(REQUESTS, "operation" => operation, "outcome" => outcome).increment(1);
    result
}
