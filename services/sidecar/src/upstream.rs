//! Upstream connections owned by one client connection, driven by that connection's
//! task.
//!
//! HTTP/1 answers one request at a time per connection, so a client connection needs
//! at most one upstream connection per upstream, and never two at once. Each client
//! connection therefore keeps its own upstream connections instead of borrowing from
//! a shared pool, and polls them in its own task ([`crate::server`]): a request and its
//! answer cross no task boundary, no pool lock and no per-request spawn, which is most
//! of what a pooled client costs over the bytes it moves. An idle client connection
//! holds its upstream connection open; when it closes, its upstream connections close
//! with it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::HOST;
use http::uri::Authority;
use http::{HeaderValue, Request, Response};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// How long connecting to an upstream (or the JWK set server) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection's I/O future, handed to the client connection's task to poll.
pub type Driver = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Why an upstream gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made (refused, unresolvable, timed out).
    #[error("connecting to {authority} failed: {cause}")]
    Connect { authority: String, cause: String },
    /// The connection failed while the request was sent or the answer read.
    #[error("the upstream connection failed: {0}")]
    Exchange(#[from] hyper::Error),
}

impl UpstreamError {
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect { .. })
    }
}

/// How much of a client's request body has gone upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodySent {
    /// Not all of it, and the upstream has not asked for more since the last part: it
    /// reads slowly, or not at all.
    Partly,
    /// Not all of it, and the upstream is waiting for the client to send more.
    AwaitingClient,
    /// All of it, at that instant.
    All(Instant),
    /// The client's connection failed before it was all there.
    Broken,
}

impl BodySent {
    /// Whether more is to come.
    pub fn is_partial(self) -> bool {
        matches!(self, Self::Partly | Self::AwaitingClient)
    }
}

/// A client's request body as it is sent upstream, telling the proxy when it is all
/// there, and meanwhile who holds it up: the client, when the upstream asked for more
/// and there is none yet, else the upstream, which takes a body only as fast as it
/// reads. The upstream's time to answer starts once the body is all there: a client
/// that sends its body slowly, or never finishes it, must not pass for an app too slow
/// to answer (the traffic analysis counts the app's timeouts against a rollout), nor an
/// app that stops reading for a slow client.
pub struct ClientBody {
    inner: Incoming,
    sent: Option<watch::Sender<BodySent>>,
}

impl ClientBody {
    /// `inner`, and a receiver of its progress if it has any to make: a body known to
    /// be empty (most requests) is all there at once and costs nothing to follow.
    pub fn new(inner: Incoming) -> (Self, Option<watch::Receiver<BodySent>>) {
        if inner.is_end_stream() {
            return (Self { inner, sent: None }, None);
        }
        let (sent, progress) = watch::channel(BodySent::Partly);
        let body = Self {
            inner,
            sent: Some(sent),
        };
        (body, Some(progress))
    }

    fn mark(&self, now: BodySent) {
        if let Some(sent) = &self.sent {
            sent.send_if_modified(|was| {
                let changes = was.is_partial() && *was != now;
                if changes {
                    *was = now;
                }
                changes
            });
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.mark(BodySent::All(Instant::now())),
            // Trailers end an HTTP/1 body, and hyper's client takes nothing after them;
            // a chunked body's end is otherwise known only from the poll that finds none.
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() || this.inner.is_end_stream() => {
                this.mark(BodySent::All(Instant::now()));
            }
            Poll::Ready(Some(Ok(_))) => this.mark(BodySent::Partly),
            Poll::Ready(Some(Err(_))) => this.mark(BodySent::Broken),
            Poll::Pending => this.mark(BodySent::AwaitingClient),
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The upstream connections of one client connection.
pub struct Upstreams {
    /// One slot per upstream: its idle connection, or none while a request uses it.
    idle: Mutex<Vec<(Authority, Option<SendRequest<ClientBody>>)>>,
    drivers: mpsc::UnboundedSender<Driver>,
}

/// Whether two upstream authorities are the same text. Authorities come from the
/// configuration, spelled the same way every time, so the byte comparison suffices
/// (`Authority`'s own `==` ignores case, byte by byte, on every request).
fn same(a: &Authority, b: &Authority) -> bool {
    a.as_str() == b.as_str()
}

impl Upstreams {
    /// Connections made here are handed to `drivers`, which the owner must poll.
    pub fn new(drivers: mpsc::UnboundedSender<Driver>) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            drivers,
        }
    }

    /// Sends `request` (its URI already in origin form) to `authority` over this
    /// connection's upstream connection, made or remade as needed. A request the
    /// upstream never received (the connection had just closed) is retried once on a
    /// new connection; one that was sent is never sent twice.
    pub async fn send(
        &self,
        authority: &Authority,
        mut request: Request<ClientBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        if !request.headers().contains_key(HOST)
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            request.headers_mut().insert(HOST, host);
        }
        let mut sender = match self.take(authority) {
            Some(sender) => sender,
            None => self.connect(authority).await?,
        };
        let mut retried = false;
        loop {
            if sender.ready().await.is_ok() {
                match sender.try_send_request(request).await {
                    Ok(response) => {
                        self.put(authority, sender);
                        return Ok(response);
                    }
                    Err(mut failed) => match failed.take_message() {
                        Some(unsent) if !retried => request = unsent,
                        _ => return Err(failed.into_error().into()),
                    },
                }
            }
            if retried {
                return Err(UpstreamError::Connect {
                    authority: authority.to_string(),
                    cause: "a new connection closed before the request was sent".to_owned(),
                });
            }
            retried = true;
            sender = self.connect(authority).await?;
        }
    }

    fn take(&self, authority: &Authority) -> Option<SendRequest<ClientBody>> {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (_, slot) = idle.iter_mut().find(|(a, _)| same(a, authority))?;
        slot.take().filter(|sender| !sender.is_closed())
    }

    /// Keeps `sender` for the next request to `authority`. The authority is stored
    /// once, when its first connection is made, not per request.
    fn put(&self, authority: &Authority, sender: SendRequest<ClientBody>) {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match idle.iter_mut().find(|(a, _)| same(a, authority)) {
            Some((_, slot)) => *slot = Some(sender),
            None => idle.push((authority.clone(), Some(sender))),
        }
    }

    async fn connect(
        &self,
        authority: &Authority,
    ) -> Result<SendRequest<ClientBody>, UpstreamError> {
        let failed = |cause: String| UpstreamError::Connect {
            authority: authority.to_string(),
            cause,
        };
        let address = (authority.host(), authority.port_u16().unwrap_or(80));
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
            .await
            .map_err(|_| failed(format!("no connection within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| failed(e.to_string()))?;
        // Small requests and answers go out at once instead of waiting for an ACK.
        let _ = tcp.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| failed(e.to_string()))?;
        let driver: Driver = Box::pin(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        if let Err(mpsc::error::SendError(driver)) = self.drivers.send(driver) {
            // The owner is gone (the client connection is closing): drive it alone.
            tokio::spawn(driver);
        }
        Ok(sender)
    }
}
