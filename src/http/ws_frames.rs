//! Websocket frames refused on their declared length (issue #10).
//!
//! actix-http's frame parser compares a frame's length with the codec's `max_size` only
//! once the whole frame is buffered, so a header declaring 2^40 bytes made the node
//! buffer everything the client streamed. [`FrameGuard`] sits between the request
//! payload and the websocket codec and follows the frame boundaries itself (a 2–14
//! byte header, mask included, then `length` payload bytes). A frame that declares more
//! than the limit is refused as soon as its header is complete: no byte of it reaches
//! the codec, the stream ends with an error, and the [`Refused`] flag tells the session
//! to close with 1009 instead of its generic 1002.
//!
//! It also passes at most one frame per read batch: the websocket stream reads every
//! chunk that is ready before it decodes one frame, so many small frames sent fast
//! would otherwise pile up in its buffer. Paced, the codec never holds more than one
//! frame, and what the client sends beyond waits in the HTTP layer's bounded buffer
//! (then in the socket: back-pressure).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use actix_web::error::PayloadError;
use actix_web::web::Bytes;
use futures_util::Stream;

use super::body_guard::ConnStats;

/// Set when a frame was refused on its declared length; the session reads it to close
/// with 1009 (message too big).
#[derive(Debug, Clone, Default)]
pub struct Refused(Arc<AtomicBool>);

