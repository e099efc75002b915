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

use crate::connections::{Admitted, ClientIo, HeadTimer, Limits, Open, Reads};
use crate::proxy::{self, Peer, Proxy};
use crate::upstream::{Driver, Upstreams};

/// Serves `proxy` on `listener` with `loops` event loops until `stop` is cancelled,
/// then lets requests in flight finish and returns when every loop has. `limits`
/// bounds each connection's head and idle time and how many are open at once.
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
    limits: Limits,
    stop: CancellationToken,
) -> std::io::Result<()> {
    // However this ends (stopped, failed, or the future dropped), the other loops end.
    let _others_stop = stop.clone().drop_guard();
    let mut handoffs = Vec::new();
    let mut finished = Vec::new();
    for index in 1..loops.max(1) {
        let (handoff, handed) = mpsc::unbounded_channel();
        finished.push(spawn_loop(
            index,
            handed,
            Arc::clone(&proxy),
            limits,
            stop.clone(),
        )?);
        handoffs.push(handoff);
    }
    let accepted = accept(listener, proxy, handoffs, limits, stop).await;
    for loop_done in finished {
        // A loop whose thread died without answering has nothing left to finish.
        let _ = loop_done.await;
    }
    accepted
}

/// A connection accepted by the first loop for another one.
type Handoff = (std::net::TcpStream, SocketAddr, Admitted);

