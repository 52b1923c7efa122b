//! The network policy (SPEC 4): a JSON body and each of its entries.
//!
//! Properties: a policy that parses survives a serialize/parse round trip;
//! a validated policy holds only truncated CIDRs (no host bits), folded
//! IPv4-mapped prefixes and canonical host names; every accepted entry's
//! canonical text parses back to the same destination.
#![no_main]

use std::net::IpAddr;

use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;
use sbx_proto::policy::{
    parse_destination, parse_domain, Destination, NetworkPolicy, ValidPolicy, MAX_ENTRY_LEN,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = std::str::from_utf8(data) {
        check_entry(entry);
    }
    let Ok(policy) = serde_json::from_slice::<NetworkPolicy>(data) else {
        return;
    };
    assert!(is_object(data));
    let json = serde_json::to_vec(&policy).expect("a policy serializes");
    let again: NetworkPolicy = serde_json::from_slice(&json).expect("a serialized policy parses");
    assert_eq!(again, policy);
    match policy.validate() {
        Ok(valid) => {
            check_valid(&policy, &valid);
            assert_eq!(again.validate(), Ok(valid));
        }
        Err(e) => {
            assert!(again.validate().is_err());
            assert!(e.to_string().len() < 512, "unbounded error message");
        }
    }
});

fn check_entry(entry: &str) {
    let Ok(dest) = parse_destination(entry) else {
        return;
    };
    check_destination(&dest);
    let shown = dest.to_string();
    assert_eq!(
        parse_destination(&shown).as_ref(),
        Ok(&dest),
        "{entry:?} is shown as {shown:?}"
    );
}

fn check_valid(policy: &NetworkPolicy, valid: &ValidPolicy) {
    assert_eq!(valid.allow_internet_access, policy.allow_internet_access);
    for (raw, parsed) in [
        (&policy.allow_out, &valid.allow_out),
        (&policy.deny_out, &valid.deny_out),
    ] {
        assert_eq!(raw.len(), parsed.len());
        for (entry, dest) in raw.iter().zip(parsed) {
            assert_eq!(parse_destination(entry).as_ref(), Ok(dest));
            check_destination(dest);
        }
    }
    let domains = valid.domains();
    assert!(
        domains.windows(2).all(|w| w[0] < w[1]),
        "sorted, no duplicates"
    );
}

fn check_destination(dest: &Destination) {
    match dest {
        Destination::Net(net) => {
            assert_eq!(net.trunc(), *net, "{net} has host bits set");
            if let IpNet::V6(v6) = net {
                assert!(
                    v6.prefix_len() < 96 || v6.addr().to_ipv4_mapped().is_none(),
                    "{v6} is IPv4-mapped but was not folded"
                );
            }
        }
        Destination::Domain(name) => {
            assert!(!name.is_empty() && name.len() <= MAX_ENTRY_LEN, "{name:?}");
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || b == b'-'
                    || b == b'.'),
                "{name:?}"
            );
            assert!(!name.ends_with('.'), "{name:?}");
            assert!(name.parse::<IpAddr>().is_err(), "{name:?} is an address");
            assert_eq!(parse_domain(name).as_deref(), Ok(name.as_str()));
        }
        // `*.<suffix>`: the suffix is itself a valid name, and the entry
        // prints back as it parses.
        Destination::Wildcard(suffix) => {
            check_destination(&Destination::Domain(suffix.clone()));
            let shown = dest.to_string();
            assert_eq!(parse_destination(&shown).as_ref(), Ok(dest), "{shown}");
        }
    }
}

/// serde's derive would also take an array of the fields; bodies are
/// objects only (proto/src/json.rs).
fn is_object(data: &[u8]) -> bool {
    data.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}
