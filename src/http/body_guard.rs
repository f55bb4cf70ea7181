//! Slow and half-finished request bodies (issue #10).
//!
//! Every request body passes through [`GuardedPayload`], set on the request by the
//! [`guard_bodies`] middleware, so that one place covers every route that reads a body
//! (webhooks, admin, event publish, subscribe) and the ones that do not:
//!
//! - **Body timeout.** A body that has not arrived in full within
//!   `http_body_timeout_ms` of the request head ends the read with an error; the
//!   middleware then answers 408 `body_timeout`, whatever the handler made of the
//!   error. The clock is the whole body, not the gap between chunks: a client dripping
//!   a byte a second is as slow as one that stopped.
//! - **Refused before the body was read.** When the response is ready and the body has
//!   not been read to its end (404 for an unknown token, 401, 413, 408 ...), the
//!   connection is closed after the response instead of kept alive. actix-http would
//!   close it only for a `Content-Length` body; a chunked body whose reader was dropped
//!   is *drained* for as long as the client keeps sending — unauthenticated, without a
//!   timer. Keeping the body alive until the response is written makes actix-http
//!   close (`Connection: close`, then a short linger so the client reads the answer).
//!   What has already arrived is drained first, so a small body that simply was not
//!   needed keeps its keep-alive connection.
//! - Upgrades (101) are left alone: the websocket owns the stream from then on, and
//!   the timer is disarmed. A request asking for an upgrade carries an [`Unguard`]:
//!   the websocket takes the stream out of the guard once its handshake is accepted,
//!   so that its frames do not pass through the guard for the connection's life.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use actix_web::body::{BodySize, EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use actix_web::{Error, HttpMessage, ResponseError, web};
use futures_util::Stream;
use tokio::time::{Instant, Sleep};

use super::error::ApiError;
use crate::http::state::AppState;

/// Counters of connection hygiene, exported by `/metrics`.
#[derive(Debug, Default)]
pub struct ConnStats {
    /// Request bodies cut by `http_body_timeout_ms` (answered 408).
    pub body_timeouts: AtomicU64,
    /// Connections closed after the response because the request body was not read to
    /// its end.
    pub closed_unread_body: AtomicU64,
    /// Websocket frames refused on their declared length (closed 1009).
    pub ws_frames_refused: AtomicU64,
}

/// Bytes already received that are drained (not waited for) to tell "the body was
/// complete but not needed" from "the body is still coming". Above this, the
/// connection is closed instead.
const DRAIN_BUFFERED_MAX: usize = 64 * 1024;

/// The request body and its clock, shared by the stream the handler reads and the
/// middleware that looks at it once the response is ready.
struct Body {
    payload: Payload,
    deadline: Instant,
    /// Created at the first read that has to wait: a body that came with its head
    /// never registers a timer.
    timer: Option<Pin<Box<Sleep>>>,
    /// After a 101 the stream is the websocket's: no deadline any more.
    armed: bool,
    eof: bool,
    timed_out: bool,
    stats: Arc<ConnStats>,
}

impl Body {
    /// Reads on without waiting: what has arrived already is dropped. True when the
    /// body's end was reached.
    fn drain_buffered(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut drained = 0;
        while !self.eof && !self.timed_out && drained <= DRAIN_BUFFERED_MAX {
            match Pin::new(&mut self.payload).poll_next(&mut cx) {
                Poll::Ready(Some(Ok(chunk))) => drained += chunk.len(),
                Poll::Ready(None) => self.eof = true,
                Poll::Ready(Some(Err(_))) | Poll::Pending => break,
            }
        }
        self.eof
    }
}

/// The body stream handlers see (through `web::Payload`).
struct GuardedPayload(Rc<RefCell<Body>>);

/// In the extensions of a request that asks for an upgrade: hands the request's stream
/// over unguarded (see the module notes).
#[derive(Clone)]
pub struct Unguard(Rc<RefCell<Body>>);

impl Unguard {
    /// The stream as actix-http gave it, once the upgrade is certain (only a 101 may
    /// follow: a refusal must still find the stream in the guard, which then closes the
    /// connection). Its timer is disarmed and the guard reads an empty body from now
    /// on. None when the stream has ended (or timed out) already.
    pub fn take(&self) -> Option<Payload> {
        let mut body = self.0.borrow_mut();
        if body.eof || body.timed_out {
            return None;
        }
        body.armed = false;
        body.timer = None;
        body.eof = true;
        Some(std::mem::replace(&mut body.payload, Payload::None))
    }
}