/// Accepts until `stop`, dealing connections to this loop and to `handoffs` in turn,
/// then waits for this loop's connections. Dropping `handoffs` on return tells the
/// other loops that no more connections come.
async fn accept(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    handoffs: Vec<mpsc::UnboundedSender<Handoff>>,
    limits: Limits,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let mut connections = JoinSet::new();
    let mut turn = 0usize;
    let open = Open::new(limits.max_connections);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let Some(admitted) = open.admit() else {
                        refuse(&tcp, peer);
                        continue;
                    };
                    let slot = turn % (handoffs.len() + 1);
                    turn = turn.wrapping_add(1);
                    let kept = match slot.checked_sub(1).and_then(|i| handoffs.get(i)) {
                        None => Some((tcp, admitted)),
                        Some(handoff) => hand_off(handoff, tcp, peer, admitted),
                    };
                    if let Some((tcp, admitted)) = kept {
                        connections.spawn(connection(
                            tcp,
                            peer,
                            Arc::clone(&proxy),
                            limits,
                            admitted,
                            stop.clone(),
                        ));
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

/// A connection over the cap: told so (if its socket takes the answer at once) and
/// closed, without a task or a read.
fn refuse(tcp: &TcpStream, peer: SocketAddr) {
    tracing::warn!(%peer, "connection refused: as many connections are open as allowed");
    let _ = tcp.try_write(crate::connections::over_capacity_answer());
}

/// Gives `tcp` to another loop; hands it back when that loop is gone.
fn hand_off(
    handoff: &mpsc::UnboundedSender<Handoff>,
    tcp: TcpStream,
    peer: SocketAddr,
    admitted: Admitted,
) -> Option<(TcpStream, Admitted)> {
    let std_tcp = match tcp.into_std() {
        Ok(std_tcp) => std_tcp,
        Err(e) => {
            tracing::debug!(error = %e, %peer, "connection lost before it was handed over");
            return None;
        }
    };
    match handoff.send((std_tcp, peer, admitted)) {
        Ok(()) => None,
        Err(mpsc::error::SendError((std_tcp, _, admitted))) => {
            TcpStream::from_std(std_tcp).ok().map(|tcp| (tcp, admitted))
        }
    }
}

/// Starts loop `index` on a thread of its own. It serves the connections `handed`
/// brings until the sender is dropped, then finishes them; the returned receiver
/// learns when it has.
fn spawn_loop(
    index: usize,
    mut handed: mpsc::UnboundedReceiver<Handoff>,
    proxy: Arc<Proxy>,
    limits: Limits,
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
                            Some((std_tcp, peer, admitted)) => match TcpStream::from_std(std_tcp) {
                                Ok(tcp) => {
                                    connections.spawn(connection(
                                        tcp,
                                        peer,
                                        Arc::clone(&proxy),
                                        limits,
                                        admitted,
                                        stop.clone(),
                                    ));
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

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
    limits: Limits,
    // Held until the connection closes: its place under the cap.
    _admitted: Admitted,
    stop: CancellationToken,
) {
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
    let reads = Arc::new(Reads::default());
    let served = http1::Builder::new()
        .timer(HeadTimer::new(Arc::clone(&reads), limits))
        // Turns the timer on; how long a wait lasts is the timer's call.
        .header_read_timeout(limits.idle_timeout)
        .serve_connection(TokioIo::new(ClientIo::new(tcp, reads)), service);
    let mut served = pin!(served);
    let mut upstream_io = FuturesUnordered::new();
    // Made once: a `cancelled()` made per wake-up would register with (and leave) the
    // token's waiter list, which every connection of every loop shares, each time.
    let mut stopped = pin!(stop.cancelled());
    let mut stopping = false;
    let wakes = Wakes::new();
    let done = poll_fn(|cx| {
        wakes.task.waker.register(cx.waker());
        for _ in 0..Wakes::MAX_PASSES {
            wakes.task.polling.store(true, Ordering::SeqCst);
            if wakes.client.take()
                && let Poll::Ready(done) = served.as_mut().poll(&mut wakes.client.context())
            {
                return Poll::Ready(done);
            }
            if wakes.handed.take() {
                while let Poll::Ready(Some(driver)) =
                    drivers_rx.poll_recv(&mut wakes.handed.context())
                {
                    upstream_io.push(driver);
                    wakes.upstream.mark();
                }
            }
            // A driver is done when its connection has closed; the set is empty
            // (`None`) while no upstream connection is open, until the next push.
            if wakes.upstream.take() {
                while let Poll::Ready(Some(())) =
                    upstream_io.poll_next_unpin(&mut wakes.upstream.context())
                {}
            }
            if !stopping
                && wakes.stop.take()
                && stopped.as_mut().poll(&mut wakes.stop.context()).is_ready()
            {
                stopping = true;
                served.as_mut().graceful_shutdown();
                // Polled again, so that an idle connection closes now.
                wakes.client.mark();
            }
            if !wakes.end_pass() {
                return Poll::Pending;
            }
        }
        // Still woken after as many passes: other tasks (and tokio's budget, which
        // makes a resource answer `Pending` once spent) come first.
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
    if let Err(e) = done {
        tracing::debug!(error = %e, %peer, "client connection ended with an error");
    }
}

/// The wakers of one connection's task: one per thing it waits for (its client
/// connection and the request in flight, an upstream connection handed over, the
/// upstream connections' I/O, the stop signal), each polled only when its own waker
/// fired, and the task itself woken only when it is not already polling.
///
/// A connection's task is woken for one thing at a time, and a request sets off a
/// chain of them inside the task: the request handed to the upstream connection, its
/// answer handed back, the body asked for and handed over. Polling every part on each
/// wake-up finds nothing to do but still costs (a poll of hyper's server dispatcher is
/// about as dear as one that reads a request), and going back through tokio's
/// scheduler for each link of the chain costs a reschedule each time. So a wake-up
/// during a poll only marks its part, and the poll goes round again while a part is
/// marked: a request costs the task two polls (its bytes arrive, its answer's bytes
/// arrive), not five (callgrind, `finflow-bench instructions`).
struct Wakes {
    task: Arc<Task>,
    client: Branch,
    handed: Branch,
    upstream: Branch,
    stop: Branch,
}

/// The task's own waker, and whether the task is polling now.
struct Task {
    waker: AtomicWaker,
    polling: AtomicBool,
}

impl Wakes {
    /// Passes of one poll before the task yields to the other tasks of its loop.
    const MAX_PASSES: usize = 8;

    fn new() -> Self {
        let task = Arc::new(Task {
            waker: AtomicWaker::new(),
            polling: AtomicBool::new(false),
        });
        Self {
            client: Branch::new(&task),
            handed: Branch::new(&task),
            upstream: Branch::new(&task),
            stop: Branch::new(&task),
            task,
        }
    }

    /// Ends a pass; whether a part was woken meanwhile, so another pass is due. A
    /// wake-up after this sees `polling` false and wakes the task (both sides
    /// `SeqCst`: either the waker sees the task is not polling or the task sees the
    /// mark).
    fn end_pass(&self) -> bool {
        self.task.polling.store(false, Ordering::SeqCst);
        [&self.client, &self.handed, &self.upstream, &self.stop]
            .iter()
            .any(|branch| branch.flag.woken.load(Ordering::SeqCst))
    }
}

/// One part of a connection task, with a waker of its own.
struct Branch {
    flag: Arc<Flag>,
    waker: Waker,
}

struct Flag {
    woken: AtomicBool,
    task: Arc<Task>,
}

impl Branch {
    /// Marked woken: every part is polled once first.
    fn new(task: &Arc<Task>) -> Self {
        let flag = Arc::new(Flag {
            woken: AtomicBool::new(true),
            task: Arc::clone(task),
        });
        Self {
            waker: Waker::from(Arc::clone(&flag)),
            flag,
        }
    }

    /// Whether the part was woken since it was last taken (and so is due a poll).
    fn take(&self) -> bool {
        self.flag.woken.swap(false, Ordering::SeqCst)
    }

    /// The context to poll the part with.
    fn context(&self) -> Context<'_> {
        Context::from_waker(&self.waker)
    }

    /// Has the part polled in the next pass, though nothing woke it.
    fn mark(&self) {
        self.flag.woken.store(true, Ordering::SeqCst);
    }
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        // While the task polls, its pass loop sees the mark; waking it too would
        // only poll it once more, for nothing.
        if !self.task.polling.load(Ordering::SeqCst) {
            self.task.waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// A task waker that counts its wake-ups.
    struct Counted(AtomicUsize);

    impl Wake for Counted {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_wake_up_during_a_pass_marks_its_part_and_another_pass_follows_without_waking_the_task() {
        let task = Arc::new(Counted(AtomicUsize::new(0)));
        let wakes = Wakes::new();
        wakes.task.waker.register(&Waker::from(Arc::clone(&task)));
        // Every part starts marked, so the first pass polls each once.
        assert!(wakes.client.take() && wakes.handed.take());
        assert!(wakes.upstream.take() && wakes.stop.take());

        wakes.task.polling.store(true, Ordering::SeqCst);
        wakes.client.waker.wake_by_ref();
        assert_eq!(task.0.load(Ordering::SeqCst), 0, "the task is polling");
        assert!(wakes.end_pass(), "the mark asks for another pass");
        assert!(wakes.client.take());
        assert!(!wakes.upstream.take(), "only the woken part is due");

        wakes.task.polling.store(true, Ordering::SeqCst);
        assert!(!wakes.end_pass(), "nothing woke: the task may sleep");
        wakes.upstream.waker.wake_by_ref();
        assert_eq!(
            task.0.load(Ordering::SeqCst),
            1,
            "between polls the task is woken"
        );
        assert!(wakes.upstream.take() && !wakes.client.take());
    }

    #[test]
    fn a_wake_up_from_another_thread_while_the_task_polls_is_not_lost() {
        // Either the waker sees the task is not polling (and wakes it) or the task's
        // end of pass sees the mark: never neither.
        for _ in 0..2_000 {
            let task = Arc::new(Counted(AtomicUsize::new(0)));
            let wakes = Wakes::new();
            for branch in [&wakes.client, &wakes.handed, &wakes.upstream, &wakes.stop] {
                branch.take();
            }
            wakes.task.waker.register(&Waker::from(Arc::clone(&task)));
            wakes.task.polling.store(true, Ordering::SeqCst);
            let waker = wakes.upstream.waker.clone();
            let other = std::thread::spawn(move || waker.wake());
            let again = wakes.end_pass();
            other.join().unwrap();
            assert!(
                again || task.0.load(Ordering::SeqCst) == 1,
                "a wake-up was lost"
            );
        }
    }
}
