//! The body type of every response the proxy sends, and the wrapper that
//! ends a request's life: it holds the sandbox's in-flight slot while a
//! streamed body runs, counts the bytes, and writes the access-log line
//! when the body is done (or the client went away).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;

use crate::server::ActivityGuard;

pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// What the access-log line says of a request.
pub struct AccessRecord {
    pub sandbox: Option<Arc<str>>,
    pub port: Option<u16>,
    pub method: http::Method,
    pub status: u16,
    pub started: Instant,
    pub peer: std::net::IpAddr,
    pub bytes: u64,
    /// What went wrong, for requests the proxy answered itself.
    pub error: Option<&'static str>,
}

impl AccessRecord {
    pub fn log(&self) {
        tracing::info!(
            target: "sbx_proxy::access",
            sandbox = self.sandbox.as_deref().unwrap_or("-"),
            port = self.port.unwrap_or(0),
            method = %self.method,
            status = self.status,
            bytes = self.bytes,
            duration_us = self.started.elapsed().as_micros() as u64,
            client = %self.peer,
            error = self.error.unwrap_or("-"),
            "request"
        );
    }
}

/// A response body that logs its request when it ends.
pub struct Tracked<B> {
    inner: B,
    record: AccessRecord,
    _permit: Option<OwnedSemaphorePermit>,
    _activity: ActivityGuard,
}

impl<B> Tracked<B> {
    pub fn new(
        inner: B,
        record: AccessRecord,
        permit: Option<OwnedSemaphorePermit>,
        activity: ActivityGuard,
    ) -> Self {
        Self {
            inner,
            record,
            _permit: permit,
            _activity: activity,
        }
    }
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        self.record.log();
    }
}

impl<B> Body for Tracked<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.record.bytes += data.len() as u64;
            }
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
