//! HTTPS for the API port (`server.tls.cert_file`, `server.tls.key_file`):
//! a listener whose connections are TLS streams. TCP connections are
//! accepted by one task and their handshakes run each in its own task
//! (bounded by a timeout), so a slow or hostile client cannot hold up the
//! others; a connection that does not speak TLS, plain HTTP included, is
//! closed after its failed handshake.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use openssl::ssl::{Ssl, SslAcceptor, SslFiletype, SslMethod};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_openssl::SslStream;
use tracing::{debug, warn};

/// Longest TLS handshake before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshaken connections waiting for the server to take them.
const READY: usize = 256;

pub struct TlsListener {
    ready: mpsc::Receiver<(SslStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

/// The acceptor for a PEM certificate chain and its key, checked to match.
pub fn acceptor(cert_file: &Path, key_file: &Path) -> Result<SslAcceptor, String> {
    let fail = |what: &str, e: openssl::error::ErrorStack| format!("{what}: {e}");
    let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())
        .map_err(|e| fail("TLS set-up", e))?;
    builder
        .set_certificate_chain_file(cert_file)
        .map_err(|e| fail(&format!("server.tls.cert_file {}", cert_file.display()), e))?;
    builder
        .set_private_key_file(key_file, SslFiletype::PEM)
        .map_err(|e| fail(&format!("server.tls.key_file {}", key_file.display()), e))?;
    builder
        .check_private_key()
        .map_err(|e| fail("server.tls.key_file does not match server.tls.cert_file", e))?;
    Ok(builder.build())
}

impl TlsListener {
    /// Serves TLS with `acceptor` on `listener` (must be called inside a
    /// tokio runtime).
    pub fn new(listener: TcpListener, acceptor: SslAcceptor) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let acceptor = Arc::new(acceptor);
        let (tx, ready) = mpsc::channel(READY);
        tokio::spawn(async move {
            while !tx.is_closed() {
                let (tcp, addr) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: pause
                        // instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (Arc::clone(&acceptor), tx.clone());
                tokio::spawn(async move {
                    match handshake(&acceptor, tcp).await {
                        Ok(stream) => {
                            let _ = tx.send((stream, addr)).await;
                        }
                        Err(why) => debug!(%addr, %why, "TLS handshake failed"),
                    }
                });
            }
        });
        Ok(TlsListener { ready, local })
    }
}

async fn handshake(acceptor: &SslAcceptor, tcp: TcpStream) -> Result<SslStream<TcpStream>, String> {
    let ssl = Ssl::new(acceptor.context()).map_err(|e| e.to_string())?;
    let mut stream = SslStream::new(ssl, tcp).map_err(|e| e.to_string())?;
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, Pin::new(&mut stream).accept()).await {
        Ok(Ok(())) => Ok(stream),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = SslStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accepting task only ends once this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
