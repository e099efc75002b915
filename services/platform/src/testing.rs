//! Test support shared by service tests and the local launcher.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Mails received by the sink: (recipients, data).
pub type Mailbox = Arc<Mutex<Vec<(Vec<String>, String)>>>;

/// A minimal SMTP server on an ephemeral loopback port: enough of RFC 5321 for a client
/// to deliver a message, which lands in the returned mailbox. A real SMTP conversation,
/// for tests and for a local platform that should not send real mail.
pub async fn smtp_sink() -> (u16, Mailbox) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mailbox: Mailbox = Arc::default();
    let store = mailbox.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let store = store.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                let _ = write.write_all(b"220 sink ESMTP\r\n").await;
                let mut recipients = Vec::new();
                while let Ok(Some(line)) = lines.next_line().await {
                    let upper = line.to_uppercase();
                    let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                        b"250 sink\r\n"
                    } else if upper.starts_with("MAIL FROM")
                        || upper.starts_with("RSET")
                        || upper.starts_with("NOOP")
                    {
                        b"250 OK\r\n"
                    } else if upper.starts_with("RCPT TO") {
                        recipients.push(line[8..].trim().trim_matches(['<', '>']).to_owned());
                        b"250 OK\r\n"
                    } else if upper.starts_with("DATA") {
                        let _ = write.write_all(b"354 go ahead\r\n").await;
                        let mut data = String::new();
                        while let Ok(Some(l)) = lines.next_line().await {
                            if l == "." {
                                break;
                            }
                            data.push_str(&l);
                            data.push('\n');
                        }
                        store
                            .lock()
                            .unwrap()
                            .push((std::mem::take(&mut recipients), data));
                        b"250 stored\r\n"
                    } else if upper.starts_with("QUIT") {
                        let _ = write.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"500 unknown\r\n"
                    };
                    if write.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, mailbox)
}

/// Waits until the service at `base` (a test's server on port 0) answers `/ready` with
/// a success, or panics naming `service` after a minute (migrations and the first
/// broker connection on a loaded CI machine; a ready service returns at once).
pub async fn wait_ready(http: &reqwest::Client, base: &str, service: &str) {
    for _ in 0..1200 {
        if let Ok(r) = http.get(format!("{base}/ready")).send().await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{service} did not become ready");
}

/// The body of the successful answer to `request`; panics on any other.
pub async fn body_of(request: reqwest::RequestBuilder) -> String {
    let response = request
        .send()
        .await
        .expect("the request reaches the server");
    let status = response.status();
    let body = response.text().await.expect("the body arrives whole");
    assert!(status.is_success(), "{status}: {body}");
    body
}

/// A loopback port that refuses connections for as long as this lives: bound, never
/// listening. A port bound and released instead could be taken (by another test's
/// server, or as the local end of any outgoing connection) before it is used.
pub struct ClosedPort {
    socket: tokio::net::TcpSocket,
    pub port: u16,
}

impl ClosedPort {
    pub fn new() -> std::io::Result<Self> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let port = socket.local_addr()?.port();
        Ok(Self { socket, port })
    }

    /// Starts listening on the port: from now on it accepts connections.
    pub fn open(self) -> std::io::Result<tokio::net::TcpListener> {
        self.socket.listen(128)
    }
}

/// A certificate for `localhost` and `127.0.0.1` from a CA made for it alone: what a
/// server under a private CA presents. Servers that use it are reached at 127.0.0.1,
/// which `localhost` may not resolve to first (nor only: `::1`).
pub struct LoopbackCertificate {
    /// The server's certificate and key (PEM).
    pub cert_pem: String,
    pub key_pem: String,
    /// The CA's certificate (PEM), which a client must be told to trust.
    pub ca_pem: String,
}

