//! Limits on client connections, against clients that hold connections without using
//! them (slowloris): a request's head must arrive within `HEADER_READ_TIMEOUT_MS` of its
//! first byte (of the connection, for the first request), a kept-alive connection may
//! sit idle `IDLE_TIMEOUT_SECS` between requests, and at most `MAX_CONNECTIONS` are
//! open at once; more are answered 503 and closed.
//!
//! hyper has one timer for a connection waiting for a request head, started when it
//! begins to wait, so on its own one number would bound both the head and the idle time
//! between requests: short enough for slowloris, it would also close kept-alive
//! connections a load balancer expects to reuse. [`HeadTimer`] gives hyper a sleep that
//! tells the two apart by whether a byte has arrived ([`ClientIo`] counts reads).
//!
//! [`ClientIo`] also gives the answers hyper writes by itself to a head it cannot parse
//! (400, 414, 431, sent with no body) the JSON envelope every other answer has, and then
//! closes as nginx's lingering close does: the rest of the request is read and dropped
//! for a moment, because closing with unread bytes sends a reset that can destroy the
//! answer before the client reads it.

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use finflow_platform::error::{ErrorBody, ErrorCode, ErrorEnvelope};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The limits of the proxy listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// From a request's first byte (a connection's first request: from the connection)
    /// to the end of its head.
    pub header_read_timeout: Duration,
    /// Between requests on a kept-alive connection, while nothing arrives.
    pub idle_timeout: Duration,
    /// Client connections open at once.
    pub max_connections: usize,
}

// ---------------------------------------------------------------------------------
// The head timer

/// Reads that returned bytes on one connection: written by its [`ClientIo`], read by
/// its [`HeadTimer`]'s sleeps. Both live on the connection's task.
#[derive(Debug, Default)]
pub struct Reads(AtomicU64);

impl Reads {
    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// hyper's timer for one connection. hyper asks it for a sleep each time it starts
/// waiting for a request head and closes the connection when the sleep ends.
#[derive(Debug)]
pub struct HeadTimer {
    reads: Arc<Reads>,
    limits: Limits,
    /// Whether the connection's first head has been waited for: until then the
    /// connection is new, not idle, and the head timeout runs from its start.
    waited: AtomicBool,
}

impl HeadTimer {
    pub fn new(reads: Arc<Reads>, limits: Limits) -> Self {
        Self {
            reads,
            limits,
            waited: AtomicBool::new(false),
        }
    }

    fn head_sleep(&self) -> HeadSleep {
        let new_connection = !self.waited.swap(true, Ordering::Relaxed);
        let first_wait = if new_connection {
            self.limits.header_read_timeout
        } else {
            self.limits.idle_timeout
        };
        HeadSleep {
            reads: Arc::clone(&self.reads),
            seen: self.reads.get(),
            receiving: new_connection,
            header_read_timeout: self.limits.header_read_timeout,
            sleep: Box::pin(tokio::time::sleep(first_wait)),
        }
    }
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        hyper::rt::Timer::sleep(&hyper_util::rt::TokioTimer::new(), duration)
    }

    /// hyper's deadline is "the head by then"; the sleep works out its own.
    fn sleep_until(&self, _deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(self.head_sleep())
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, _deadline: std::time::Instant) {
        *sleep = Box::pin(self.head_sleep());
    }
}

