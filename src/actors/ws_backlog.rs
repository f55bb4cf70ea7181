//! How far a websocket client is behind: bytes the session queued for it minus bytes
//! the HTTP layer actually pulled to write to the socket. actix-web-actors buffers
//! outgoing frames without a limit; counting the response stream as it is drained lets a
//! session close a client that stopped reading instead of growing without bound.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use actix::{Actor, StreamHandler};
use actix_http::ws::Codec;
use actix_web::error::PayloadError;
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse};
use actix_web_actors::ws::{self, Message, ProtocolError, WebsocketContext};
use futures_util::Stream;

#[derive(Debug, Default)]
pub struct Backlog {
    queued: AtomicU64,
    written: AtomicU64,
}

impl Backlog {
    /// A frame of `bytes` was handed to the websocket context.
    pub fn queued(&self, bytes: usize) {
        self.queued.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Bytes queued and not yet taken by the socket writer.
    pub fn pending(&self) -> u64 {
        self.queued
            .load(Ordering::Relaxed)
            .saturating_sub(self.written.load(Ordering::Relaxed))
    }
}

type Body = Pin<Box<dyn Stream<Item = Result<Bytes, actix_web::Error>>>>;

struct Counted {
    inner: Body,
    backlog: Arc<Backlog>,
}

impl Stream for Counted {
    type Item = Result<Bytes, actix_web::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.inner.as_mut().poll_next(cx);
        if let Poll::Ready(Some(Ok(bytes))) = &polled {
            self.backlog
                .written
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        polled
    }
}

/// Starts a websocket actor like `WsResponseBuilder::start`, with a frame size limit and
/// the response stream counted into `backlog`. `payload` is the request payload as the
/// caller wrapped it (`http::ws_frames::FrameGuard`: frames refused on their declared
/// length).
pub fn start<A, S>(
    actor: A,
    req: &HttpRequest,
    payload: S,
    max_frame_bytes: usize,
    backlog: Arc<Backlog>,
) -> Result<HttpResponse, actix_web::Error>
where
    A: Actor<Context = WebsocketContext<A>> + StreamHandler<Result<Message, ProtocolError>>,
    S: Stream<Item = Result<Bytes, PayloadError>> + 'static,
{
    let mut response = ws::handshake(req)?;
    let body: Body = Box::pin(WebsocketContext::with_codec(
        actor,
        payload,
        Codec::new().max_size(max_frame_bytes),
    ));
    Ok(response.streaming(Counted {
        inner: body,
        backlog,
    }))
}
