//! Support code shared by `tunnel-bench` and `proxy-bench`.
//!
//! Both benches start the same kinds of children (the agent, a plain TCP
//! forwarder, tools under test) from the same scratch directory, read their
//! CPU and memory from `/proc`, and print their figures in the same kind of
//! table. Kept here once so that a fix to how a child is stopped or how a
//! percentile is taken reaches both benches alike; what each bench measures
//! and how it labels it stays in the bench.

pub mod agent;
pub mod child;
pub mod hop;
pub mod limits;
pub mod listen;
pub mod machine;
pub mod netns;
pub mod report;
pub mod scratch;
pub mod stats;
pub mod usage;
