//! What a websocket has queued for its client, and the node's budget over it.
//!
//! Text frames are encoded once ([`Frame`]: server frames are unmasked, so the bytes are
//! the same for every client) and shared: a broadcast to 1,000 sessions holds one copy
//! of its frame, not 1,000. Each session queues references to frames in its [`Backlog`];
//! the response stream ([`start`]) hands them to the HTTP layer in slices of at most
//! [`SLICE`] bytes, so that the copy the HTTP layer makes into its write buffer stays
//! small for a client that stops reading.
//!
//! The memory of the frames alive is counted node-wide ([`OutboundBudget`]); past
//! `ws_node_max_outbound_bytes`, the sessions with the most unread bytes are evicted
//! first (their queue dropped, a 1008 close sent if the client reads again). Each
//! session also has its own bound (`ws_max_backlog_bytes`, checked by the sessions).

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix::{Actor, StreamHandler};
use actix_http::ws::{Codec, OpCode, Parser};
use actix_web::error::PayloadError;
use actix_web::web::{Bytes, BytesMut};
use actix_web::{HttpRequest, HttpResponse};
use actix_web_actors::ws::{
    self, CloseCode, CloseReason, Message, ProtocolError, WebsocketContext,
};
use futures_util::Stream;
use futures_util::task::AtomicWaker;

/// The most of a queued frame handed to the HTTP layer at once.
pub const SLICE: usize = 16 * 1024;

/// How often at most the node budget is enforced (a sort over the sessions).
const ENFORCE_EVERY: Duration = Duration::from_millis(50);

/// The node's outbound websocket memory: frames alive, and the sessions holding them.
pub struct OutboundBudget {
    limit: u64,
    bytes: AtomicU64,
    evicted: AtomicU64,
    next_id: AtomicU64,
    sessions: Mutex<HashMap<u64, Weak<Backlog>>>,
    last_enforced: Mutex<Option<Instant>>,
}

impl Default for OutboundBudget {
    /// No limit (unit tests; a node sets `ws_node_max_outbound_bytes`).
    fn default() -> Self {
        OutboundBudget::with_limit(u64::MAX)
    }
}

impl OutboundBudget {
    pub fn with_limit(limit: u64) -> OutboundBudget {
        OutboundBudget {
            limit,
            bytes: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            sessions: Mutex::new(HashMap::new()),
            last_enforced: Mutex::new(None),
        }
    }