impl LoopbackCertificate {
    pub fn new() -> Self {
        let ca_key = rcgen::KeyPair::generate().expect("a CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "finflow test CA");
        let ca = ca_params.self_signed(&ca_key).expect("a self-signed CA");
        let server_key = rcgen::KeyPair::generate().expect("a server key");
        let server =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server certificate parameters")
                .signed_by(&server_key, &rcgen::Issuer::new(ca_params, ca_key))
                .expect("a server certificate");
        Self {
            cert_pem: server.pem(),
            key_pem: server_key.serialize_pem(),
            ca_pem: ca.pem(),
        }
    }

    /// A TLS server configuration presenting this certificate (ring as the provider).
    pub async fn server_config(&self) -> axum_server::tls_rustls::RustlsConfig {
        crate::client::use_ring();
        axum_server::tls_rustls::RustlsConfig::from_pem(
            self.cert_pem.clone().into_bytes(),
            self.key_pem.clone().into_bytes(),
        )
        .await
        .expect("a TLS configuration")
    }

    /// The CA's certificate in a file of its own: what a `*_CA_FILE` setting names.
    pub fn ca_file(&self) -> TempFile {
        TempFile::with(&self.ca_pem)
    }
}

/// A file of the test's own, removed when dropped.
pub struct TempFile(std::path::PathBuf);

impl TempFile {
    pub fn with(contents: &str) -> Self {
        let path = std::env::temp_dir().join(format!("finflow-test-{}", uuid::Uuid::new_v4()));
        std::fs::write(&path, contents).expect("the test's file is written");
        Self(path)
    }

