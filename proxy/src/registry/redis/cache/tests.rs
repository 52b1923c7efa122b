//! The cache's rules, without redis.

use super::*;

fn spec(name: Option<&str>, agent: &str) -> SandboxSpec {
    SandboxSpec {
        exposed_ports: vec![],
        ..SandboxSpec::sample(name, agent)
    }
}

fn fetched(id: &str, name: Option<&str>, agent: &str, version: u64) -> Fetched {
    Fetched {
        id: id.into(),
        spec: spec(name, agent),
        version,
    }
}

fn current(installed: Installed) -> Arc<Sandbox> {
    match installed {
        Installed::Current(s) => s,
        other => panic!("{other:?}"),
    }
}

fn cache() -> Cache {
    Cache::new(Duration::from_secs(30), Duration::from_secs(2), 100, 4)
}

#[test]
fn versions_order_replacements() {
    let (c, now) = (cache(), Instant::now());
    let v2 = current(c.install(fetched("sbx-1", Some("web"), "10.0.0.2:9501", 2), true, now));
    // An older read arriving late changes nothing.
    let late = current(c.install(fetched("sbx-1", None, "10.0.0.9:9501", 1), true, now));
    assert!(Arc::ptr_eq(&v2, &late));
    // A newer one with the same agent keeps the pool; the name moves.
    let v3 = current(c.install(
        fetched("sbx-1", Some("site"), "10.0.0.2:9501", 3),
        true,
        now,
    ));
    assert_eq!(v2.live.upstream.generation, v3.live.upstream.generation);
    assert!(matches!(c.lookup("web", now), Lookup::Miss));
    assert!(matches!(c.lookup("site", now), Lookup::Fresh(s) if s.id == "sbx-1"));
    // A new agent closes the old pool; in-flight count carries over.
    let v4 = current(c.install(
        fetched("sbx-1", Some("site"), "10.0.0.3:9501", 4),
        true,
        now,
    ));
    assert!(v3.live.upstream.cancelled.is_cancelled());
    assert!(Arc::ptr_eq(&v3.live.inflight, &v4.live.inflight));
    assert!(!v4.live.upstream.cancelled.is_cancelled());
}

#[test]
fn removal_retires_and_blocks_late_reads() {
    let (c, now) = (cache(), Instant::now());
    let v2 = current(c.install(fetched("sbx-1", Some("web"), "10.0.0.2:9501", 2), true, now));
    c.removed("sbx-1", 5, now);
    assert!(v2.live.upstream.cancelled.is_cancelled());
    assert!(matches!(c.lookup("sbx-1", now), Lookup::Miss));
    assert!(matches!(c.lookup("web", now), Lookup::Miss));
    let late = c.install(fetched("sbx-1", Some("web"), "10.0.0.2:9501", 2), true, now);
    assert!(matches!(late, Installed::Removed));
    // Created again after the removal: a newer version is welcome.
    current(c.install(fetched("sbx-1", None, "10.0.0.2:9501", 6), true, now));
    // A removal older than the cached version does not touch it.
    c.removed("sbx-1", 4, now);
    assert!(matches!(c.lookup("sbx-1", now), Lookup::Fresh(_)));
}

#[test]
fn notices_only_refresh_what_is_cached() {
    let (c, now) = (cache(), Instant::now());
    assert!(matches!(
        c.install(fetched("sbx-1", None, "10.0.0.2:9501", 1), false, now),
        Installed::Skipped
    ));
    assert_eq!(c.len(), 0);
}

#[test]
fn negative_answers_and_notices() {
    let (c, now) = (cache(), Instant::now());
    let seen = c.notices();
    c.absent("web", 3, seen, now);
    assert!(matches!(c.lookup("web", now), Lookup::Unknown));
    assert!(matches!(
        c.lookup("web", now + Duration::from_secs(3)),
        Lookup::Miss
    ));
    // An entry named "web" appearing clears the negative answer.
    current(c.install(fetched("sbx-1", Some("web"), "10.0.0.2:9501", 4), true, now));
    assert!(matches!(c.lookup("web", now), Lookup::Fresh(_)));
    // A negative answer read across a notice is not kept.
    let seen = c.notices();
    c.notice();
    c.absent("other", 5, seen, now);
    assert!(matches!(c.lookup("other", now), Lookup::Miss));
    // A name read as absent loses its index entry but not its sandbox.
    c.absent("web", 5, c.notices(), now);
    assert!(matches!(c.lookup("sbx-1", now), Lookup::Fresh(_)));
    assert!(matches!(c.lookup("web", now), Lookup::Unknown));
}

#[test]
fn stale_entries_are_refreshed_by_one_caller() {
    let (c, now) = (cache(), Instant::now());
    current(c.install(fetched("sbx-1", None, "10.0.0.2:9501", 1), true, now));
    let later = now + Duration::from_secs(31);
    let Lookup::Stale(_, Some(claim)) = c.lookup("sbx-1", later) else {
        panic!("first caller refreshes");
    };
    assert!(matches!(c.lookup("sbx-1", later), Lookup::Stale(_, None)));
    drop(claim);
    assert!(matches!(
        c.lookup("sbx-1", later),
        Lookup::Stale(_, Some(_))
    ));
    // The same version read again renews the TTL.
    current(c.install(fetched("sbx-1", None, "10.0.0.2:9501", 1), true, later));
    assert!(matches!(c.lookup("sbx-1", later), Lookup::Fresh(_)));
}

#[test]
fn a_store_that_lost_its_data_is_believed_again() {
    let (c, now) = (cache(), Instant::now());
    c.observe("");
    c.observe("a1");
    let old = current(c.install(fetched("sbx-1", None, "10.0.0.2:9501", 50), true, now));
    // Redis came back empty and counts from 1 again: the next write wins.
    c.observe("b2");
    let new = current(c.install(fetched("sbx-1", None, "10.0.0.2:9501", 1), true, now));
    assert!(!Arc::ptr_eq(&old, &new));
    assert_eq!(old.live.upstream.generation, new.live.upstream.generation);
}

#[test]
fn bounded_expired_first() {
    let c = Cache::new(Duration::from_secs(30), Duration::from_secs(2), 10, 4);
    let now = Instant::now();
    for i in 0..5 {
        c.install(
            fetched(&format!("old-{i}"), None, "10.0.0.2:9501", i),
            true,
            now,
        );
    }
    let later = now + Duration::from_secs(20);
    for i in 0..5 {
        c.install(
            fetched(&format!("new-{i}"), None, "10.0.0.2:9501", 10 + i),
            true,
            later,
        );
    }
    assert_eq!(c.len(), 10);
    let past_old = now + Duration::from_secs(31);
    c.install(
        fetched("one-more", None, "10.0.0.2:9501", 20),
        true,
        past_old,
    );
    assert_eq!(c.len(), 6);
    assert!(matches!(c.lookup("old-0", past_old), Lookup::Miss));
    assert!(matches!(c.lookup("new-0", past_old), Lookup::Fresh(_)));
    for i in 0..10 {
        c.install(
            fetched(&format!("more-{i}"), None, "10.0.0.2:9501", 30 + i),
            true,
            past_old,
        );
    }
    assert!(c.len() <= 10);
}
