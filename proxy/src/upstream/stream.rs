//! A pooled upstream connection that closes itself when its sandbox's
//! upstream epoch is cancelled (sandbox removed, agent address or key
//! changed), whether it is idle in the pool or carrying a request.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper_util::client::legacy::connect::{Connected, Connection};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

pub struct EvictableStream {
    inner: TcpStream,
    /// Service bytes that arrived with the tunnel's answer, read first.
    early: Bytes,
    /// Boxed because the future is not `Unpin`; one allocation per
    /// connection, not per request.
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl EvictableStream {
    pub fn new(inner: TcpStream, early: Bytes, token: CancellationToken) -> Self {
        Self {
            inner,
            early,
            cancelled: Box::pin(token.cancelled_owned()),
        }
    }

    fn evicted(&mut self, cx: &mut Context<'_>) -> bool {
        self.cancelled.as_mut().poll(cx).is_ready()
    }
}

fn evicted_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the sandbox's agent changed or the sandbox was removed",
    )
}

impl AsyncRead for EvictableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.evicted(cx) {
            return Poll::Ready(Err(evicted_error()));
        }
        if !self.early.is_empty() {
            let n = self.early.len().min(buf.remaining());
            buf.put_slice(&self.early.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for EvictableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.evicted(cx) {
            return Poll::Ready(Err(evicted_error()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.evicted(cx) {
            return Poll::Ready(Err(evicted_error()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connection for EvictableStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}