    /// Its path as a setting's value.
    pub fn arg(&self) -> String {
        self.0.display().to_string()
    }
}

impl std::ops::Deref for TempFile {
    type Target = std::path::Path;

    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Default for LoopbackCertificate {
    fn default() -> Self {
        Self::new()
    }
}

/// A router served over https under a [`LoopbackCertificate`]. Stopped when dropped.
pub struct HttpsServer {
    /// `https://127.0.0.1:<port>`.
    pub base: String,
    pub certificate: LoopbackCertificate,
    task: tokio::task::JoinHandle<()>,
}

impl HttpsServer {
    pub async fn start(router: axum::Router) -> Self {
        let certificate = LoopbackCertificate::new();
        let tls = certificate.server_config().await;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let port = listener.local_addr().expect("its address").port();
        let server = axum_server::from_tcp_rustls(listener, tls).expect("a TLS server");
        let task = tokio::spawn(async move {
            server
                .serve(router.into_make_service())
                .await
                .expect("the https server runs");
        });
        Self {
            base: format!("https://127.0.0.1:{port}"),
            certificate,
            task,
        }
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// TLS in front of a plain TCP server (a real Redis or RabbitMQ), as a managed service
/// or a TLS-terminating proxy offers it: `127.0.0.1:<port>` under a
/// [`LoopbackCertificate`]. Stopped when dropped.
pub struct TlsProxy {
    pub port: u16,
    pub certificate: LoopbackCertificate,
    task: tokio::task::JoinHandle<()>,
}

impl TlsProxy {
    /// Terminates TLS on a loopback port and forwards each connection to `upstream`
    /// (`host:port`).
    pub async fn start(upstream: String) -> Self {
        let certificate = LoopbackCertificate::new();
        let acceptor =
            tokio_rustls::TlsAcceptor::from(certificate.server_config().await.get_inner());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let port = listener.local_addr().expect("its address").port();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
                tokio::spawn(async move {
                    // A client that refuses the certificate ends its handshake here.
                    let Ok(mut client) = acceptor.accept(client).await else {
                        return;
                    };
                    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
        Self {
            port,
            certificate,
            task,
        }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What [`load`] gives: `S`'s configuration, or why it was refused.
#[cfg(feature = "events")]
pub type Loaded<S> = Result<
    crate::service::Config<<S as crate::service::Service>::Settings>,
    crate::config::LoadError,
>;

/// `S`'s whole configuration as its `main` would parse it from `args`, after the
/// settings every service needs (a listen address, database and broker URLs): for
/// tests of a service's own settings.
#[cfg(feature = "events")]
pub fn load<S: crate::service::Service>(args: &[&str]) -> Loaded<S> {
    let argv = [
        format!("finflow-{}", S::INFO.name),
        "--listen=127.0.0.1:0".to_owned(),
        format!("--database-url=postgres://localhost/{}", S::INFO.name),
        "--amqp-url=amqp://localhost".to_owned(),
    ];
    crate::config::try_load_from(argv.into_iter().chain(args.iter().map(|a| (*a).to_owned())))
}

/// A service started as its binary starts it ([`crate::service::run`] on a real socket),
/// against a fresh database and vhost; stopped when dropped.
#[cfg(feature = "events")]
pub struct TestService {
    pub addr: std::net::SocketAddr,
    pub http: reqwest::Client,
    pub db: crate::db::TestDb,
    pub vhost: crate::events::TestVhost,
    stop: tokio_util::sync::CancellationToken,
}

#[cfg(feature = "events")]
impl TestService {
    /// Starts `S` on a fresh database and vhost, with `args` after the harness's own
    /// `--listen`, `--database-url` and `--amqp-url`; returns once it is ready.
    pub async fn spawn<S: crate::service::Service>(args: &[String]) -> Self {
        let db = crate::db::TestDb::new(Some(S::MIGRATIONS)).await;
        Self::start::<S>(db, crate::events::TestVhost::new(), args).await
    }

    /// [`TestService::spawn`] on a database and vhost the test prepared first (a queue
    /// bound before the service can publish anything).
    pub async fn start<S: crate::service::Service>(
        db: crate::db::TestDb,
        vhost: crate::events::TestVhost,
        args: &[String],
    ) -> Self {
        use secrecy::ExposeSecret;
        crate::telemetry::init_for_tests();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let argv = [
            format!("finflow-{}", S::INFO.name),
            "--listen".to_owned(),
            addr.to_string(),
            "--database-url".to_owned(),
            db.url(),
            "--amqp-url".to_owned(),
            vhost.url.expose_secret().to_owned(),
        ]
        .into_iter()
        .chain(args.iter().cloned());
        let config: crate::service::Config<S::Settings> = crate::config::try_load_from(argv)
            .unwrap_or_else(|e| panic!("{}'s test configuration: {e:?}", S::INFO.name));
        let stop = tokio_util::sync::CancellationToken::new();
        let until = stop.clone();
        tokio::spawn(async move {
            let shutdown = Box::pin(async move { until.cancelled().await });
            if let Err(e) = crate::service::run::<S>(config, listener, shutdown).await {
                panic!("{} stopped: {e:#}", S::INFO.name);
            }
        });
        let service = Self {
            addr,
            http: crate::client::default_client(),
            db,
            vhost,
            stop,
        };
        wait_ready(&service.http, &service.url(""), S::INFO.name).await;
        service
    }

    /// Stops the service (as SIGTERM would); dropping the harness does too.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// The URL of `path` on the service.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends `req` with `headers`: the status and the JSON body (a body that is not
    /// JSON fails the test, naming the status).
    pub async fn send(
        &self,
        mut req: reqwest::RequestBuilder,
        headers: &[(&str, &str)],
    ) -> (reqwest::StatusCode, serde_json::Value) {
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let body = r
            .json()
            .await
            .unwrap_or_else(|e| panic!("{status}: the body is not JSON: {e}"));
        (status, body)
    }

    pub async fn get(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (reqwest::StatusCode, serde_json::Value) {
        self.send(self.http.get(self.url(path)), headers).await
    }

    pub async fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
        headers: &[(&str, &str)],
    ) -> (reqwest::StatusCode, serde_json::Value) {
        self.send(self.http.post(self.url(path)).json(body), headers)
            .await
    }
}

#[cfg(feature = "events")]
impl Drop for TestService {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
