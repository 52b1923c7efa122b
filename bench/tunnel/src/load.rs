//! Load generators: plain blocking sockets on bench threads, so that the
//! client adds as little as possible (no event loop between the timer and
//! the syscall) and costs the same on every route.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::servers::{SINK_DONE, SINK_READY};

/// No single socket operation may stall the bench for longer than this.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Size of each client write during throughput runs.
const WRITE_CHUNK: usize = 256 * 1024;

fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let stream =
        TcpStream::connect_timeout(&addr, IO_TIMEOUT).with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

fn expect_byte(stream: &mut TcpStream, want: u8, what: &str) -> Result<()> {
    let mut b = [0u8; 1];
    stream
        .read_exact(&mut b)
        .with_context(|| format!("waiting for the sink's {what}"))?;
    if b[0] != want {
        bail!("sink sent {:#04x}, expected {what}", b[0]);
    }
    Ok(())
}

/// A stream to the sink that is open end to end and ready to time.
struct SinkStream {
    stream: TcpStream,
    bytes: u64,
}

impl SinkStream {
    fn open(addr: SocketAddr, bytes: u64) -> Result<Self> {
        let mut stream = connect(addr)?;
        stream.write_all(&bytes.to_le_bytes())?;
        expect_byte(&mut stream, SINK_READY, "ready byte")?;
        Ok(Self { stream, bytes })
    }

    /// Sends the announced bytes and waits until the sink has all of them.
    fn transfer(mut self, chunk: &[u8]) -> Result<()> {
        let mut left = self.bytes;
        while left > 0 {
            let n = usize::try_from(left).unwrap_or(usize::MAX).min(chunk.len());
            self.stream
                .write_all(&chunk[..n])
                .with_context(|| format!("write with {left} bytes to go"))?;
            left -= n as u64;
        }
        expect_byte(&mut self.stream, SINK_DONE, "completion byte")
    }
}

/// Aggregate throughput of `streams` parallel streams moving `total` bytes
/// between them, in bytes per second. Timing starts once every stream is
/// open end to end and stops when the last byte has reached the sink.
pub fn throughput(addr: SocketAddr, total: u64, streams: usize) -> Result<f64> {
    let per_stream = total / streams as u64;
    let opened = (0..streams)
        .map(|_| SinkStream::open(addr, per_stream))
        .collect::<Result<Vec<_>>>()?;
    let chunk = vec![0x5au8; WRITE_CHUNK];
    let barrier = Barrier::new(streams + 1);
    let elapsed = std::thread::scope(|scope| -> Result<Duration> {
        let handles: Vec<_> = opened
            .into_iter()
            .map(|s| {
                let (barrier, chunk) = (&barrier, &chunk);
                scope.spawn(move || {
                    barrier.wait();
                    s.transfer(chunk)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        for h in handles {
            match h.join() {
                Ok(r) => r?,
                Err(_) => bail!("a sender thread panicked"),
            }
        }
        Ok(start.elapsed())
    })?;
    Ok((per_stream * streams as u64) as f64 / elapsed.as_secs_f64())
}

/// One connection to the echo server for timing small round trips; kept
/// open between batches so that routes can be measured in turns.
pub struct PingPong {
    stream: TcpStream,
    out: Vec<u8>,
    back: Vec<u8>,
}

impl PingPong {
    pub fn connect(addr: SocketAddr, size: usize) -> Result<Self> {
        Ok(Self {
            stream: connect(addr)?,
            out: vec![0xa5u8; size],
            back: vec![0u8; size],
        })
    }

    /// Runs `count` round trips, appending each one's time to `samples`
    /// when given (warm-up passes none).
    pub fn run(&mut self, count: usize, mut samples: Option<&mut Vec<Duration>>) -> Result<()> {
        for _ in 0..count {
            let start = Instant::now();
            self.stream.write_all(&self.out).context("ping")?;
            self.stream.read_exact(&mut self.back).context("pong")?;
            if let Some(s) = samples.as_deref_mut() {
                s.push(start.elapsed());
            }
        }
        if self.back != self.out {
            bail!("echo returned different bytes");
        }
        Ok(())
    }
}

/// Time from `connect()` to the first echoed byte, for `count` fresh
/// connections one after another, appended to `samples`.
pub fn open_to_first_byte(
    addr: SocketAddr,
    count: usize,
    samples: &mut Vec<Duration>,
) -> Result<()> {
    for _ in 0..count {
        let start = Instant::now();
        let mut stream = connect(addr)?;
        stream.write_all(b"x").context("first byte")?;
        let mut b = [0u8; 1];
        stream.read_exact(&mut b).context("first echoed byte")?;
        samples.push(start.elapsed());
    }
    Ok(())
}
