//! `sbx exec` and `sbx files` against a real agent.

use std::process::{Command, Output};

use sbx_tests::agent::Agent;
use sbx_tests::bins::bin;

fn sbx(agent: &Agent, args: &[&str]) -> Output {
    let token = agent.secrets.token_file();
    let mut cmd = Command::new(bin("sbx"));
    let (sub, rest) = args.split_first().expect("subcommand");
    cmd.arg(sub);
    // `files` has its own subcommand before the URL.
    let rest = if *sub == "files" {
        cmd.arg(rest[0]);
        &rest[1..]
    } else {
        rest
    };
    cmd.arg(agent.url())
        .arg("--token-file")
        .arg(token)
        .args(rest);
    cmd.output().expect("run sbx")
}

#[test]
fn exec_streams_output_and_exits_with_the_code() {
    let agent = Agent::start(&[]);
    let out = sbx(
        &agent,
        &[
            "exec",
            "-e",
            "WHO=sbx",
            "-w",
            "/tmp",
            "--",
            "sh",
            "-c",
            "echo hi $WHO; pwd; echo oops >&2; exit 5",
        ],
    );
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi sbx\n/tmp\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");

    let out = sbx(&agent, &["exec", "--timeout", "0.2", "--", "sleep", "10"]);
    assert_eq!(out.status.code(), Some(128 + 9));
    assert!(String::from_utf8_lossy(&out.stderr).contains("timed out"));

    let out = sbx(&agent, &["exec", "--", "/no/such/program"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("400") && err.contains("BAD_REQUEST"), "{err}");
}

#[test]
fn files_put_get_ls() {
    let agent = Agent::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("src.bin");
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
    std::fs::write(&local, &payload).unwrap();
    let remote = dir.path().join("remote/dir/copy.bin");
    let out = sbx(
        &agent,
        &[
            "files",
            "put",
            local.to_str().unwrap(),
            remote.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&remote).unwrap(), payload);

    let back = dir.path().join("back.bin");
    let out = sbx(
        &agent,
        &[
            "files",
            "get",
            remote.to_str().unwrap(),
            back.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&back).unwrap(), payload);

    let out = sbx(&agent, &["files", "get", remote.to_str().unwrap(), "-"]);
    assert_eq!(out.stdout, payload);

    let out = sbx(
        &agent,
        &["files", "ls", dir.path().join("remote").to_str().unwrap()],
    );
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "d            - dir/"
    );

    let out = sbx(
        &agent,
        &["files", "get", "/no/such/file", back.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT_FOUND"));
    assert_eq!(
        std::fs::read(&back).unwrap(),
        payload,
        "a failed download leaves the old file"
    );
}
