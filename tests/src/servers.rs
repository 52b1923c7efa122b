//! Small TCP servers the tunnel tests talk to through the agent.

use std::net::SocketAddr;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Echoes every byte back; half-closes when the client does.
pub async fn echo_server() -> (SocketAddr, JoinHandle<()>) {
    serve(|mut conn| async move {
        let (mut r, mut w) = conn.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await
}

/// Reads until EOF, then answers with the SHA-256 (hex) and length of what it read.
pub async fn digest_server() -> (SocketAddr, JoinHandle<()>) {
    serve(|mut conn| async move {
        let mut hasher = Sha256::new();
        let mut total = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    total += n as u64;
                }
                Err(_) => return,
            }
        }
        let answer = format!("{} {total}", hex::encode(hasher.finalize()));
        let _ = conn.write_all(answer.as_bytes()).await;
        let _ = conn.shutdown().await;
    })
    .await
}

/// Accepts connections on 127.0.0.1 and runs `handler` for each.
pub async fn serve<F, Fut>(handler: F) -> (SocketAddr, JoinHandle<()>)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handle = tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let _ = conn.set_nodelay(true);
            tokio::spawn(handler(conn));
        }
    });
    (addr, handle)
}

/// A port on 127.0.0.1 where nothing listens (bound, then released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Deterministic pseudo-random bytes, fast enough for gigabytes (xorshift).
pub struct Noise(u64);

impl Noise {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            let bytes = x.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}
