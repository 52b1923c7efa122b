//! The bounded buffer of a process's captured output.
//!
//! Lines are numbered from 0 in the order they were captured, across both
//! streams, so a follower can remember where it stopped and resume there even
//! while older lines are being dropped. The buffer keeps at most
//! `max_lines` lines and `max_bytes` bytes: a chatty process loses its oldest
//! lines (counted) instead of growing the agent's memory.

use std::collections::VecDeque;

use sbx_proto::api::{OutputEvent, StreamName};

/// Longest line kept; longer ones are split so that a process printing
/// without newlines still produces bounded lines.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct Line {
    pub text: String,
    pub timestamp: u64,
    pub stream: StreamName,
}

impl Line {
    pub fn event(&self) -> OutputEvent {
        OutputEvent {
            line: self.text.clone(),
            timestamp: self.timestamp,
            stream: self.stream,
        }
    }
}

/// Which lines a reader wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Stdout,
    Stderr,
    Both,
}

impl Filter {
    pub fn accepts(self, stream: StreamName) -> bool {
        match self {
            Self::Both => true,
            Self::Stdout => stream == StreamName::Stdout,
            Self::Stderr => stream == StreamName::Stderr,
        }
    }
}

#[derive(Debug)]
pub struct OutputBuffer {
    lines: VecDeque<Line>,
    /// Sequence number of `lines[0]`.
    first_seq: u64,
    bytes: usize,
    max_lines: usize,
    max_bytes: usize,
    /// Lines dropped to stay within bounds.
    dropped: u64,
}

impl OutputBuffer {
    pub fn new(max_lines: usize, max_bytes: usize) -> Self {
        Self {
            lines: VecDeque::new(),
            first_seq: 0,
            bytes: 0,
            max_lines: max_lines.max(1),
            max_bytes: max_bytes.max(1),
            dropped: 0,
        }
    }

    /// Sequence number the next captured line will get.
    pub fn next_seq(&self) -> u64 {
        self.first_seq + self.lines.len() as u64
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Appends a line, dropping the oldest ones to stay in bounds. Returns
    /// how many were dropped.
    pub fn push(&mut self, line: Line) -> u64 {
        self.bytes += line.text.len();
        self.lines.push_back(line);
        let mut dropped = 0;
        while self.lines.len() > self.max_lines
            || (self.bytes > self.max_bytes && self.lines.len() > 1)
        {
            if let Some(old) = self.lines.pop_front() {
                self.bytes -= old.text.len();
                self.first_seq += 1;
                dropped += 1;
            }
        }
        self.dropped += dropped;
        dropped
    }

    /// Every kept line that passes `filter`.
    pub fn snapshot(&self, filter: Filter) -> Vec<String> {
        self.lines
            .iter()
            .filter(|l| filter.accepts(l.stream))
            .map(|l| l.text.clone())
            .collect()
    }

    /// Lines from sequence number `from` on (or from the oldest kept line if
    /// `from` was dropped), at most `max` of them, and the sequence number to
    /// continue from.
    pub fn since(&self, from: u64, filter: Filter, max: usize) -> (Vec<OutputEvent>, u64) {
        let start = from.max(self.first_seq);
        let skip = usize::try_from(start - self.first_seq).unwrap_or(usize::MAX);
        let mut out = Vec::new();
        let mut next = start;
        for line in self.lines.iter().skip(skip) {
            if out.len() >= max {
                break;
            }
            next += 1;
            if filter.accepts(line.stream) {
                out.push(line.event());
            }
        }
        (out, next)
    }
}

/// Splits captured bytes into lines, holding an unterminated tail until more
/// bytes or the end of the stream arrive.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    /// Feeds bytes; calls `emit` with each complete line (without `\n`, and
    /// without a trailing `\r`).
    pub fn feed(&mut self, mut data: &[u8], emit: &mut impl FnMut(String)) {
        while let Some(pos) = data.iter().position(|&b| b == b'\n') {
            self.partial.extend_from_slice(&data[..pos]);
            data = &data[pos + 1..];
            emit(take_line(&mut self.partial));
        }
        self.partial.extend_from_slice(data);
        while self.partial.len() >= MAX_LINE_BYTES {
            let rest = self.partial.split_off(MAX_LINE_BYTES);
            emit(take_line(&mut self.partial));
            self.partial = rest;
        }
    }

    /// Emits the unterminated tail, if any, at the end of the stream.
    pub fn finish(&mut self, emit: &mut impl FnMut(String)) {
        if !self.partial.is_empty() {
            emit(take_line(&mut self.partial));
        }
    }
}

fn take_line(buf: &mut Vec<u8>) -> String {
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    let text = String::from_utf8_lossy(buf).into_owned();
    buf.clear();
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str, stream: StreamName) -> Line {
        Line {
            text: text.into(),
            timestamp: 1,
            stream,
        }
    }

    #[test]
    fn drops_oldest_by_lines_and_bytes() {
        let mut buf = OutputBuffer::new(3, 1000);
        for i in 0..5 {
            buf.push(line(&i.to_string(), StreamName::Stdout));
        }
        assert_eq!(buf.snapshot(Filter::Both), vec!["2", "3", "4"]);
        assert_eq!(buf.dropped(), 2);
        let mut buf = OutputBuffer::new(100, 10);
        buf.push(line("aaaaaa", StreamName::Stdout));
        buf.push(line("bbbbbb", StreamName::Stderr));
        assert_eq!(buf.snapshot(Filter::Both), vec!["bbbbbb"]);
    }

    #[test]
    fn since_resumes_and_filters() {
        let mut buf = OutputBuffer::new(2, 1000);
        buf.push(line("a", StreamName::Stdout));
        buf.push(line("b", StreamName::Stderr));
        let (lines, next) = buf.since(0, Filter::Stdout, 10);
        assert_eq!(lines.len(), 1);
        assert_eq!(next, 2);
        buf.push(line("c", StreamName::Stdout));
        buf.push(line("d", StreamName::Stdout));
        // "b" was dropped; the follower resumes at the oldest kept line.
        let (lines, next) = buf.since(next, Filter::Both, 10);
        assert_eq!(
            lines.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(),
            ["c", "d"]
        );
        assert_eq!(next, 4);
    }

    #[test]
    fn splitter() {
        let mut out = Vec::new();
        let mut s = LineSplitter::default();
        s.feed(b"ab\r\ncd\nef", &mut |l| out.push(l));
        s.feed(b"g\n", &mut |l| out.push(l));
        s.feed(b"tail", &mut |l| out.push(l));
        s.finish(&mut |l| out.push(l));
        assert_eq!(out, ["ab", "cd", "efg", "tail"]);
        let mut out = Vec::new();
        s.feed(&vec![b'x'; MAX_LINE_BYTES * 2 + 1], &mut |l| out.push(l));
        assert_eq!(out.len(), 2);
    }
}