impl Refused {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Where in the frame the next byte belongs.
#[derive(Debug, Clone, Copy)]
enum Frame {
    /// Header bytes seen so far (2 to 14).
    Header { bytes: [u8; 14], have: usize },
    /// Payload bytes still to come.
    Payload { left: u64 },
}

const NEW_FRAME: Frame = Frame::Header {
    bytes: [0; 14],
    have: 0,
};

/// The header's length, once its second byte is known: 2, plus 2 or 8 for an extended
/// length, plus 4 for the mask.
fn header_len(second: u8) -> usize {
    let ext = match second & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    2 + ext + mask
}

/// The payload length a complete header declares.
fn declared_len(header: &[u8]) -> u64 {
    match header[1] & 0x7F {
        126 => u64::from(u16::from_be_bytes([header[2], header[3]])),
        127 => {
            let mut be = [0u8; 8];
            be.copy_from_slice(&header[2..10]);
            u64::from_be_bytes(be)
        }
        n => u64::from(n),
    }
}

/// What one chunk holds for the codec.
#[derive(Debug, PartialEq, Eq)]
enum Scan {
    /// Pass this many bytes; `true` when a frame ends there.
    Pass(usize, bool),
    /// A frame declares more than the limit.
    Refuse,
}

/// Follows frame boundaries across chunks.
#[derive(Debug)]
struct Tracker {
    frame: Frame,
    limit: u64,
}

impl Tracker {
    fn scan(&mut self, data: &[u8]) -> Scan {
        let mut i = 0;
        while i < data.len() {
            match &mut self.frame {
                Frame::Header { bytes, have } => {
                    bytes[*have] = data[i];
                    *have += 1;
                    i += 1;
                    if *have < 2 || *have < header_len(bytes[1]) {
                        continue;
                    }
                    let len = declared_len(&bytes[..*have]);
                    if len > self.limit {
                        return Scan::Refuse;
                    }
                    if len == 0 {
                        self.frame = NEW_FRAME;
                        return Scan::Pass(i, true);
                    }
                    self.frame = Frame::Payload { left: len };
                }
                Frame::Payload { left } => {
                    let take = (*left).min((data.len() - i) as u64);
                    *left -= take;
                    i += take as usize;
                    if *left == 0 {
                        self.frame = NEW_FRAME;
                        return Scan::Pass(i, true);
                    }
                }
            }
        }
        Scan::Pass(i, false)
    }
}

/// The request payload of a websocket, checked frame by frame (see the module notes).
pub struct FrameGuard<S> {
    inner: S,
    tracker: Tracker,
    /// What comes after a frame's end, passed at the next read batch: the rest of its
    /// chunk, or what the payload gave when asked right after (a chunk, its end or an
    /// error: the frame before it is decoded first).
    held: Option<Option<Result<Bytes, PayloadError>>>,
    /// A frame ended in what was just passed: end this read batch.
    frame_ended: bool,
    done: bool,
    refused: Refused,
    stats: Arc<ConnStats>,
}

impl<S> FrameGuard<S> {
    /// Frames up to `limit` payload bytes pass (the codec's `max_size`, so that both
    /// agree on what is too big).
    pub fn new(inner: S, limit: usize, refused: Refused, stats: Arc<ConnStats>) -> Self {
        FrameGuard {
            inner,
            tracker: Tracker {
                frame: NEW_FRAME,
                limit: limit as u64,
            },
            held: None,
            frame_ended: false,
            done: false,
            refused,
            stats,
        }
    }
}

impl<S> Stream for FrameGuard<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if this.frame_ended {
            // The codec decodes the frame it has before it reads on. When nothing of
            // the next one is here, the payload's waker is registered by asking it:
            // the usual case (a message, then its reply) costs no extra poll. When
            // something is, it waits for the next batch, and this task wakes itself so
            // that the batch does not wait on the socket.
            this.frame_ended = false;
            if this.held.is_none() {
                match Pin::new(&mut this.inner).poll_next(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(next) => this.held = Some(next),
                }
            }
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let next = match this.held.take() {
            Some(next) => next,
            None => match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Ready(next) => next,
                Poll::Pending => return Poll::Pending,
            },
        };
        let mut chunk = match next {
            Some(Ok(chunk)) => chunk,
            other => return Poll::Ready(other),
        };
        match this.tracker.scan(&chunk) {
            Scan::Pass(n, ended) => {
                if n < chunk.len() {
                    this.held = Some(Some(Ok(chunk.split_off(n))));
                }
                this.frame_ended = ended;
                Poll::Ready(Some(Ok(chunk)))
            }
            Scan::Refuse => {
                this.done = true;
                this.refused.0.store(true, Ordering::Relaxed);
                this.stats.ws_frames_refused.fetch_add(1, Ordering::Relaxed);
                Poll::Ready(Some(Err(PayloadError::Overflow)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(limit: u64) -> Tracker {
        Tracker {
            frame: NEW_FRAME,
            limit,
        }
    }

    /// A masked client frame header declaring `len` payload bytes.
    fn header(len: u64) -> Vec<u8> {
        let mut h = vec![0x81];
        if len < 126 {
            h.push(0x80 | len as u8);
        } else if len <= u64::from(u16::MAX) {
            h.push(0x80 | 126);
            h.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            h.push(0x80 | 127);
            h.extend_from_slice(&len.to_be_bytes());
        }
        h.extend_from_slice(&[1, 2, 3, 4]);
        h
    }

    #[test]
    fn frames_are_cut_at_their_ends() {
        let mut t = tracker(1000);
        let mut data = header(3);
        data.extend_from_slice(b"abc");
        data.extend_from_slice(&header(0));
        assert_eq!(t.scan(&data), Scan::Pass(9, true));
        assert_eq!(t.scan(&data[9..]), Scan::Pass(6, true));
    }

    #[test]
    fn a_header_split_across_chunks_is_followed() {
        let mut t = tracker(100_000);
        let mut data = header(70_000);
        data.extend_from_slice(&[0; 10]);
        for b in &data {
            assert_eq!(t.scan(std::slice::from_ref(b)), Scan::Pass(1, false));
        }
        assert!(matches!(t.frame, Frame::Payload { left } if left == 70_000 - 10));
    }

    #[test]
    fn a_declared_length_over_the_limit_is_refused_at_its_header() {
        let mut t = tracker(65_536);
        let data = header(1 << 40);
        assert_eq!(t.scan(&data[..5]), Scan::Pass(5, false));
        assert_eq!(t.scan(&data[5..]), Scan::Refuse);
        let mut t = tracker(65_536);
        assert_eq!(t.scan(&header(65_536)), Scan::Pass(14, false));
        let mut t = tracker(65_536);
        assert_eq!(t.scan(&header(65_537)), Scan::Refuse);
    }

    /// A masked text frame with `len` payload bytes.
    fn frame(len: usize) -> Vec<u8> {
        let mut f = header(len as u64);
        f.extend(std::iter::repeat_n(b'x', len));
        f
    }

    /// Counts the wake-ups of the task that polls.
    #[derive(Default)]
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl futures_util::task::ArcWake for Wakes {
        fn wake_by_ref(arc_self: &Arc<Self>) {
            arc_self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The guard over `chunks`, then a payload that waits.
    fn guard(
        chunks: Vec<Result<Bytes, PayloadError>>,
    ) -> FrameGuard<impl Stream<Item = Result<Bytes, PayloadError>> + Unpin> {
        use futures_util::StreamExt;
        let inner = futures_util::stream::iter(chunks).chain(futures_util::stream::pending());
        FrameGuard::new(
            inner,
            1000,
            Refused::default(),
            Arc::new(ConnStats::default()),
        )
    }

    fn poll(
        g: &mut FrameGuard<impl Stream<Item = Result<Bytes, PayloadError>> + Unpin>,
        wakes: &Arc<Wakes>,
    ) -> Poll<Option<Result<Bytes, PayloadError>>> {
        let waker = futures_util::task::waker(wakes.clone());
        Pin::new(g).poll_next(&mut Context::from_waker(&waker))
    }

    #[test]
    fn one_frame_per_read_batch_and_no_extra_wake_when_nothing_follows() {
        let wakes = Arc::new(Wakes::default());
        // A frame alone in its chunk: passed, then the batch ends waiting on the
        // payload, with no wake-up of its own.
        let mut g = guard(vec![Ok(Bytes::from(frame(5)))]);
        assert!(matches!(poll(&mut g, &wakes), Poll::Ready(Some(Ok(b))) if b.len() == 11));
        assert!(poll(&mut g, &wakes).is_pending());
        assert_eq!(wakes.0.load(Ordering::Relaxed), 0);
        assert!(poll(&mut g, &wakes).is_pending());

        // Two frames in one chunk, then a third chunk: one frame per batch, each
        // batch ended with a wake-up so that the next is not left waiting.
        let mut two = frame(3);
        two.extend(frame(4));
        let mut g = guard(vec![Ok(Bytes::from(two)), Ok(Bytes::from(frame(2)))]);
        assert!(matches!(poll(&mut g, &wakes), Poll::Ready(Some(Ok(b))) if b.len() == 9));
        assert!(poll(&mut g, &wakes).is_pending());
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1);
        assert!(matches!(poll(&mut g, &wakes), Poll::Ready(Some(Ok(b))) if b.len() == 10));
        assert!(poll(&mut g, &wakes).is_pending());
        assert_eq!(wakes.0.load(Ordering::Relaxed), 2);
        assert!(matches!(poll(&mut g, &wakes), Poll::Ready(Some(Ok(b))) if b.len() == 8));
        assert!(poll(&mut g, &wakes).is_pending());
        assert_eq!(wakes.0.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn an_error_after_a_frame_comes_after_that_frame() {
        let wakes = Arc::new(Wakes::default());
        let mut g = guard(vec![
            Ok(Bytes::from(frame(5))),
            Err(PayloadError::Incomplete(None)),
        ]);
        assert!(matches!(poll(&mut g, &wakes), Poll::Ready(Some(Ok(_)))));
        // The codec decodes the frame before it hears of the error.
        assert!(poll(&mut g, &wakes).is_pending());
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1);
        assert!(matches!(poll(&mut g, &wakes), Poll::Ready(Some(Err(_)))));
    }

    #[test]
    fn unmasked_headers_are_measured_too() {
        // The codec refuses them (1002); the tracker must still not misread the length.
        let mut t = tracker(10);
        assert_eq!(t.scan(&[0x81, 126, 0, 11]), Scan::Refuse);
    }
}