/// Waits for a request head: `idle_timeout` while nothing arrives, then
/// `header_read_timeout` from the first byte that does.
struct HeadSleep {
    reads: Arc<Reads>,
    /// [`Reads`] when the wait began: a change means the head has begun.
    seen: u64,
    receiving: bool,
    header_read_timeout: Duration,
    sleep: Pin<Box<Sleep>>,
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // hyper polls this each time a read left the head incomplete, so the first
        // byte is seen as it arrives.
        if !self.receiving && self.reads.get() != self.seen {
            self.receiving = true;
            let deadline = Instant::now() + self.header_read_timeout;
            self.sleep.as_mut().reset(deadline);
        }
        self.sleep.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for HeadSleep {}

// ---------------------------------------------------------------------------------
// The client connection's I/O

/// A client connection: counts reads for [`HeadTimer`] and writes hyper's bodiless
/// answers to unparsable heads in the envelope.
pub struct ClientIo<T> {
    inner: T,
    reads: Arc<Reads>,
    /// An envelope answer being written in place of hyper's: the bytes, how many are
    /// written, and the length of hyper's answer (what it is told was written).
    replacing: Option<(&'static [u8], usize, usize)>,
    /// Set once an envelope answer went out: the close lingers until then.
    linger: Option<Pin<Box<Sleep>>>,
}

/// How long, and how many bytes, a close after an error answer reads and drops.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 16 << 20;

impl<T> ClientIo<T> {
    pub fn new(inner: T, reads: Arc<Reads>) -> Self {
        Self {
            inner,
            reads,
            replacing: None,
            linger: None,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ClientIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.reads.0.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> ClientIo<T> {
    /// Writes the rest of an envelope answer; `Ready` with hyper's answer's length once
    /// all of it is written.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        while let Some((bytes, written, claimed)) = self.replacing {
            if written == bytes.len() {
                self.replacing = None;
                self.linger = Some(Box::pin(tokio::time::sleep(LINGER)));
                return Poll::Ready(Ok(claimed));
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[written..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => self.replacing = Some((bytes, written + n, claimed)),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        unreachable!("called while replacing")
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ClientIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.replacing.is_none() {
            match automatic_answer(buf) {
                Some(envelope) => self.replacing = Some((envelope, 0, buf.len())),
                None => return Pin::new(&mut self.inner).poll_write(cx, buf),
            }
        }
        self.poll_replacement(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.replacing.is_none() {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &**b);
            let total: usize = bufs.iter().map(|b| b.len()).sum();
            match automatic_answer(first).filter(|_| first.len() == total) {
                Some(envelope) => self.replacing = Some((envelope, 0, total)),
                None => return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs),
            }
        }
        self.poll_replacement(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let shut = Pin::new(&mut self.inner).poll_shutdown(cx);
        if shut.is_pending() || self.linger.is_none() {
            return shut;
        }
        // The answer and our FIN are out; read and drop what the client still sends
        // until it closes too, or for LINGER at most.
        let this = &mut *self;
        let mut scratch = [0u8; 8192];
        let mut dropped = 0;
        while dropped < LINGER_BYTES {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => dropped += buf.filled().len(),
                Poll::Ready(_) => return shut,
                Poll::Pending => {
                    let expired = this
                        .linger
                        .as_mut()
                        .is_some_and(|l| l.as_mut().poll(cx).is_ready());
                    return if expired { shut } else { Poll::Pending };
                }
            }
        }
        shut
    }
}

/// The envelope answer for `head` when it is one hyper wrote by itself: a status line
/// of its parse errors and no body (every answer of ours has one).
fn automatic_answer(head: &[u8]) -> Option<&'static [u8]> {
    static ANSWERS: std::sync::OnceLock<[(&'static [u8], Vec<u8>); 3]> = std::sync::OnceLock::new();
    if !head.starts_with(b"HTTP/1.1 4") || !contains(head, b"\r\ncontent-length: 0\r\n") {
        return None;
    }
    let answers = ANSWERS.get_or_init(|| {
        [
            (
                &b"HTTP/1.1 431 Request Header Fields Too Large\r\n"[..],
                envelope_answer(
                    "431 Request Header Fields Too Large",
                    ErrorCode::HeadersTooLarge,
                    "the request's headers are too large",
                    "headers_too_large",
                ),
            ),
            (
                &b"HTTP/1.1 414 URI Too Long\r\n"[..],
                envelope_answer(
                    "414 URI Too Long",
                    ErrorCode::UriTooLong,
                    "the request's URI is too long",
                    "uri_too_long",
                ),
            ),
            (
                &b"HTTP/1.1 400 Bad Request\r\n"[..],
                envelope_answer(
                    "400 Bad Request",
                    ErrorCode::ValidationError,
                    "the request is not well-formed HTTP/1.1",
                    "malformed_request",
                ),
            ),
        ]
    });
    answers
        .iter()
        .find(|(status_line, _)| head.starts_with(status_line))
        .map(|(_, answer)| answer.as_slice())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    contains_at(haystack, needle).is_some()
}

/// A whole answer in the envelope that closes the connection, as bytes.
fn envelope_answer(status: &str, code: ErrorCode, message: &str, reason: &str) -> Vec<u8> {
    let body = serde_json::to_vec(&ErrorEnvelope {
        success: false,
        error: ErrorBody {
            code,
            message: message.to_owned(),
            details: Some(serde_json::json!({ "reason": reason })),
        },
    })
    .expect("an envelope serializes");
    let mut answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    answer
}

// ---------------------------------------------------------------------------------
// The connection cap

/// Client connections open now, shared by every event loop.
#[derive(Debug)]
pub struct Open {
    count: AtomicUsize,
    max: usize,
}

/// One open connection; dropping it frees its place.
#[derive(Debug)]
pub struct Admitted(Arc<Open>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Open {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            count: AtomicUsize::new(0),
            max,
        })
    }

    /// A place for one more connection, if there is one.
    pub fn admit(self: &Arc<Self>) -> Option<Admitted> {
        let mut now = self.count.load(Ordering::Relaxed);
        loop {
            if now >= self.max {
                return None;
            }
            match self.count.compare_exchange_weak(
                now,
                now + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(Admitted(Arc::clone(self))),
                Err(actual) => now = actual,
            }
        }
    }
}

/// What a connection over the cap is told before it is closed.
pub fn over_capacity_answer() -> &'static [u8] {
    static ANSWER: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    ANSWER.get_or_init(|| {
        let mut answer = envelope_answer(
            "503 Service Unavailable",
            ErrorCode::DependencyUnavailable,
            "the proxy has as many connections open as it takes, try again later",
            "too_many_connections",
        );
        // Before the blank line that ends the head.
        let at = contains_at(&answer, b"\r\n\r\n").expect("a head");
        answer.splice(at..at, b"\r\nretry-after: 1".iter().copied());
        answer
    })
}

fn contains_at(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    const LIMITS: Limits = Limits {
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(75),
        max_connections: 2,
    };

    fn head_sleep(timer: &HeadTimer) -> Pin<Box<dyn hyper::rt::Sleep>> {
        hyper::rt::Timer::sleep_until(timer, std::time::Instant::now())
    }

    async fn ends_by(sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, after: Duration) -> bool {
        tokio::time::timeout(after, poll_fn(|cx| sleep.as_mut().poll(cx)))
            .await
            .is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_has_the_head_timeout_to_send_its_first_head() {
        let timer = HeadTimer::new(Arc::default(), LIMITS);
        let mut sleep = head_sleep(&timer);
        assert!(!ends_by(&mut sleep, Duration::from_millis(9_900)).await);
        assert!(ends_by(&mut sleep, Duration::from_millis(200)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_kept_alive_connection_may_idle_longer_than_the_head_timeout() {
        let reads = Arc::new(Reads::default());
        let timer = HeadTimer::new(Arc::clone(&reads), LIMITS);
        drop(head_sleep(&timer));
        let mut idle = head_sleep(&timer);
        assert!(!ends_by(&mut idle, Duration::from_secs(74)).await);
        assert!(ends_by(&mut idle, Duration::from_secs(2)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn once_a_byte_arrives_the_head_must_follow_within_the_head_timeout() {
        let reads = Arc::new(Reads::default());
        let timer = HeadTimer::new(Arc::clone(&reads), LIMITS);
        drop(head_sleep(&timer));
        let mut idle = head_sleep(&timer);
        assert!(!ends_by(&mut idle, Duration::from_secs(30)).await);
        reads.0.fetch_add(1, Ordering::Relaxed);
        assert!(!ends_by(&mut idle, Duration::from_millis(9_900)).await);
        assert!(ends_by(&mut idle, Duration::from_millis(200)).await);
    }

    async fn written_through(head: &[u8]) -> Vec<u8> {
        let (client, server) = tokio::io::duplex(64);
        let mut io = ClientIo::new(server, Arc::default());
        let head = head.to_vec();
        let writer = tokio::spawn(async move {
            io.write_all(&head).await.unwrap();
            io.shutdown().await.unwrap();
        });
        let mut client = client;
        let mut seen = Vec::new();
        client.read_to_end(&mut seen).await.unwrap();
        writer.await.unwrap();
        seen
    }

    #[tokio::test]
    async fn hypers_bodiless_431_goes_out_in_the_envelope() {
        let seen = written_through(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\
              date: Sat, 05 Dec 2026 05:00:00 GMT\r\n\r\n",
        )
        .await;
        let text = String::from_utf8(seen).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["success"], false);
        assert_eq!(body["error"]["code"], "HEADERS_TOO_LARGE");
    }

    #[tokio::test]
    async fn answers_with_a_body_pass_untouched() {
        let answer = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(written_through(answer).await, answer);
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(written_through(ok).await, ok);
    }

    #[test]
    fn the_cap_admits_up_to_its_maximum_and_frees_places_as_connections_close() {
        let open = Open::new(2);
        let first = open.admit().unwrap();
        let _second = open.admit().unwrap();
        assert!(open.admit().is_none());
        drop(first);
        assert!(open.admit().is_some());
    }

    #[test]
    fn the_over_capacity_answer_is_a_503_in_the_envelope_with_retry_after() {
        let text = std::str::from_utf8(over_capacity_answer()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        assert!(head.contains("\r\nretry-after: 1"), "{head}");
        let length: usize = head
            .split("\r\n")
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(length, body.len());
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["details"]["reason"], "too_many_connections");
    }
}
