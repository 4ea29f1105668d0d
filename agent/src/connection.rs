//! One client connection: reads length-prefixed frames, runs requests concurrently, and
//! writes the responses back in request order, as Kafka clients require.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};

use kafka_protocol::messages::ApiKey;
use tokio::sync::oneshot;

use crate::api::{self, Context, ProduceOrder};
use crate::metrics::{self as m, Occupancy};

/// Requests of one connection being processed at once; more wait in the socket buffer.
/// A produce request waits for its object's flush (hundreds of milliseconds on S3), so a
/// client with default settings (small requests, many in flight) needs many at once to keep
/// its throughput: a connection answering 64 requests per flush interval caps it at a few
/// MiB/s and its queue grows without end.
const MAX_IN_FLIGHT: usize = 1024;
/// Request bytes of one connection being processed at once: the memory bound.
const MAX_IN_FLIGHT_BYTES: usize = 64 << 20;

/// Serves a connection until the client closes it, sends a frame we refuse, or the agent
/// stops. A bad frame ends this connection only.
pub async fn serve(stream: TcpStream, ctx: Arc<Context>) {
    metrics::counter!(m::CONNECTIONS_ACCEPTED).increment(1);
    let _open = Occupancy::enter(metrics::gauge!(m::CONNECTIONS));
    let peer = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    let (mut reader, writer) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<tokio::task::JoinHandle<api::Outcome>>(MAX_IN_FLIGHT);
    let (closed_tx, mut closed_rx) = oneshot::channel::<()>();

    let write_loop = tokio::spawn(async move {
        let _closed = closed_tx;
        let mut writer = BufWriter::new(writer);
        while let Some(handle) = rx.recv().await {
            // Responses that are ready go out together; before waiting on one that is not,
            // what is buffered is sent, so no answer waits behind a slower one.
            if !handle.is_finished() && writer.flush().await.is_err() {
                return;
            }
            let response = match handle.await {
                Ok(Ok(response)) => response,
                Ok(Err(reason)) => {
                    tracing::warn!(?peer, %reason, "closing connection");
                    return;
                }
                Err(e) => {
                    tracing::error!(?peer, error = %e, "request handler failed; closing connection");
                    return;
                }
            };
            if let Some(frame) = response
                && writer.write_all(&frame).await.is_err()
            {
                return;
            }
            if rx.is_empty() && writer.flush().await.is_err() {
                return;
            }
        }
        let _ = writer.flush().await;
    });

    let max_frame = ctx.config.max_request_bytes;
    let mut shutdown = ctx.shutdown.clone();
    // Requests run concurrently, but each produce request queues its batches only after the
    // previous one on this connection did.
    let mut last_produce: Option<oneshot::Receiver<()>> = None;
    let budget = Arc::new(Semaphore::new(MAX_IN_FLIGHT_BYTES));
    loop {
        let frame = tokio::select! {
            frame = read_frame(&mut reader, max_frame) => frame,
            _ = shutdown.changed() => break,
            _ = &mut closed_rx => break,
        };
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(reason) => {
                tracing::warn!(?peer, %reason, "closing connection");
                break;
            }
        };
        let api_key = frame
            .get(..2)
            .and_then(|key| ApiKey::try_from(i16::from_be_bytes([key[0], key[1]])).ok());
        let request = match api::Request::parse(frame) {
            Ok(mut request) => {
                request.client_host = peer.map(|p| p.ip().to_string()).unwrap_or_default();
                request
            }
            Err(reason) => {
                api::count_refused(api_key);
                tracing::warn!(?peer, %reason, "closing connection");
                break;
            }
        };
        let order = (request.api_key == ApiKey::Produce).then(|| {
            let (appended, next) = oneshot::channel();
            ProduceOrder {
                previous: last_produce.replace(next),
                appended,
            }
        });
        // Waits (reading no more) while this connection's requests hold too many bytes.
        let cost = (request.body.len() as u32).clamp(1, MAX_IN_FLIGHT_BYTES as u32);
        let Ok(held) = budget.clone().acquire_many_owned(cost).await else {
            break;
        };
        let ctx = ctx.clone();
        let handle = tokio::spawn(async move {
            let _held = held;
            api::handle(&ctx, request, order).await
        });
        if tx.send(handle).await.is_err() {
            break;
        }
    }
    drop(tx);
    let _ = write_loop.await;
}

/// Reads one frame: `Ok(None)` on a clean end of stream, `Err` on a frame we refuse.
async fn read_frame(
    reader: &mut tokio::net::tcp::OwnedReadHalf,
    max_frame: u64,
) -> Result<Option<Bytes>, String> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(format!("read failed: {e}")),
    }
    let len = i32::from_be_bytes(len);
    if len < 0 || len as u64 > max_frame {
        return Err(format!(
            "frame of {len} bytes refused (limit {max_frame} bytes)"
        ));
    }
    // Filled straight from the socket, without zeroing megabytes first.
    let len = len as usize;
    let mut frame = BytesMut::with_capacity(len);
    while frame.len() < len {
        let mut limited = (&mut *reader).take((len - frame.len()) as u64);
        match limited.read_buf(&mut frame).await {
            Ok(0) => return Err(format!("truncated frame: {} of {len} bytes", frame.len())),
            Ok(_) => {}
            Err(e) => return Err(format!("read failed: {e}")),
        }
    }
    Ok(Some(frame.freeze()))
}
