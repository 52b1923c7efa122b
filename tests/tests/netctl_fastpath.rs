//! netctl judges a connection once per policy generation (issue 14): the
//! sets are skipped for connections accepted under the generation in force,
//! and any change that can refuse more starts a new one, so tightening
//! still cuts open connections, generation wrap-around included.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sbx_tests::netctl_support::*;
use sbx_tests::netns::require_netns;

/// Opens a connection from the sandbox to the echo server at `ip`.
fn open(w: &World, ip: &str) -> TcpStream {
    let addr = SocketAddr::new(ip.parse().expect("ip"), PORT);
    let conn = w
        .probe
        .run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    conn.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    conn
}

/// One byte there and back; false once the connection is cut.
fn roundtrip(conn: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1];
    conn.write_all(b"x").is_ok() && conn.read_exact(&mut buf).is_ok() && buf == *b"x"
}

/// `bytes` through the echo server and back.
fn bulk(conn: &mut TcpStream, bytes: usize) {
    let chunk = vec![7u8; 64 * 1024];
    let mut reader = conn.try_clone().expect("clone");
    let reading = std::thread::spawn(move || {
        let mut got = 0;
        let mut buf = vec![0u8; 64 * 1024];
        while got < bytes {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        got
    });
    let mut sent = 0;
    while sent < bytes {
        conn.write_all(&chunk).expect("bulk write");
        sent += chunk.len();
    }
    assert_eq!(reading.join().expect("reader"), bytes, "echoed bytes");
}

/// (judged and accepted, accepted without judging) packet counters.
fn counters(w: &World) -> (u64, u64) {
    let view = w.api().call("GET", "/v1/sandboxes/sb", None).json();
    let c = &view["counters"];
    (
        c["accepted"].as_u64().expect("accepted"),
        c["accepted_fast"].as_u64().expect("accepted_fast"),
    )
}

fn generation(w: &World) -> u64 {
    w.api().call("GET", "/v1/sandboxes/sb", None).json()["policy_generation"]
        .as_u64()
        .expect("policy_generation")
}

fn deny(list: &[&str]) -> String {
    let quoted: Vec<String> = list.iter().map(|a| format!("\"{a}\"")).collect();
    format!(r#"{{"deny_out": [{}]}}"#, quoted.join(", "))
}

/// PUTs `network` and returns how long it took until `conn` was cut
/// (polling from the moment the PUT was sent).
fn time_to_cut(w: &World, network: &str, conn: &mut TcpStream) -> Duration {
    let started = Instant::now();
    w.put_ok("sb", network);
    loop {
        if !roundtrip(conn) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "connection survived {network}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn the_sets_are_skipped_on_judged_connections_until_a_tightening() {
    if !require_netns() {
        return;
    }
    let w = World::new();
    w.put_ok("sb", &deny(&[V4_C]));
    let mut conn = open(&w, V4_A);
    assert!(roundtrip(&mut conn));
    let (judged, fast) = counters(&w);
    bulk(&mut conn, 8 << 20);
    let (judged_after, fast_after) = counters(&w);
    assert_eq!(
        judged_after, judged,
        "no packet of the bulk transfer went through the set lookups"
    );
    assert!(
        fast_after > fast + 100,
        "the fast path carried the transfer ({fast} -> {fast_after})"
    );

    // Denying another address can refuse more: everything is judged once
    // again, and this connection passes.
    let before = generation(&w);
    w.put_ok("sb", &deny(&[V4_C, V4_D]));
    assert_eq!(generation(&w), before + 1);
    assert!(roundtrip(&mut conn));
    let (judged_again, _) = counters(&w);
    assert!(
        judged_again > judged_after,
        "judged again after the tightening"
    );
    bulk(&mut conn, 4 << 20);
    assert_eq!(counters(&w).0, judged_again, "and then skipped again");

    // Allowing more keeps the generation.
    w.put_ok("sb", &deny(&[V4_C]));
    assert_eq!(
        generation(&w),
        before + 1,
        "a loosening keeps the generation"
    );
    assert!(roundtrip(&mut conn));
}

#[test]
fn tightening_cuts_v4_and_v6_within_100ms_even_when_opened_generations_ago() {
    if !require_netns() {
        return;
    }
    let w = World::new();
    w.put_ok("sb", "null");
    let mut v4 = open(&w, V4_A);
    let mut v6 = open(&w, V6_A);
    assert!(roundtrip(&mut v4) && roundtrip(&mut v6));
    // Two generations pass while both connections sit idle.
    w.put_ok("sb", &deny(&[V4_C]));
    w.put_ok("sb", &deny(&[V4_C, V4_D]));
    let took_v4 = time_to_cut(&w, &deny(&[V4_C, V4_D, V4_A]), &mut v4);
    let took_v6 = time_to_cut(&w, &deny(&[V4_C, V4_D, V4_A, V6_A]), &mut v6);
    eprintln!("cut after PUT: IPv4 {took_v4:?}, IPv6 {took_v6:?}");
    assert!(
        took_v4 < Duration::from_millis(100),
        "IPv4 took {took_v4:?}"
    );
    assert!(
        took_v6 < Duration::from_millis(100),
        "IPv6 took {took_v6:?}"
    );
}

#[test]
fn changes_that_do_not_concern_a_connection_neither_cut_nor_stall_it() {
    if !require_netns() {
        return;
    }
    let w = World::new();
    w.put_ok("sb", "null");
    let mut conn = open(&w, V4_A);
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let pinging = std::thread::spawn(move || {
        let mut worst = Duration::ZERO;
        let mut count = 0;
        while !flag.load(Ordering::Relaxed) {
            let started = Instant::now();
            assert!(roundtrip(&mut conn), "round trip {count} failed");
            worst = worst.max(started.elapsed());
            count += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        (count, worst)
    });
    for i in 0..20 {
        // Alternating: each change denies something new (a new generation).
        let other = if i % 2 == 0 { V4_C } else { V4_D };
        w.put_ok("sb", &deny(&[other, V6_B]));
    }
    stop.store(true, Ordering::Relaxed);
    let (count, worst) = pinging.join().expect("the connection survived");
    eprintln!("{count} round trips across 20 generations, slowest {worst:?}");
    assert!(count > 20);
    assert!(worst < Duration::from_millis(250), "stalled {worst:?}");
}

#[test]
fn generations_wrap_around_safely() {
    if !require_netns() {
        return;
    }
    // Two bits: generations 1, 2, 3, then a sweep and 1 again.
    let w = World::with(WorldOptions {
        extra_config: "[fast_path]\nct_mark_mask = 0x3\n".into(),
        ..WorldOptions::default()
    });
    w.put_ok("sb", "null");
    assert_eq!(generation(&w), 1);
    let mut idle = open(&w, V4_B);
    assert!(
        roundtrip(&mut idle),
        "judged (and marked) under generation 1"
    );
    // Denied while idle (generation 2), then two more tightenings wrap the
    // counter back to 1: without the sweep, the idle connection's old mark
    // would match again and pass the denied address.
    w.put_ok("sb", &deny(&[V4_B]));
    w.put_ok("sb", &deny(&[V4_B, V4_C]));
    w.put_ok("sb", &deny(&[V4_B, V4_D]));
    assert_eq!(generation(&w), 1, "wrapped");
    assert!(
        !roundtrip(&mut idle),
        "a connection marked before the wrap is judged again and cut"
    );

    // Many wraps in a row with a live connection: it keeps working, new
    // connections work, and a tightening still cuts it.
    let mut live = open(&w, V4_A);
    for i in 0..30 {
        let other = if i % 2 == 0 { V4_C } else { V4_D };
        w.put_ok("sb", &deny(&[V4_B, other]));
        assert!(roundtrip(&mut live), "live connection, change {i}");
    }
    assert!(w.reachable(V4_A));
    w.assert_refused(V4_B);
    let took = time_to_cut(&w, &deny(&[V4_A, V4_B]), &mut live);
    assert!(took < Duration::from_millis(100), "took {took:?}");
}

#[test]
fn a_restart_reads_the_generation_back_and_judges_again() {
    if !require_netns() {
        return;
    }
    let mut w = World::new();
    w.put_ok("sb", "null");
    w.put_ok("sb", &deny(&[V4_C]));
    assert_eq!(generation(&w), 2);
    let mut conn = open(&w, V4_A);
    assert!(roundtrip(&mut conn));
    if let Some(daemon) = w.daemon.as_ref() {
        daemon.child.signal(libc::SIGKILL);
    }
    w.start_daemon();
    // Restored from the kernel's rules: the generation after the one they
    // showed, not a guess.
    assert_eq!(generation(&w), 3);
    assert!(
        roundtrip(&mut conn),
        "an open connection survives the restart"
    );
    let took = time_to_cut(&w, &deny(&[V4_C, V4_A]), &mut conn);
    assert!(took < Duration::from_millis(100), "took {took:?}");
}
