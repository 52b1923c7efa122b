//! The services the tunnels lead to, run in the bench process on a tokio
//! runtime: a sink for throughput and an echo server for latency, open time
//! and idle tunnels. The same servers serve every route (direct, tunnel,
//! peer tool), so whatever they cost is cost common to all columns.

use std::io;
use std::net::SocketAddr;

use anyhow::{Context as _, Result};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Sent by the sink once it has the length header: the stream is open end
/// to end, so timing can start.
pub const SINK_READY: u8 = b'R';
/// Sent by the sink once every announced byte has arrived.
pub const SINK_DONE: u8 = b'A';

/// Read buffer of both servers; larger than any relay chunk so that the
/// servers are never the narrower pipe.
const SERVER_BUF: usize = 256 * 1024;
/// Deep enough for bursts of tunnel opens.
const LISTEN_BACKLOG: u32 = 4096;

#[derive(Debug, Clone, Copy)]
pub struct ServerAddrs {
    pub sink: SocketAddr,
    pub echo: SocketAddr,
}

/// Binds both servers on ephemeral loopback ports and spawns their accept
/// loops on the current runtime; they end with the runtime.
pub async fn start() -> Result<ServerAddrs> {
    let sink = bind().context("bind sink server")?;
    let echo = bind().context("bind echo server")?;
    let addrs = ServerAddrs {
        sink: sink.local_addr()?,
        echo: echo.local_addr()?,
    };
    tokio::spawn(accept_loop(sink, |s| async move { sink_conn(s).await }));
    tokio::spawn(accept_loop(echo, |s| async move { echo_conn(s).await }));
    Ok(addrs)
}

fn bind() -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    socket.listen(LISTEN_BACKLOG)
}

async fn accept_loop<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = io::Result<()>> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                // Latency figures assume every hop sends small writes at once.
                let _ = stream.set_nodelay(true);
                let conn = handler(stream);
                tokio::spawn(async move {
                    // A client that hangs up mid-way is the client's error to
                    // report, not the server's.
                    let _ = conn.await;
                });
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
}

/// Sink protocol: 8-byte little-endian length N; answers [`SINK_READY`],
/// reads exactly N bytes, answers [`SINK_DONE`], then waits for EOF.
///
/// An explicit length (rather than EOF) makes the end of a transfer visible
/// through tunnels that do not pass half-closes on.
async fn sink_conn(mut stream: TcpStream) -> io::Result<()> {
    let mut header = [0u8; 8];
    stream.read_exact(&mut header).await?;
    let mut left = u64::from_le_bytes(header);
    stream.write_all(&[SINK_READY]).await?;
    let mut buf = vec![0u8; SERVER_BUF];
    while left > 0 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        left = left.saturating_sub(n as u64);
    }
    stream.write_all(&[SINK_DONE]).await?;
    while stream.read(&mut buf).await? != 0 {}
    Ok(())
}

async fn echo_conn(mut stream: TcpStream) -> io::Result<()> {
    // Allocated on first data, so 1,000 idle tunnels cost the bench nothing.
    let mut buf = Vec::new();
    loop {
        stream.readable().await?;
        if buf.is_empty() {
            buf.resize(SERVER_BUF, 0);
        }
        match stream.try_read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => stream.write_all(&buf[..n]).await?,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}
