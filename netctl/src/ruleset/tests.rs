use ipnet::IpNet;
use nftables::schema::Nftables;

use super::*;

fn desired() -> Desired {
    Desired {
        iface: None,
        allow_internet_access: true,
        refusal: Refusal::Reject,
        always: Prefixes::merge(&[
            "169.254.0.0/16".parse().unwrap(),
            "fe80::/10".parse().unwrap(),
        ]),
        dns: Prefixes::default(),
        allow: Prefixes::default(),
        deny: Prefixes::default(),
        ingress_port: 9501,
        ingress: Prefixes::merge(&[
            "10.200.0.1/32".parse().unwrap(),
            "fd00:5b::1/128".parse().unwrap(),
        ]),
        mark_bits: MarkBits::default(),
        intercept: None,
    }
}

#[test]
fn merges_overlapping_and_adjacent_prefixes() {
    let nets: Vec<IpNet> = [
        "192.0.2.0/25",
        "192.0.2.128/25",
        "192.0.2.7/32",
        "198.51.100.0/24",
        "198.51.100.9/32",
        "::ffff:203.0.113.5/128",
        "2001:db8::/33",
        "2001:db8:8000::/33",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    let merged = Prefixes::merge(&nets);
    let v4: Vec<String> = merged.v4.iter().map(|n| n.to_string()).collect();
    let v6: Vec<String> = merged.v6.iter().map(|n| n.to_string()).collect();
    assert_eq!(v4, ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.5/32"]);
    assert_eq!(v6, ["2001:db8::/32"]);
}

fn fresh(d: &Desired) -> Change {
    rebuild(InForce::default(), d)
}

/// What a first apply of `desired()` leaves.
fn applied_fresh() -> Applied {
    Applied {
        desired: desired(),
        slots: fresh(&desired()).slots,
        generation: fresh(&desired()).generation,
        trusted: true,
    }
}

fn json(n: &Nftables) -> serde_json::Value {
    serde_json::to_value(n).unwrap()
}

fn rules_of(n: &Nftables, chain: &str) -> Vec<serde_json::Value> {
    json(n)["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("add").and_then(|a| a.get("rule")))
        .filter(|r| r["chain"] == chain)
        .map(|r| r["expr"].clone())
        .collect()
}

#[test]
fn order_follows_the_spec() {
    let mut d = desired();
    d.allow_internet_access = false;
    let n = fresh(&d).switch;
    let rules = rules_of(&n, CHAIN_POLICY);
    let text: Vec<String> = rules.iter().map(|r| r.to_string()).collect();
    let pos = |needle: &str| {
        text.iter()
            .position(|t| t.contains(needle))
            .unwrap_or_else(|| panic!("{needle} missing in {text:#?}"))
    };
    // The accepts before the always-deny check (in any order: they only
    // accept), the fast path first.
    assert!(text[0].contains(r#""mark""#), "{text:#?}");
    assert!(pos("\"lo\"") < pos("@always4"));
    assert!(pos("\"direction\"") < pos("@always4"));
    assert!(pos("@always6") < pos("@allow4"));
    assert!(pos("@allow6") < pos("@deny4"));
    // No DNS opening without a domain in allow_out.
    assert!(!text.iter().any(|t| t.contains("@dns4")));
    // Final verdict refuses.
    let last = text.last().unwrap();
    assert!(
        last.contains("goto") && last.contains(CHAIN_REFUSE),
        "{last}"
    );
}

#[test]
fn default_allow_ends_in_accept() {
    let n = fresh(&desired()).switch;
    let rules = rules_of(&n, CHAIN_POLICY);
    let last = rules.last().unwrap().to_string();
    assert!(
        last.contains("accept") && last.contains(COUNTER_ACCEPTED),
        "{last}"
    );
}

#[test]
fn forward_chain_only_with_iface() {
    assert!(rules_of(&fresh(&desired()).switch, CHAIN_FORWARD).is_empty());
    let mut d = desired();
    d.iface = Some("tap0".into());
    let fwd = rules_of(&fresh(&d).switch, CHAIN_FORWARD);
    assert_eq!(fwd.len(), 2);
    assert!(fwd.iter().all(|r| r.to_string().contains("tap0")));
}

#[test]
fn refusal_is_fast() {
    let rules = rules_of(&fresh(&desired()).switch, CHAIN_REFUSE);
    let text = serde_json::Value::Array(rules).to_string();
    assert!(text.contains("tcp reset"), "{text}");
    assert!(text.contains("admin-prohibited"), "{text}");
}

#[test]
fn sets_carry_prefixes_and_hosts() {
    let mut d = desired();
    d.deny = Prefixes::merge(&[
        "192.0.2.0/24".parse().unwrap(),
        "2001:db8::5/128".parse().unwrap(),
    ]);
    let text = json(&fresh(&d).stage.unwrap()).to_string();
    assert!(
        text.contains(r#"{"prefix":{"addr":"192.0.2.0","len":24}}"#),
        "{text}"
    );
    assert!(text.contains(r#""2001:db8::5""#), "{text}");
}

#[test]
fn only_changed_sets_are_restaged_into_the_other_slot() {
    let old = applied_fresh();
    let mut new = old.desired.clone();
    new.deny = Prefixes::merge(&["192.0.2.0/24".parse().unwrap()]);
    let c = update(&old, &new);
    let stage = json(&c.stage.unwrap()).to_string();
    assert!(
        stage.contains("deny4_0") && !stage.contains("deny6"),
        "{stage}"
    );
    assert!(
        !stage.contains("\"rule\"") && !stage.contains("\"chain\""),
        "{stage}"
    );
    let switch = json(&c.switch).to_string();
    assert!(
        switch.contains("@deny4_0") && switch.contains("@deny6_1"),
        "{switch}"
    );
    assert_eq!(c.slots.get(SetKind::Deny, false), 0);
    assert_eq!(c.slots.get(SetKind::Allow, false), 1);
}

fn commands(c: &Change, verb: &str) -> usize {
    c.stage.as_ref().map_or(0, |n| {
        json(n)["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c.get(verb).is_some())
            .count()
    })
}

#[test]
fn trusted_spares_are_created_unknown_ones_flushed() {
    let old = applied_fresh();
    let mut new = old.desired.clone();
    new.deny = Prefixes::merge(&["192.0.2.0/24".parse().unwrap()]);
    let c = update(&old, &new);
    assert_eq!((commands(&c, "create"), commands(&c, "flush")), (1, 0));
    let c = fresh(&new);
    assert_eq!((commands(&c, "create"), commands(&c, "flush")), (0, 10));
}

#[test]
fn the_same_state_again_restages_everything() {
    let old = applied_fresh();
    let c = update(&old, &desired());
    assert_eq!(commands(&c, "create"), 10);
    assert_ne!(c.slots, old.slots);
}

#[test]
fn rules_only_change_stages_nothing() {
    let old = applied_fresh();
    let mut new = old.desired.clone();
    new.allow_internet_access = false;
    let c = update(&old, &new);
    assert!(c.stage.is_none());
    assert_eq!(c.slots, old.slots);
}

#[test]
fn the_switch_never_touches_set_contents() {
    let mut d = desired();
    d.allow = Prefixes::merge(&["192.0.2.0/24".parse().unwrap()]);
    for c in [
        fresh(&d),
        update(
            &Applied {
                desired: desired(),
                slots: Slots::default(),
                generation: Generation::FIRST,
                trusted: true,
            },
            &d,
        ),
    ] {
        for cmd in json(&c.switch)["nftables"].as_array().unwrap() {
            let text = cmd.to_string();
            assert!(!text.contains("\"element\""), "{text}");
            assert!(
                !(cmd.get("flush").is_some() && text.contains("\"set\"")),
                "{text}"
            );
        }
    }
}

#[test]
fn reads_which_slot_the_kernel_rules_point_at() {
    let listing = r#"{"nftables": [{"rule": {"expr": [{"match": {"op": "==",
        "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "@deny4_1"}},
        {"goto": {"target": "refuse"}}]}}]}"#;
    let slots = referenced(listing).unwrap();
    assert_eq!(slots.get(SetKind::Deny, false), 1);
    assert_eq!(slots.get(SetKind::Deny, true), 0);
    assert_eq!(
        rebuild(
            InForce {
                slots,
                mark: None,
                answer_sets: false
            },
            &desired()
        )
        .slots
        .get(SetKind::Deny, false),
        0
    );
    // A comment naming a set is not a reference.
    let commented = listing.replace(
        r#""right": "@deny4_1""#,
        r#""right": "@deny4_0", "comment": "@deny4_1""#,
    );
    assert_eq!(referenced(&commented).unwrap().get(SetKind::Deny, false), 0);
    // Both copies named: someone rewrote our rules.
    let both = listing.replace(
        r#"{"goto": {"target": "refuse"}}"#,
        r#"{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "@deny4_0"}}"#,
    );
    assert!(referenced(&both)
        .unwrap_err()
        .contains("deny4_0 and deny4_1"));
    assert!(referenced("not json").is_err());
}

#[test]
fn same_input_same_batch() {
    // Set flags are a HashSet in the nftables crate: their order in the
    // JSON is not fixed, and nft does not care.
    fn sorted_flags(mut v: serde_json::Value) -> serde_json::Value {
        match &mut v {
            serde_json::Value::Object(map) => {
                for (key, value) in map.iter_mut() {
                    if key == "flags" {
                        if let serde_json::Value::Array(flags) = value {
                            flags.sort_by_key(|f| f.to_string());
                        }
                    }
                    *value = sorted_flags(value.take());
                }
            }
            serde_json::Value::Array(items) => {
                for item in items.iter_mut() {
                    *item = sorted_flags(item.take());
                }
            }
            _ => {}
        }
        v
    }
    assert_eq!(
        sorted_flags(json(&fresh(&desired()).switch)),
        sorted_flags(json(&fresh(&desired()).switch))
    );
}

#[test]
fn inbound_opens_only_the_port_from_allowed_sources() {
    let n = fresh(&desired()).switch;
    assert_eq!(
        rules_of(&n, CHAIN_INPUT)
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>(),
        [r#"[{"jump":{"target":"inbound"}}]"#]
    );
    let text: Vec<String> = rules_of(&n, CHAIN_INBOUND)
        .iter()
        .map(|r| r.to_string())
        .collect();
    let pos = |needle: &str| {
        text.iter()
            .position(|t| t.contains(needle))
            .unwrap_or_else(|| panic!("{needle} missing in {text:#?}"))
    };
    assert!(
        text[0].contains(r#""direction""#),
        "replies first: {text:#?}"
    );
    assert!(pos(r#""iif""#) < pos("@ingress4"));
    assert!(pos("nd-neighbor-solicit") < pos("@ingress4"));
    assert!(pos("mld-listener-query") < pos("@ingress4"));
    assert!(pos("\"direction\"") < pos("@ingress4"));
    let open: Vec<&String> = text.iter().filter(|t| t.contains("@ingress")).collect();
    assert_eq!(open.len(), 2, "{text:#?}");
    for rule in open {
        assert!(
            rule.contains(r#""field":"dport""#) && rule.contains("9501"),
            "{rule}"
        );
        assert!(rule.contains(r#""field":"saddr""#), "{rule}");
    }
    let last = text.last().unwrap();
    assert!(
        last.contains("goto") && last.contains(CHAIN_REFUSE_IN),
        "{last}"
    );
    // Established connections are let through only as replies to what the
    // sandbox opened; one opened toward it is judged on every packet.
    let established = &text[pos("established")];
    assert!(established.contains("reply"), "{established}");
    let refuse = serde_json::Value::Array(rules_of(&n, CHAIN_REFUSE_IN)).to_string();
    assert!(refuse.contains(COUNTER_INBOUND_REFUSED), "{refuse}");
    assert!(refuse.contains("tcp reset") && refuse.contains("admin-prohibited"));
    let stage = json(&fresh(&desired()).stage.unwrap()).to_string();
    assert!(
        stage.contains(r#""10.200.0.1""#) && stage.contains(r#""fd00:5b::1""#),
        "{stage}"
    );
}

#[test]
fn no_source_refuses_every_new_inbound_connection() {
    let mut d = desired();
    d.ingress = Prefixes::default();
    let c = fresh(&d);
    let text = serde_json::Value::Array(rules_of(&c.switch, CHAIN_INBOUND)).to_string();
    // The rules still name the (empty) sets, which the stage created.
    assert!(text.contains("@ingress4_"), "{text}");
    let stage = json(&c.stage.unwrap());
    let filled: Vec<&str> = stage["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|cmd| cmd["add"]["element"]["name"].as_str())
        .collect();
    assert!(
        filled.iter().all(|name| !name.starts_with("ingress")),
        "{filled:?}"
    );
}

#[test]
fn the_tap_gets_inbound_rules_on_the_forward_path() {
    let mut d = desired();
    d.iface = Some("tap0".into());
    let fwd: Vec<String> = rules_of(&fresh(&d).switch, CHAIN_FORWARD)
        .iter()
        .map(|r| r.to_string())
        .collect();
    assert_eq!(fwd.len(), 2, "{fwd:#?}");
    assert!(fwd[0].contains("iifname") && fwd[0].contains(CHAIN_POLICY));
    assert!(fwd[1].contains("oifname") && fwd[1].contains(CHAIN_INBOUND));
}

#[test]
fn the_ingress_sets_move_between_copies_like_the_others() {
    let old = applied_fresh();
    let mut new = old.desired.clone();
    new.ingress = Prefixes::merge(&[
        "192.0.2.10/32".parse().unwrap(),
        "fd00:5b::1/128".parse().unwrap(),
    ]);
    let c = update(&old, &new);
    let stage = json(&c.stage.unwrap()).to_string();
    assert!(
        stage.contains("ingress4_0") && !stage.contains("ingress6"),
        "{stage}"
    );
    assert_eq!(c.slots.get(SetKind::Ingress, false), 0);
    assert_eq!(c.slots.get(SetKind::Ingress, true), 1);
    let listing = r#"{"nftables": [{"rule": {"chain": "inbound", "expr": [{"match": {"op": "==",
        "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": "@ingress6_1"}}]}}]}"#;
    assert_eq!(referenced(listing).unwrap().get(SetKind::Ingress, true), 1);
}

#[test]
fn only_a_change_that_can_refuse_more_starts_a_generation() {
    let old = applied_fresh();
    assert_eq!(old.generation, Generation::FIRST);
    let fresh_change = fresh(&desired());
    assert!(fresh_change.sweep, "an unknown generation is swept");

    // More allowed, less denied: connections stay judged.
    let mut looser = old.desired.clone();
    looser.allow = Prefixes::merge(&["192.0.2.0/24".parse().unwrap()]);
    let c = update(&old, &looser);
    assert_eq!((c.generation, c.sweep), (old.generation, false));

    // Each kind of tightening moves on.
    let mut tighter = Vec::new();
    let mut d = old.desired.clone();
    d.deny = Prefixes::merge(&["198.51.100.7/32".parse().unwrap()]);
    tighter.push(d);
    let mut d = old.desired.clone();
    d.allow_internet_access = false;
    tighter.push(d);
    let mut d = old.desired.clone();
    d.always = Prefixes::merge(&["10.0.0.0/8".parse().unwrap()]);
    tighter.push(d);
    for new in tighter {
        let c = update(&old, &new);
        assert_eq!(c.generation.get(), 2, "{new:?}");
        assert!(!c.sweep);
    }
    let shrunk = Applied {
        desired: looser.clone(),
        ..old.clone()
    };
    assert_eq!(update(&shrunk, &old.desired).generation.get(), 2);
    // The same state again changes nothing.
    assert_eq!(update(&old, &old.desired).generation.get(), 1);
}

#[test]
fn the_rules_accept_the_generation_and_mark_with_it() {
    let mut d = desired();
    d.mark_bits = MarkBits::new(0x0000_ff00).unwrap();
    let c = fresh(&d);
    let policy = rules_of(&c.switch, "policy");
    let text = serde_json::to_string(&policy).unwrap();
    let value = c.generation.get() << 8;
    // Three accepts mark (allow v4, v6, and allow_internet_access).
    assert_eq!(text.matches(r#""mangle""#).count(), 3, "{text}");
    assert!(
        text.contains(r#"{"&":[{"ct":{"key":"mark"}},4294902015]}"#),
        "{text}"
    );
    let listing = serde_json::json!({"nftables": policy
        .iter()
        .map(|r| serde_json::json!({"rule": {"expr": r}}))
        .collect::<Vec<_>>()});
    assert_eq!(
        generation::listed(&listing),
        Some((0xff00, value)),
        "the fast path reads back"
    );
}

/// The chains a switch empties and the sets it deletes, in order.
fn refilled_and_deleted(c: &Change) -> (Vec<String>, Vec<String>) {
    let all = json(&c.switch)["nftables"].as_array().unwrap().clone();
    let names = |verb: &str, kind: &str| -> Vec<String> {
        all.iter()
            .filter_map(|o| o.get(verb).and_then(|v| v.get(kind)))
            .map(|v| v["name"].as_str().unwrap().to_owned())
            .collect()
    };
    (names("flush", "chain"), names("delete", "set"))
}

#[test]
fn a_trusted_change_refills_only_the_chains_it_changes() {
    let old = applied_fresh();
    let mut new = old.desired.clone();
    new.deny = Prefixes::merge(&["192.0.2.0/24".parse().unwrap()]);
    let c = update(&old, &new);
    // A grown deny set is a new generation: the policy chain only.
    assert_eq!(
        refilled_and_deleted(&c),
        (vec!["policy".to_owned()], vec!["deny4_1".to_owned()])
    );
    // Counters and chains exist in a trusted table: not declared again.
    let declared = json(&c.switch)["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("add"))
        .filter(|a| a.get("counter").is_some() || a.get("chain").is_some())
        .count();
    assert_eq!(declared, 0);

    let mut new = old.desired.clone();
    new.ingress = Prefixes::merge(&[
        "10.200.0.2/32".parse().unwrap(),
        "fd00:5b::1/128".parse().unwrap(),
    ]);
    let c = update(&old, &new);
    assert_eq!(
        refilled_and_deleted(&c),
        (vec!["inbound".to_owned()], vec!["ingress4_1".to_owned()])
    );
}

#[test]
fn a_repair_or_rebuild_writes_the_whole_table() {
    let all_chains = [
        "output",
        "input",
        "forward",
        "policy",
        "refuse",
        "inbound",
        "refuse_in",
        "dns_out",
        "dns_in",
    ];
    for c in [update(&applied_fresh(), &desired()), fresh(&desired())] {
        let (chains, deleted) = refilled_and_deleted(&c);
        assert_eq!(chains, all_chains);
        assert_eq!(deleted.len(), 10, "{deleted:?}");
    }
}
