//! netctl: turns each sandbox's egress policy into nftables rules inside
//! that sandbox's network namespace, and keeps DNS-derived sets fresh.

pub mod api;
pub mod apply;
pub mod cli;
pub mod client;
pub mod config;
pub mod conntrack;
pub mod dns;
pub mod elements;
pub mod forwarder;
pub mod ingress;
pub mod manager;
pub mod metrics;
pub mod netns;
pub mod nft;
pub mod nft_schema;
pub mod ruleset;
pub mod serve;
pub mod setup;
pub mod store;
pub mod view;