impl Stream for GuardedPayload {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut body = self.0.borrow_mut();
        if body.eof || body.timed_out {
            return Poll::Ready(None);
        }
        match Pin::new(&mut body.payload).poll_next(cx) {
            Poll::Ready(None) => {
                body.eof = true;
                body.timer = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(item)) => Poll::Ready(Some(item)),
            Poll::Pending if !body.armed => Poll::Pending,
            Poll::Pending => {
                let deadline = body.deadline;
                let timer = body
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                body.timed_out = true;
                body.timer = None;
                body.stats.body_timeouts.fetch_add(1, Ordering::Relaxed);
                Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the request body did not arrive in time",
                )))))
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps the unread request body alive until the response is
    /// written: actix-http decides to close the connection when it sees a request body
    /// still unfinished *and still referenced* at that point.
    pub struct HoldBody<B> {
        #[pin]
        body: B,
        hold: Option<Rc<RefCell<Body>>>,
    }
}

impl<B: MessageBody> MessageBody for HoldBody<B> {
    type Error = B::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        self.project().body.poll_next(cx)
    }
}

/// The middleware (see the module notes). Innermost of the app's middlewares, so that
/// the request id and the access log see its 408.
pub async fn guard_bodies<B: MessageBody + 'static>(
    mut req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<HoldBody<EitherBody<B>>>, Error> {
    let release =
        |res: ServiceResponse<EitherBody<B>>| res.map_body(|_, body| HoldBody { body, hold: None });
    let settings = match req.parts().1 {
        Payload::None => None,
        _ => req
            .app_data::<web::Data<AppState>>()
            .map(|s| (s.config.http_body_timeout_ms, s.conn_stats.clone())),
    };
    let Some((timeout_ms, stats)) = settings else {
        // No body (or no state): nothing to guard.
        return Ok(release(next.call(req).await?.map_into_left_body()));
    };
    let payload = std::mem::replace(req.parts_mut().1, Payload::None);
    let body = Rc::new(RefCell::new(Body {
        payload,
        deadline: Instant::now() + Duration::from_millis(timeout_ms),
        timer: None,
        armed: true,
        eof: false,
        timed_out: false,
        stats: stats.clone(),
    }));
    req.set_payload(Payload::Stream {
        payload: Box::pin(GuardedPayload(body.clone())),
    });
    if req.head().upgrade() {
        req.extensions_mut().insert(Unguard(body.clone()));
    }
    // Handlers' errors arrive here as responses (actix-web turns them into responses
    // at the handler); an `Err` would come from a middleware inside this one, of which
    // there is none.
    let res = next.call(req).await?.map_into_left_body();
    if res.status() == StatusCode::SWITCHING_PROTOCOLS {
        body.borrow_mut().armed = false;
        return Ok(release(res));
    }
    body.borrow_mut().timer = None;
    let mut finished = body.borrow_mut().drain_buffered();
    if !finished {
        // A handler that answers at once does so while the dispatcher is still decoding
        // the read that brought the head: a small body that came with it is fed to the
        // payload only after. One turn lets it in.
        tokio::task::yield_now().await;
        finished = body.borrow_mut().drain_buffered();
    }
    let timed_out = body.borrow().timed_out;
    let mut res = if timed_out {
        // Whatever the handler made of the read error (400 bad_body, say), the caller
        // is told what happened.
        let response = ApiError::body_timeout(timeout_ms).error_response();
        res.into_response(response).map_into_right_body()
    } else {
        res
    };
    if finished {
        return Ok(release(res));
    }
    stats.closed_unread_body.fetch_add(1, Ordering::Relaxed);
    // `Connection: close` on HTTP/1 (HTTP/2 has no such header; its stream ends anyway).
    res.response_mut()
        .head_mut()
        .set_connection_type(actix_web::http::ConnectionType::Close);
    Ok(res.map_body(|_, inner| HoldBody {
        body: inner,
        hold: Some(body),
    }))
}
