//! Small TCP servers the tunnel tests talk to through the agent.

use std::net::SocketAddr;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
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
///
/// The server runs on its own runtime and threads with a deep backlog, so a
/// test that saturates its own runtime with clients cannot starve the
/// accept loop (which would make the kernel drop connections, not our code).
pub async fn serve<F, Fut>(handler: F) -> (SocketAddr, JoinHandle<()>)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("server runtime");
        runtime.block_on(async move {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket
                .bind("127.0.0.1:0".parse().expect("addr"))
                .expect("bind");
            let listener = socket.listen(4096).expect("listen");
            let _ = tx.send(listener.local_addr().expect("addr"));
            while let Ok((conn, _)) = listener.accept().await {
                let _ = conn.set_nodelay(true);
                tokio::spawn(handler(conn));
            }
        });
    });
    let addr = rx.await.expect("server started");
    // The server lives as long as the test process; the handle is kept for
    // callers that hold it to keep the server in scope.
    (addr, tokio::spawn(async {}))
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

/// Sends `len` bytes of `Noise::new(seed)` to every client, then closes.
pub async fn noise_server(len: u64, seed: u64) -> (SocketAddr, JoinHandle<()>) {
    serve(move |mut conn| async move {
        let mut noise = Noise::new(seed);
        let mut buf = vec![0u8; 256 * 1024];
        let mut left = len;
        while left > 0 {
            let n = buf.len().min(left as usize);
            noise.fill(&mut buf[..n]);
            if conn.write_all(&buf[..n]).await.is_err() {
                return;
            }
            left -= n as u64;
        }
        let _ = conn.shutdown().await;
    })
    .await
}

/// SHA-256 (hex) of `len` bytes of `Noise::new(seed)`.
pub fn noise_digest(len: u64, seed: u64) -> String {
    let mut noise = Noise::new(seed);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = len;
    while left > 0 {
        let n = buf.len().min(left as usize);
        noise.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    hex::encode(hasher.finalize())
}

/// Writes `len` bytes of `Noise::new(seed)` to `w`; returns their SHA-256.
pub async fn send_noise<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    len: u64,
    seed: u64,
) -> std::io::Result<String> {
    let mut noise = Noise::new(seed);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = buf.len().min(left as usize);
        noise.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        w.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Reads `r` to EOF; returns the SHA-256 and length of what it read.
pub async fn digest_to_eof<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok((hex::encode(hasher.finalize()), total));
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}
