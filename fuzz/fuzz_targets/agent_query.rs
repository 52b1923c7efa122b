//! The agent's query strings: `?path=&recursive=` of the `/files` routes,
//! `?token=` of the PTY WebSocket and `?port=` of both tunnels, parsed from
//! a URI exactly as hyper hands it over.
//!
//! Properties: an accepted file path is absolute, has no NUL and no `..`
//! segment, so joined under any root it stays under that root; an accepted
//! port is in 1..=65535 and comes from the only `port` pair of the query.
#![no_main]

use std::path::{Component, Path, PathBuf};

use http::Uri;
use libfuzzer_sys::fuzz_target;
use sbx_agent::fuzzing::{files_query, pty_token_query};
use sbx_proto::tunnel::parse_port_query;

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(uri) = format!("/api/v1/files?{query}").parse::<Uri>() else {
        return;
    };
    if let Ok((path, _recursive)) = files_query(&uri) {
        check_path(&path);
    }
    let _ = pty_token_query(&uri);
    if let Ok(port) = parse_port_query(uri.query()) {
        assert!(port >= 1);
        let values: Vec<&str> = uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|pair| match pair.split_once('=') {
                Some(("port", v)) => Some(v),
                None if pair == "port" => Some(""),
                _ => None,
            })
            .collect();
        assert_eq!(values.len(), 1, "{query:?}");
        assert_eq!(
            values[0].parse::<u32>().ok(),
            Some(u32::from(port)),
            "{query:?}"
        );
    }
});

fn check_path(path: &Path) {
    assert!(path.is_absolute(), "{path:?}");
    assert!(
        !path.as_os_str().as_encoded_bytes().contains(&0),
        "{path:?}"
    );
    assert!(
        path.components().all(|c| c != Component::ParentDir),
        "{path:?}"
    );
    // Lexically, under a root, it never climbs out.
    let root = Path::new("/srv/sandbox-root");
    let mut joined = root.to_path_buf();
    for c in path.components() {
        match c {
            Component::Normal(part) => joined.push(part),
            Component::ParentDir => {
                joined.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    assert!(joined.starts_with(root), "{path:?} escapes to {joined:?}");
    let _: PathBuf = joined;
}