    /// Bytes of frames alive (queued by some session, or being written).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Sessions evicted to keep the node within its budget, since start.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// A new session's queue.
    pub fn backlog(self: &Arc<Self>) -> Arc<Backlog> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let backlog = Arc::new(Backlog {
            id,
            queued: AtomicU64::new(0),
            written: AtomicU64::new(0),
            direct: AtomicU64::new(0),
            frames: Mutex::new(VecDeque::new()),
            waker: AtomicWaker::new(),
            evicted: AtomicBool::new(false),
            budget: self.clone(),
        });
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.insert(id, Arc::downgrade(&backlog));
        }
        backlog
    }

    /// A text frame, encoded once, its memory counted while any session holds it.
    pub fn text(self: &Arc<Self>, text: &str) -> Frame {
        let mut buf = BytesMut::with_capacity(text.len() + 10);
        Parser::write_message(&mut buf, text.as_bytes(), OpCode::Text, true, false);
        let len = buf.len() as u64;
        self.bytes.fetch_add(len, Ordering::Relaxed);
        let frame = Frame(Bytes::from_owner(Counted {
            buf: buf.freeze(),
            budget: self.clone(),
        }));
        if self.bytes() > self.limit {
            self.enforce();
        }
        frame
    }

    /// Over the budget: the sessions with the most unread bytes lose their queue
    /// first, until the frames alive fit (or no session holds any).
    fn enforce(&self) {
        if let Ok(mut last) = self.last_enforced.lock() {
            if last.is_some_and(|t| t.elapsed() < ENFORCE_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let mut holders: Vec<Arc<Backlog>> = match self.sessions.lock() {
            Ok(sessions) => sessions.values().filter_map(Weak::upgrade).collect(),
            Err(_) => return,
        };
        holders.sort_by_key(|b| std::cmp::Reverse(b.pending()));
        for backlog in holders {
            if self.bytes() <= self.limit || backlog.pending() == 0 {
                break;
            }
            backlog.evict();
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The owner of a frame's bytes: gives their count back when the last reference goes.
struct Counted {
    buf: Bytes,
    budget: Arc<OutboundBudget>,
}

impl AsRef<[u8]> for Counted {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.budget
            .bytes
            .fetch_sub(self.buf.len() as u64, Ordering::Relaxed);
    }
}

/// An encoded websocket frame; cloning it shares its bytes.
#[derive(Clone, Debug)]
pub struct Frame(Bytes);

impl Frame {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One websocket's queue: frames waiting for the socket, and how far behind the client
/// is (bytes queued minus bytes the HTTP layer took to write).
pub struct Backlog {
    id: u64,
    queued: AtomicU64,
    written: AtomicU64,
    /// Bytes the session wrote straight into its context during the current poll of its
    /// response stream (`take_direct`), which yields them as one chunk.
    direct: AtomicU64,
    frames: Mutex<VecDeque<Bytes>>,
    waker: AtomicWaker,
    evicted: AtomicBool,
    budget: Arc<OutboundBudget>,
}

impl std::fmt::Debug for Backlog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backlog")
            .field("pending", &self.pending())
            .finish()
    }
}

impl Drop for Backlog {
    fn drop(&mut self) {
        if let Ok(mut sessions) = self.budget.sessions.lock() {
            sessions.remove(&self.id);
        }
    }
}

impl Backlog {
    /// The node budget this queue counts against (to encode frames for it).
    pub fn budget(&self) -> &Arc<OutboundBudget> {
        &self.budget
    }

    /// Queues a frame for the client; false once the session was evicted.
    pub fn push(&self, frame: &Frame) -> bool {
        if self.evicted.load(Ordering::Acquire) {
            return false;
        }
        self.enqueue(frame.0.clone());
        true
    }

    /// Queues the close frame behind what is queued (not counted against the node
    /// budget: a few bytes, once per session).
    pub fn push_close(&self, reason: CloseReason) {
        self.enqueue(close_frame_with(Some(reason)));
    }

    /// Queues encoded bytes for the writer, counts them, and wakes it.
    fn enqueue(&self, bytes: Bytes) {
        let len = bytes.len() as u64;
        if let Ok(mut frames) = self.frames.lock() {
            frames.push_back(bytes);
        }
        self.queued.fetch_add(len, Ordering::Relaxed);
        self.waker.wake();
    }

    /// Encodes and queues a text frame of this session alone.
    pub fn push_text(&self, text: &str) -> bool {
        let frame = self.budget.text(text);
        self.push(&frame)
    }

    /// Whether `bytes` more may be written straight into the context in this poll of
    /// the response stream: at most [`SLICE`] bytes per poll, so that what reaches the
    /// HTTP layer's write buffer at once stays as small as a queued frame's slice
    /// (the layer looks at its buffer's size only before it polls). Counts them if so.
    pub fn take_direct(&self, bytes: usize) -> bool {
        let bytes = bytes as u64;
        let before = self.direct.load(Ordering::Relaxed);
        if before + bytes > SLICE as u64 {
            return false;
        }
        self.direct.store(before + bytes, Ordering::Relaxed);
        true
    }

    /// Bytes queued and not yet taken by the socket writer.
    pub fn pending(&self) -> u64 {
        self.queued
            .load(Ordering::Relaxed)
            .saturating_sub(self.written.load(Ordering::Relaxed))
    }

    /// Whether the node budget took this session's queue away.
    pub fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }

    /// Drops what is queued (its memory goes now, not when the client reads) and ends
    /// the stream with a 1008 close.
    fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        self.clear();
    }

    /// Drops what is queued: a session closing a client that does not read sends its
    /// close frame next, not after megabytes the client will never read.
    pub fn clear(&self) {
        if let Ok(mut frames) = self.frames.lock() {
            // Dropped unwritten: counted as gone, so that `pending` stays what is queued.
            let dropped: usize = frames.iter().map(Bytes::len).sum();
            self.written.fetch_add(dropped as u64, Ordering::Relaxed);
            frames.clear();
        }
        self.waker.wake();
    }

    /// The next bytes to write: a slice of the front frame.
    fn next_slice(&self) -> Option<Bytes> {
        // Most polls find nothing queued: told by the counts, without the lock. A push
        // counts its frame after queueing it and wakes the writer after that, so a
        // frame not counted yet is looked for again at that wake.
        if self.pending() == 0 {
            return None;
        }
        let mut frames = self.frames.lock().ok()?;
        let front = frames.front_mut()?;
        let slice = if front.len() > SLICE {
            front.split_to(SLICE)
        } else {
            frames.pop_front()?
        };
        Some(slice)
    }
}

