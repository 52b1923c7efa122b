use super::*;

fn policy(json: &str) -> Result<NetworkPolicy, serde_json::Error> {
    serde_json::from_str(json)
}

#[test]
fn defaults_allow_everything() {
    let p = policy("{}").unwrap();
    assert_eq!(p, NetworkPolicy::default());
    assert!(p.allow_internet_access);
}

#[test]
fn netns_or_setup_exactly_one() {
    let spec = |json: &str| serde_json::from_str::<SandboxSpec>(json).unwrap();
    assert!(spec(r#"{"netns":"a"}"#).validate().is_ok());
    let made = spec(r#"{"setup":{"tap":true},"network":{}}"#);
    assert_eq!(made.setup, Some(SetupSpec { tap: true }));
    assert!(made.validate().is_ok());
    assert!(spec(r#"{"setup":{}}"#).validate().is_ok());
    for both_or_neither in [r#"{"netns":"a","setup":{}}"#, r#"{"network":null}"#] {
        assert_eq!(spec(both_or_neither).check_target(), Err(SpecError::Target));
        assert!(spec(both_or_neither).validate().is_err());
    }
    assert!(serde_json::from_str::<SandboxSpec>(r#"{"setup":{"tun":true}}"#).is_err());
    // A spec without setup serialises exactly as before.
    assert_eq!(
        serde_json::to_string(&spec(r#"{"netns":"a"}"#)).unwrap(),
        r#"{"netns":"a","network":null}"#
    );
}

#[test]
fn unknown_fields_are_refused() {
    assert!(policy(r#"{"allow_out": [], "allow_in": []}"#).is_err());
    assert!(serde_json::from_str::<SandboxSpec>(r#"{"netns":"a","extra":1}"#).is_err());
    assert!(serde_json::from_str::<SandboxPatch>(r#"{"policy":null}"#).is_err());
}

#[test]
fn parses_addresses_cidrs_and_names() {
    assert_eq!(
        parse_destination("192.0.2.7").unwrap(),
        Destination::Net("192.0.2.7/32".parse().unwrap())
    );
    assert_eq!(
        parse_destination("2001:db8::/32").unwrap(),
        Destination::Net("2001:db8::/32".parse().unwrap())
    );
    assert_eq!(
        parse_destination("Example.COM.").unwrap(),
        Destination::Domain("example.com".into())
    );
    assert_eq!(
        parse_destination("a-1.b2.example").unwrap(),
        Destination::Domain("a-1.b2.example".into())
    );
}

#[test]
fn wildcards_cover_names_under_a_domain() {
    assert_eq!(
        parse_destination("*.Example.COM").unwrap(),
        Destination::Wildcard("example.com".into())
    );
    assert_eq!(
        parse_destination("*.example.com").unwrap().to_string(),
        "*.example.com"
    );
}

#[test]
fn host_bits_are_an_error() {
    assert_eq!(
        parse_destination("192.0.2.1/24"),
        Err(EntryError::HostBitsSet("192.0.2.0/24".parse().unwrap()))
    );
    assert!(parse_destination("2001:db8::1/64").is_err());
}

#[test]
fn mapped_ipv6_is_folded_into_ipv4() {
    assert_eq!(
        parse_destination("::ffff:192.0.2.9").unwrap(),
        Destination::Net("192.0.2.9/32".parse().unwrap())
    );
    assert_eq!(
        parse_destination("::ffff:198.51.100.0/120").unwrap(),
        Destination::Net("198.51.100.0/24".parse().unwrap())
    );
    // A wider prefix is IPv6 and stays IPv6.
    assert_eq!(
        parse_destination("::/0").unwrap(),
        Destination::Net("::/0".parse().unwrap())
    );
}

#[test]
fn bad_names_are_refused() {
    for bad in [
        "",
        "*example.com",
        "a.*.example.com",
        "*.*.example.com",
        "*",
        "*.",
        "-a.example",
        "a-.example",
        "a..b",
        "exa mple.com",
        "1.2.3",
        "10.0.0.256",
        "10.0.0.0/33",
        "ex_ample.com",
        "é.example",
        ".",
    ] {
        assert!(parse_destination(bad).is_err(), "{bad:?} accepted");
    }
    assert_eq!(
        parse_destination(&"a".repeat(300)),
        Err(EntryError::TooLong)
    );
    let label64 = format!("{}.com", "a".repeat(64));
    assert!(parse_destination(&label64).is_err());
}

#[test]
fn errors_name_the_entry() {
    let p = policy(r#"{"deny_out": ["192.0.2.0/24", "10.1.2.3/8"]}"#).unwrap();
    let err = p.validate().unwrap_err().to_string();
    assert!(err.contains("deny_out[1]"), "{err}");
    assert!(err.contains("10.1.2.3/8"), "{err}");
    assert!(err.contains("10.0.0.0/8"), "{err}");
}

#[test]
fn list_size_is_capped() {
    let p = NetworkPolicy {
        allow_out: vec!["192.0.2.1".into(); MAX_LIST_ENTRIES + 1],
        ..NetworkPolicy::default()
    };
    assert!(matches!(
        p.validate(),
        Err(PolicyError::TooManyEntries { .. })
    ));
}

#[test]
fn patch_distinguishes_absent_null_and_object() {
    let absent: SandboxPatch = serde_json::from_str("{}").unwrap();
    assert_eq!(absent.network, None);
    let null: SandboxPatch = serde_json::from_str(r#"{"network":null}"#).unwrap();
    assert_eq!(null.network, Some(None));
    let obj: SandboxPatch =
        serde_json::from_str(r#"{"network":{"allow_internet_access":false}}"#).unwrap();
    assert!(matches!(obj.network, Some(Some(_))));
}

#[test]
fn bodies_are_objects_only() {
    // Found by fuzz/fuzz_targets/netctl_api.rs: serde's derive read
    // `[[]]` as a PATCH replacing the policy, fields by position.
    assert!(serde_json::from_str::<SandboxPatch>("[[]]").is_err());
    assert!(serde_json::from_str::<SandboxPatch>("[]").is_err());
    assert!(serde_json::from_str::<SandboxPatch>(r#"{"network":[false]}"#).is_err());
    assert!(serde_json::from_str::<SandboxSpec>(r#"["sbx1"]"#).is_err());
    assert!(serde_json::from_str::<SandboxSpec>(r#"{"setup":[true]}"#).is_err());
    assert!(policy("[false]").is_err());
    assert!(policy("{}").is_ok());
}

#[test]
fn netns_and_ids() {
    assert_eq!(netns_path("sbx1").unwrap(), "/run/netns/sbx1");
    assert!(netns_path("/proc/123/ns/net").is_ok());
    assert!(netns_path("/proc/123/task/45/ns/net").is_ok());
    for bad in [
        "../x",
        "/etc/passwd",
        "/run/netns/../x",
        "/proc/self/ns/net",
        "",
    ] {
        assert!(netns_path(bad).is_err(), "{bad:?} accepted");
    }
    assert!(validate_id("sbx-1.a_b").is_ok());
    assert!(validate_id("../x").is_err());
    assert!(validate_id(".hidden").is_err());
    assert!(validate_iface("tap0").is_ok());
    assert!(validate_iface("averyveryverylongname").is_err());
}
