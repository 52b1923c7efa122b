//! What an upstream answer says about the name asked: the CNAME chain it
//! walks and the addresses it ends at (A, AAAA, and the address hints of
//! HTTPS/SVCB records), with their TTLs. Pure, so it is tested on its own.

use std::net::IpAddr;

use hickory_proto::op::Message;
use hickory_proto::rr::rdata::svcb::SvcParamValue;
use hickory_proto::rr::RData;

use super::names::normalise;

/// A CNAME chain longer than this is cut short (resolvers give up at
/// about 8-16 too); its tail counts as unknown.
const MAX_CHAIN: usize = 16;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    /// The name asked, then every CNAME target in order.
    pub chain: Vec<String>,
    /// Addresses for the names of the chain, with the TTL of their record.
    pub addrs: Vec<(IpAddr, u32)>,
}

/// Reads `response` for the question `qname` (normalised).
pub fn read(qname: &str, response: &Message) -> Answer {
    let mut chain = vec![qname.to_owned()];
    while chain.len() < MAX_CHAIN {
        let current = chain.last().cloned().unwrap_or_default();
        let next = response.answers.iter().find_map(|r| match &r.data {
            RData::CNAME(target) if normalise(&r.name.to_ascii()) == current => {
                Some(normalise(&target.0.to_ascii()))
            }
            _ => None,
        });
        match next {
            Some(target) if !chain.contains(&target) => chain.push(target),
            _ => break,
        }
    }
    let mut addrs = Vec::new();
    for r in &response.answers {
        if !chain.contains(&normalise(&r.name.to_ascii())) {
            continue;
        }
        match &r.data {
            RData::A(a) => addrs.push((IpAddr::V4(a.0), r.ttl)),
            RData::AAAA(a) => addrs.push((IpAddr::V6(a.0), r.ttl)),
            RData::HTTPS(https) => hints(&https.0.svc_params, r.ttl, &mut addrs),
            RData::SVCB(svcb) => hints(&svcb.svc_params, r.ttl, &mut addrs),
            _ => {}
        }
    }
    Answer { chain, addrs }
}

fn hints(
    params: &[(hickory_proto::rr::rdata::svcb::SvcParamKey, SvcParamValue)],
    ttl: u32,
    out: &mut Vec<(IpAddr, u32)>,
) {
    for (_, value) in params {
        match value {
            SvcParamValue::Ipv4Hint(hint) => {
                out.extend(hint.0.iter().map(|a| (IpAddr::V4(a.0), ttl)));
            }
            SvcParamValue::Ipv6Hint(hint) => {
                out.extend(hint.0.iter().map(|a| (IpAddr::V6(a.0), ttl)));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::op::{Message, MessageType, OpCode};
    use hickory_proto::rr::rdata::svcb::{IpHint, SvcParamKey, SVCB};
    use hickory_proto::rr::rdata::{A, AAAA, CNAME, HTTPS};
    use hickory_proto::rr::{Name, Record};

    use super::*;

    fn record(name: &str, ttl: u32, data: RData) -> Record {
        Record::from_rdata(Name::from_str(name).unwrap(), ttl, data)
    }

    #[test]
    fn follows_the_chain_and_collects_addresses_and_hints() {
        let mut m = Message::new(7, MessageType::Response, OpCode::Query);
        m.answers = vec![
            record(
                "www.Example.com.",
                60,
                RData::CNAME(CNAME(Name::from_str("edge.cdn.test.").unwrap())),
            ),
            record(
                "edge.cdn.test.",
                30,
                RData::A(A("192.0.2.1".parse().unwrap())),
            ),
            record(
                "edge.cdn.test.",
                30,
                RData::AAAA(AAAA("2001:db8::1".parse().unwrap())),
            ),
            record(
                "unrelated.test.",
                30,
                RData::A(A("198.51.100.1".parse().unwrap())),
            ),
            record(
                "www.example.com.",
                20,
                RData::HTTPS(HTTPS(SVCB::new(
                    1,
                    Name::root(),
                    vec![(
                        SvcParamKey::Ipv4Hint,
                        SvcParamValue::Ipv4Hint(IpHint(vec![A("203.0.113.9".parse().unwrap())])),
                    )],
                ))),
            ),
        ];
        let a = read("www.example.com", &m);
        assert_eq!(a.chain, ["www.example.com", "edge.cdn.test"]);
        let addrs: Vec<String> = a.addrs.iter().map(|(a, t)| format!("{a}/{t}")).collect();
        assert_eq!(addrs, ["192.0.2.1/30", "2001:db8::1/30", "203.0.113.9/20"]);
    }

    #[test]
    fn a_cname_loop_ends() {
        let mut m = Message::new(7, MessageType::Response, OpCode::Query);
        m.answers = vec![
            record(
                "a.test.",
                5,
                RData::CNAME(CNAME(Name::from_str("b.test.").unwrap())),
            ),
            record(
                "b.test.",
                5,
                RData::CNAME(CNAME(Name::from_str("a.test.").unwrap())),
            ),
        ];
        let a = read("a.test", &m);
        assert_eq!(a.chain, ["a.test", "b.test"]);
        assert!(a.addrs.is_empty());
    }
}