type Body = Pin<Box<dyn Stream<Item = Result<Bytes, actix_web::Error>>>>;

/// The response stream of a websocket: the session's queued frames first, then what
/// the actor context writes itself (pings, pongs, its close frame).
struct Outgoing {
    inner: Body,
    backlog: Arc<Backlog>,
    inner_done: bool,
    close_sent: bool,
}

impl Outgoing {
    /// What the backlog has for the socket: the 1008 close once the node budget took
    /// this session's queue away, else a slice of its front frame. Most polls find
    /// neither, told by two loads.
    #[inline]
    fn queued(&mut self) -> Option<Bytes> {
        if self.backlog.pending() == 0 && !self.backlog.is_evicted() {
            return None;
        }
        self.queued_slow()
    }

    fn queued_slow(&mut self) -> Option<Bytes> {
        if self.backlog.is_evicted() {
            self.close_sent = true;
            return Some(close_frame(
                super::close_code::POLICY,
                "the client is not reading its messages",
            ));
        }
        let slice = self.backlog.next_slice()?;
        self.backlog
            .written
            .fetch_add(slice.len() as u64, Ordering::Relaxed);
        Some(slice)
    }
}

fn close_frame(code: u16, reason: &str) -> Bytes {
    close_frame_with(Some(CloseReason {
        code: CloseCode::from(code),
        description: Some(reason.to_string()),
    }))
}

fn close_frame_with(reason: Option<CloseReason>) -> Bytes {
    let mut buf = BytesMut::new();
    Parser::write_close(&mut buf, reason, false);
    buf.freeze()
}

