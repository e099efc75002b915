//! The proxy listener: HTTP/1 connections served by hyper, one task per connection.
//!
//! Each connection's task polls the client connection and the upstream connections
//! its requests opened ([`crate::upstream`]), so a request is read, checked, forwarded
//! and answered without leaving the task. On shutdown the listener closes, each
//! connection finishes the request in flight and closes, and [`serve`] returns when
//! the last one has.

use std::convert::Infallible;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use futures_util::task::AtomicWaker;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::proxy::{self, Peer, Proxy};
use crate::upstream::{Driver, Upstreams};

/// Serves `proxy` on `listener` with `loops` event loops until `stop` is cancelled,
/// then lets requests in flight finish and returns when every loop has.
///
/// The caller's task accepts and is the first loop; each other loop is a thread with a
/// single-threaded runtime, like nginx's workers. Accepted connections are dealt round
/// robin, so the loops share the connections evenly, and a connection is then served
/// whole by its loop: no request crosses threads, and a loop the scheduler delays
/// holds up only its own connections.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    loops: usize,
    stop: CancellationToken,
) -> std::io::Result<()> {
    // However this ends (stopped, failed, or the future dropped), the other loops end.
    let _others_stop = stop.clone().drop_guard();
    let mut handoffs = Vec::new();
    let mut finished = Vec::new();
    for index in 1..loops.max(1) {
        let (handoff, handed) = mpsc::unbounded_channel();
        finished.push(spawn_loop(index, handed, Arc::clone(&proxy), stop.clone())?);
        handoffs.push(handoff);
    }
    let accepted = accept(listener, proxy, handoffs, stop).await;
    for loop_done in finished {
        // A loop whose thread died without answering has nothing left to finish.
        let _ = loop_done.await;
    }
    accepted
}

/// A connection accepted by the first loop for another one.
type Handoff = (std::net::TcpStream, SocketAddr);

/// Accepts until `stop`, dealing connections to this loop and to `handoffs` in turn,
/// then waits for this loop's connections. Dropping `handoffs` on return tells the
/// other loops that no more connections come.
async fn accept(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    handoffs: Vec<mpsc::UnboundedSender<Handoff>>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let mut connections = JoinSet::new();
    let mut turn = 0usize;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let slot = turn % (handoffs.len() + 1);
                    turn = turn.wrapping_add(1);
                    let tcp = match slot.checked_sub(1).and_then(|i| handoffs.get(i)) {
                        None => Some(tcp),
                        Some(handoff) => hand_off(handoff, tcp, peer),
                    };
                    if let Some(tcp) = tcp {
                        connections.spawn(connection(tcp, peer, Arc::clone(&proxy), stop.clone()));
                    }
                }
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    // Out of file descriptors and the like: accepting again at once
                    // would spin.
                    tracing::error!(error = %e, "accept failed; retrying in a second");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    drop(handoffs);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Gives `tcp` to another loop; hands it back when that loop is gone.
fn hand_off(
    handoff: &mpsc::UnboundedSender<Handoff>,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<TcpStream> {
    let std_tcp = match tcp.into_std() {
        Ok(std_tcp) => std_tcp,
        Err(e) => {
            tracing::debug!(error = %e, %peer, "connection lost before it was handed over");
            return None;
        }
    };
    match handoff.send((std_tcp, peer)) {
        Ok(()) => None,
        Err(mpsc::error::SendError((std_tcp, _))) => TcpStream::from_std(std_tcp).ok(),
    }
}

/// Starts loop `index` on a thread of its own. It serves the connections `handed`
/// brings until the sender is dropped, then finishes them; the returned receiver
/// learns when it has.
fn spawn_loop(
    index: usize,
    mut handed: mpsc::UnboundedReceiver<Handoff>,
    proxy: Arc<Proxy>,
    stop: CancellationToken,
) -> std::io::Result<tokio::sync::oneshot::Receiver<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (done, finished) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("proxy-loop-{index}"))
        .spawn(move || {
            runtime.block_on(async move {
                let mut connections = JoinSet::new();
                loop {
                    tokio::select! {
                        next = handed.recv() => match next {
                            Some((std_tcp, peer)) => match TcpStream::from_std(std_tcp) {
                                Ok(tcp) => {
                                    connections.spawn(connection(tcp, peer, Arc::clone(&proxy), stop.clone()));
                                }
                                Err(e) => tracing::warn!(error = %e, %peer, "cannot take over a connection"),
                            },
                            None => break,
                        },
                        Some(_) = connections.join_next(), if !connections.is_empty() => {}
                    }
                }
                while connections.join_next().await.is_some() {}
            });
            let _ = done.send(());
        })?;
    Ok(finished)
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    )
}

