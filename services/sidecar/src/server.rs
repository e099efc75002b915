//! The proxy listener: HTTP/1 connections served by hyper, one task per connection.
//!
//! Each connection's task polls the client connection and the upstream connections
//! its requests opened ([`crate::upstream`]), so a request is read, checked, forwarded
//! and answered without leaving the task. On shutdown the listener closes, each
//! connection finishes the request in flight and closes, and [`serve`] returns when
//! the last one has.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
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

/// Serves `proxy` on `listener` until `shutdown` resolves, then lets requests in flight
/// finish.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stop = CancellationToken::new();
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    connections.spawn(connection(tcp, peer, Arc::clone(&proxy), stop.clone()));
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
    stop.cancel();
    while connections.join_next().await.is_some() {}
    Ok(())
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    )
}

async fn connection(tcp: TcpStream, peer: SocketAddr, proxy: Arc<Proxy>, stop: CancellationToken) {
    // Answers are small and written whole: send them at once.
    let _ = tcp.set_nodelay(true);
    let (drivers_tx, mut drivers_rx) = mpsc::unbounded_channel::<Driver>();
    let upstreams = Arc::new(Upstreams::new(drivers_tx));
    let client = Arc::new(Peer::new(peer.ip()));
    let service = service_fn(move |request: hyper::Request<Incoming>| {
        let proxy = Arc::clone(&proxy);
        let upstreams = Arc::clone(&upstreams);
        let client = Arc::clone(&client);
        async move { Ok::<_, Infallible>(proxy::handle(&proxy, &upstreams, &client, request).await) }
    });
    let served = http1::Builder::new().serve_connection(TokioIo::new(tcp), service);
    let mut served = pin!(served);
    let mut upstream_io = FuturesUnordered::new();
    let mut stopping = false;
    loop {
        tokio::select! {
            biased;
            done = served.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(error = %e, %peer, "client connection ended with an error");
                }
                break;
            }
            Some(driver) = drivers_rx.recv() => upstream_io.push(driver),
            Some(()) = upstream_io.next(), if !upstream_io.is_empty() => {}
            () = stop.cancelled(), if !stopping => {
                stopping = true;
                served.as_mut().graceful_shutdown();
            }
        }
    }
}