impl Stream for Outgoing {
    type Item = Result<Bytes, actix_web::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.close_sent {
            return Poll::Ready(None);
        }
        if let Some(bytes) = self.queued() {
            return Poll::Ready(Some(Ok(bytes)));
        }
        let polled = if self.inner_done {
            None
        } else {
            // The actor runs inside this poll: what it queues (a reply) is looked for
            // below, so its push need not wake this task for one more poll. Without a
            // waker during the poll, its push wakes nothing.
            drop(self.backlog.waker.take());
            self.backlog.direct.store(0, Ordering::Relaxed);
            let polled = self.inner.as_mut().poll_next(cx);
            if let Poll::Ready(None) = polled {
                // The actor is done; what it queued before goes out first.
                self.inner_done = true;
            }
            Some(polled)
        };
        self.backlog.waker.register(cx.waker());
        match polled {
            // What the context writes itself (pings, pongs, its close) was never
            // queued: it is not counted as written either.
            Some(Poll::Ready(Some(Ok(bytes)))) => return Poll::Ready(Some(Ok(bytes))),
            Some(Poll::Ready(Some(Err(e)))) => return Poll::Ready(Some(Err(e))),
            _ => {}
        }
        // An eviction or a frame from another thread before the registration (it
        // woke no one), or a frame the actor queued above.
        if let Some(bytes) = self.queued() {
            return Poll::Ready(Some(Ok(bytes)));
        }
        if self.inner_done {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

/// Starts a websocket actor like `WsResponseBuilder::start`, with a frame size limit and
/// the session's queued frames written ahead of what the context writes. `payload` is
/// the request payload as the caller wrapped it (`http::ws_frames::FrameGuard`: frames
/// refused on their declared length).
pub fn start<A, S>(
    actor: A,
    req: &HttpRequest,
    payload: impl FnOnce() -> S,
    max_frame_bytes: usize,
    backlog: Arc<Backlog>,
) -> Result<HttpResponse, actix_web::Error>
where
    A: Actor<Context = WebsocketContext<A>> + StreamHandler<Result<Message, ProtocolError>>,
    S: Stream<Item = Result<Bytes, PayloadError>> + 'static,
{
    let mut response = ws::handshake(req)?;
    // The stream is taken only now that the upgrade is certain (`body_guard::Unguard`).
    let body: Body = Box::pin(WebsocketContext::with_codec(
        actor,
        payload(),
        Codec::new().max_size(max_frame_bytes),
    ));
    Ok(response.streaming(Outgoing {
        inner: body,
        backlog,
        inner_done: false,
        close_sent: false,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_counted_once_however_many_sessions_hold_it() {
        let budget = Arc::new(OutboundBudget::default());
        let sessions: Vec<_> = (0..100).map(|_| budget.backlog()).collect();
        let text = "x".repeat(100_000);
        let frame = budget.text(&text);
        for s in &sessions {
            assert!(s.push(&frame));
        }
        drop(frame);
        let alive = budget.bytes();
        assert!((100_000..100_016).contains(&alive), "{alive}");
        assert_eq!(sessions[0].pending(), alive);
        drop(sessions);
        assert_eq!(budget.bytes(), 0);
    }

    #[test]
    fn over_the_budget_the_most_behind_lose_their_queue_first() {
        let budget = Arc::new(OutboundBudget::with_limit(250_000));
        let slow = budget.backlog();
        let fast = budget.backlog();
        for _ in 0..2 {
            slow.push_text(&"s".repeat(100_000));
        }
        fast.push_text(&"f".repeat(10_000));
        // The third 100 kB frame takes the node over: the slowest goes.
        slow.push_text(&"s".repeat(100_000));
        assert!(slow.is_evicted());
        assert!(!fast.is_evicted());
        // What was dropped unwritten no longer counts as pending.
        assert_eq!(slow.pending(), 0);
        assert!(fast.pending() > 0);
        assert!(budget.bytes() < 20_000, "{}", budget.bytes());
        assert!(!slow.push_text("more"));
        assert_eq!(budget.evicted(), 1);
    }

    /// Counts the wake-ups of the task that polls.
    #[derive(Default)]
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl futures_util::task::ArcWake for Wakes {
        fn wake_by_ref(arc_self: &Arc<Self>) {
            arc_self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Stands for the session actor inside the context: on each poll it queues the
    /// next of its replies (or is evicted, as by the node budget from another thread).
    struct Actor {
        backlog: Arc<Backlog>,
        replies: VecDeque<&'static str>,
        evict: bool,
    }

    impl Stream for Actor {
        type Item = Result<Bytes, actix_web::Error>;
        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            if let Some(text) = self.replies.pop_front() {
                self.backlog.push_text(text);
            }
            if self.evict {
                self.backlog.evict();
            }
            Poll::Pending
        }
    }

    fn outgoing(backlog: &Arc<Backlog>, replies: &[&'static str], evict: bool) -> Outgoing {
        Outgoing {
            inner: Box::pin(Actor {
                backlog: backlog.clone(),
                replies: replies.iter().copied().collect(),
                evict,
            }),
            backlog: backlog.clone(),
            inner_done: false,
            close_sent: false,
        }
    }

    #[test]
    fn a_reply_queued_while_the_actor_runs_goes_out_in_that_poll_without_a_wake() {
        let budget = Arc::new(OutboundBudget::default());
        let backlog = budget.backlog();
        let mut out = outgoing(&backlog, &["pong"], false);
        let wakes = Arc::new(Wakes::default());
        let waker = futures_util::task::waker(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        match Pin::new(&mut out).poll_next(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => assert_eq!(&frame[2..], b"pong"),
            _ => panic!("the reply did not go out in the poll that queued it"),
        }
        assert!(Pin::new(&mut out).poll_next(&mut cx).is_pending());
        assert_eq!(wakes.0.load(Ordering::Relaxed), 0);
        // A frame queued from elsewhere (another thread) wakes the task.
        assert!(backlog.push_text("later"));
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1);
        assert!(matches!(
            Pin::new(&mut out).poll_next(&mut cx),
            Poll::Ready(Some(Ok(_)))
        ));
    }

    #[test]
    fn an_eviction_while_the_actor_runs_closes_in_that_poll() {
        let budget = Arc::new(OutboundBudget::default());
        let backlog = budget.backlog();
        let mut out = outgoing(&backlog, &[], true);
        let wakes = Arc::new(Wakes::default());
        let waker = futures_util::task::waker(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        match Pin::new(&mut out).poll_next(&mut cx) {
            // A close frame: opcode 8, then the code 1008.
            Poll::Ready(Some(Ok(frame))) => assert_eq!(&frame[..4], &[0x88, frame[1], 0x03, 0xF0]),
            _ => panic!("the eviction was not noticed"),
        }
        assert!(matches!(
            Pin::new(&mut out).poll_next(&mut cx),
            Poll::Ready(None)
        ));
    }

    /// Stands for a context that writes frames of its own (pings).
    struct Pinger(VecDeque<Bytes>);

    impl Stream for Pinger {
        type Item = Result<Bytes, actix_web::Error>;
        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            match self.0.pop_front() {
                Some(frame) => Poll::Ready(Some(Ok(frame))),
                None => Poll::Pending,
            }
        }
    }

    #[test]
    fn what_the_context_writes_itself_does_not_hide_queued_frames() {
        let budget = Arc::new(OutboundBudget::default());
        let backlog = budget.backlog();
        // Pings with a payload: together longer than the reply's frame.
        let mut ping = vec![0x89, 100];
        ping.extend([0; 100]);
        let pings = vec![Bytes::from(ping); 3];
        let mut out = Outgoing {
            inner: Box::pin(Pinger(pings.into())),
            backlog: backlog.clone(),
            inner_done: false,
            close_sent: false,
        };
        let waker = futures_util::task::waker(Arc::new(Wakes::default()));
        let mut cx = Context::from_waker(&waker);
        for _ in 0..3 {
            assert!(matches!(
                Pin::new(&mut out).poll_next(&mut cx),
                Poll::Ready(Some(Ok(_)))
            ));
        }
        assert!(Pin::new(&mut out).poll_next(&mut cx).is_pending());
        assert_eq!(backlog.pending(), 0);
        assert!(backlog.push_text("reply"));
        match Pin::new(&mut out).poll_next(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => assert_eq!(&frame[2..], b"reply"),
            _ => panic!("the queued reply did not go out"),
        }
        assert_eq!(backlog.pending(), 0);
    }

    #[test]
    fn direct_writes_are_capped_per_poll_of_the_stream() {
        let budget = Arc::new(OutboundBudget::default());
        let backlog = budget.backlog();
        assert!(backlog.take_direct(SLICE - 10));
        assert!(!backlog.take_direct(11), "over the poll's allowance");
        assert!(backlog.take_direct(10));
        // Each poll of the response stream starts a new allowance.
        let mut out = outgoing(&backlog, &[], false);
        let waker = futures_util::task::waker(Arc::new(Wakes::default()));
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut out).poll_next(&mut cx).is_pending());
        assert!(backlog.take_direct(SLICE));
    }

    #[test]
    fn big_frames_leave_in_slices() {
        let budget = Arc::new(OutboundBudget::default());
        let b = budget.backlog();
        b.push_text(&"x".repeat(40_000));
        let sizes: Vec<usize> = std::iter::from_fn(|| b.next_slice().map(|s| s.len())).collect();
        assert_eq!(sizes.len(), 3);
        assert!(sizes.iter().all(|&n| n <= SLICE));
        assert_eq!(sizes.iter().sum::<usize>(), 40_004);
    }
}