/// What one client connection's requests share. One `Arc` per connection, cloned per
/// request: the process-wide [`Proxy`] is cloned once per connection, so requests on
/// different threads never touch a shared reference count.
struct Connection {
    proxy: Arc<Proxy>,
    upstreams: Upstreams,
    client: Peer,
}

async fn connection(tcp: TcpStream, peer: SocketAddr, proxy: Arc<Proxy>, stop: CancellationToken) {
    // Answers are small and written whole: send them at once.
    let _ = tcp.set_nodelay(true);
    let (drivers_tx, mut drivers_rx) = mpsc::unbounded_channel::<Driver>();
    let shared = Arc::new(Connection {
        proxy,
        upstreams: Upstreams::new(drivers_tx),
        client: Peer::new(peer.ip()),
    });
    let service = service_fn(move |request: hyper::Request<Incoming>| {
        let shared = Arc::clone(&shared);
        async move {
            Ok::<_, Infallible>(
                proxy::handle(&shared.proxy, &shared.upstreams, &shared.client, request).await,
            )
        }
    });
    let served = http1::Builder::new().serve_connection(TokioIo::new(tcp), service);
    let mut served = pin!(served);
    let mut upstream_io = FuturesUnordered::new();
    // Made once: a `cancelled()` made per wake-up would register with (and leave) the
    // token's waiter list, which every connection of every loop shares, each time.
    let mut stopped = pin!(stop.cancelled());
    let mut stopping = false;
    // The upstream connections' set already polls only those that were woken.
    let (client, handed, stop_branch) = (Branch::new(), Branch::new(), Branch::new());
    loop {
        tokio::select! {
            biased;
            done = poll_fn(|cx| client.poll(cx, |cx| served.as_mut().poll(cx))) => {
                if let Err(e) = done {
                    tracing::debug!(error = %e, %peer, "client connection ended with an error");
                }
                break;
            }
            Some(driver) = poll_fn(|cx| handed.poll(cx, |cx| drivers_rx.poll_recv(cx))) => {
                upstream_io.push(driver);
            }
            Some(()) = upstream_io.next(), if !upstream_io.is_empty() => {}
            () = poll_fn(|cx| stop_branch.poll(cx, |cx| stopped.as_mut().poll(cx))), if !stopping => {
                stopping = true;
                served.as_mut().graceful_shutdown();
                // Polled again, so that an idle connection closes now.
                client.mark_woken();
            }
        }
    }
}

/// One branch of a connection task's `select!`, polled only when its own waker fired
/// since its last poll (or it was never polled).
///
/// A connection's task is woken for one thing at a time: its client socket, an answer
/// for the request in flight, an upstream socket, a connection handed over, the stop
/// signal. Polling every other branch on each wake-up finds nothing to do but still
/// costs: a poll of hyper's server dispatcher is about as dear as one that reads a
/// request. With a waker per branch for the client connection alone, callgrind counted
/// 5% fewer instructions per proxied request; the upstream connections'
/// `FuturesUnordered` does the same for them.
struct Branch {
    flag: Arc<Flag>,
    waker: Waker,
}

struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Branch {
    fn new() -> Self {
        let flag = Arc::new(Flag {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Self {
            waker: Waker::from(Arc::clone(&flag)),
            flag,
        }
    }

    /// Runs `poll` with the branch's waker if it was woken, else is pending.
    fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        // Registered before the flag is read, so a wake-up in between is not lost.
        self.flag.task.register(cx.waker());
        if !self.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let polled = poll(&mut Context::from_waker(&self.waker));
        if polled.is_ready() {
            // A stream that yielded an item registers no waker and will not wake for
            // the next one already queued: it is polled again until it is pending.
            self.mark_woken();
        }
        polled
    }

    /// Has the branch polled at the next turn, though nothing woke it.
    fn mark_woken(&self) {
        self.flag.woken.store(true, Ordering::Release);
    }
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}
