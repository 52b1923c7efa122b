//! `sbx-proxy credentials ...`: writes and lists the credentials file.
//!
//! A new secret is printed alone on stdout, once, so that
//! `key=$(sbx-proxy credentials add-api-key ...)` captures exactly it; the
//! file keeps only its hash, and a running proxy picks it up on SIGHUP.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::auth::file::{self, Entry};
use crate::auth::Principal;

/// Longest session the CLI mints: ten years is already a mistake.
const MAX_TTL_SECS: u64 = 10 * 366 * 86_400;

#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum CredentialsCommand {
    /// Add an API key for one project; prints the key.
    AddApiKey {
        /// Organization id.
        #[arg(long)]
        org: String,
        /// Project id.
        #[arg(long)]
        project: String,
        /// A name to recognise the key by in `list`.
        #[arg(long)]
        label: Option<String>,
    },
    /// Add a user and the projects their PATs and sessions may act in.
    AddUser {
        /// User id.
        #[arg(long)]
        user: String,
        /// ORG/PROJECT, repeatable.
        #[arg(long = "project", value_name = "ORG/PROJECT", required = true)]
        projects: Vec<String>,
    },
    /// Add a personal access token for an existing user; prints the token.
    AddPat {
        #[arg(long)]
        user: String,
        #[arg(long)]
        label: Option<String>,
    },
    /// Add a session for an existing user; prints the session token (the
    /// value of the `tl.session_token` cookie).
    AddSession {
        #[arg(long)]
        user: String,
        /// How long the session is valid, in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl_secs: u64,
    },
    /// List the entries: kind, who, where, and the start of each hash.
    List,
}

/// Runs one command against the credentials file at `file`.
pub fn run(file: &Path, command: CredentialsCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let shown = file.display();
    match command {
        CredentialsCommand::AddApiKey {
            org,
            project,
            label,
        } => {
            check_id("--org", &org)?;
            check_id("--project", &project)?;
            check_label(label.as_deref())?;
            let key = file::add_api_key(file, &org, &project, label.as_deref())?;
            writeln!(out, "{key}").context("writing to stdout")?;
            eprintln!("API key for {org}/{project} added to {shown}; it is not stored and cannot be shown again");
        }
        CredentialsCommand::AddUser { user, projects } => {
            check_id("--user", &user)?;
            let projects = projects
                .iter()
                .map(|p| parse_project(p))
                .collect::<anyhow::Result<Vec<_>>>()?;
            file::add_user(file, &user, &projects)?;
            eprintln!("user {user} added to {shown}");
        }
        CredentialsCommand::AddPat { user, label } => {
            check_id("--user", &user)?;
            check_label(label.as_deref())?;
            let token = file::add_pat(file, &user, label.as_deref())?;
            writeln!(out, "{token}").context("writing to stdout")?;
            eprintln!("personal access token for {user} added to {shown}; it is not stored and cannot be shown again");
        }
        CredentialsCommand::AddSession { user, ttl_secs } => {
            check_id("--user", &user)?;
            if ttl_secs == 0 || ttl_secs > MAX_TTL_SECS {
                bail!("--ttl-secs must be between 1 and {MAX_TTL_SECS}");
            }
            let token = file::add_session(file, &user, Duration::from_secs(ttl_secs))?;
            writeln!(out, "{token}").context("writing to stdout")?;
            eprintln!("session for {user} added to {shown}, valid {ttl_secs}s");
        }
        CredentialsCommand::List => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            for entry in file::list(file)? {
                writeln!(out, "{}", list_line(&entry, now)).context("writing to stdout")?;
            }
        }
    }
    out.flush().context("writing to stdout")
}

fn check_id(flag: &str, value: &str) -> anyhow::Result<()> {
    if !file::valid_id(value) {
        bail!("{flag} {value:?}: expected 1 to 128 characters of A-Z a-z 0-9 . _ -");
    }
    Ok(())
}

fn check_label(label: Option<&str>) -> anyhow::Result<()> {
    label.map_or(Ok(()), |l| check_id("--label", l))
}

fn parse_project(value: &str) -> anyhow::Result<Principal> {
    let Some((org, project)) = value.split_once('/') else {
        bail!("--project {value:?}: expected ORG/PROJECT");
    };
    check_id("--project (organization)", org)?;
    check_id("--project (project)", project)?;
    Ok(Principal {
        organization_id: org.to_owned(),
        project_id: project.to_owned(),
    })
}

/// One tab-separated line: kind, who, where, hash prefix. Values from a
/// hand-edited file are quoted when they could break the columns.
fn list_line(entry: &Entry, now: u64) -> String {
    let short = |sha: &str| sha.chars().take(8).collect::<String>();
    let scope = |p: &Principal| format!("{}/{}", shown(&p.organization_id), shown(&p.project_id));
    let who = |user: &str, label: &Option<String>| match label {
        Some(label) => format!("{} ({})", shown(user), shown(label)),
        None => shown(user),
    };
    let columns = match entry {
        Entry::ApiKey {
            label,
            principal,
            sha256,
        } => [
            "api_key".to_owned(),
            label.as_deref().map_or_else(|| "-".to_owned(), shown),
            scope(principal),
            short(sha256),
        ],
        Entry::User { id, projects } => {
            let projects: Vec<String> = projects.iter().map(scope).collect();
            let projects = if projects.is_empty() {
                "-".to_owned()
            } else {
                projects.join(",")
            };
            ["user".to_owned(), shown(id), projects, "-".to_owned()]
        }
        Entry::PersonalAccessToken {
            user,
            label,
            sha256,
        } => [
            "pat".to_owned(),
            who(user, label),
            "-".to_owned(),
            short(sha256),
        ],
        Entry::Session {
            user,
            expires_at,
            sha256,
        } => {
            let state = if *expires_at > now {
                "expires_at"
            } else {
                "expired_at"
            };
            [
                "session".to_owned(),
                shown(user),
                format!("{state}={expires_at}"),
                short(sha256),
            ]
        }
    };
    columns.join("\t")
}

fn shown(value: &str) -> String {
    if file::valid_id(value) {
        value.to_owned()
    } else {
        format!("{value:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::file::FileStore;
    use crate::auth::{Context, Credential, CredentialKind, CredentialStore, Verdict};
    use clap::Parser;
    use sha2::Digest as _;
    use std::os::unix::fs::PermissionsExt;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: CredentialsCommand,
    }

    fn parse(args: &[&str]) -> Result<CredentialsCommand, clap::Error> {
        Cli::try_parse_from(std::iter::once("credentials").chain(args.iter().copied()))
            .map(|cli| cli.command)
    }

    #[test]
    fn parses_the_commands() {
        let add = parse(&[
            "add-user",
            "--user",
            "alice",
            "--project",
            "o/p",
            "--project",
            "o/q",
        ]);
        assert_eq!(
            add.expect("add-user"),
            CredentialsCommand::AddUser {
                user: "alice".into(),
                projects: vec!["o/p".into(), "o/q".into()],
            }
        );
        assert!(parse(&["add-user", "--user", "alice"]).is_err());
        let session = parse(&["add-session", "--user", "alice"]).expect("add-session");
        assert_eq!(
            session,
            CredentialsCommand::AddSession {
                user: "alice".into(),
                ttl_secs: 86_400
            }
        );
        assert!(parse(&["add-api-key", "--org", "o"]).is_err());
        assert_eq!(parse(&["list"]).expect("list"), CredentialsCommand::List);
    }

    #[test]
    fn bad_input_is_refused_before_touching_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("creds.toml");
        let user = |projects: &[&str]| CredentialsCommand::AddUser {
            user: "alice".into(),
            projects: projects.iter().map(|p| (*p).to_owned()).collect(),
        };
        for (command, wanted) in [
            (user(&["op"]), "expected ORG/PROJECT"),
            (user(&["o/p/q"]), "(project)"),
            (user(&["/p"]), "(organization)"),
            (
                CredentialsCommand::AddPat {
                    user: "al ice".into(),
                    label: None,
                },
                "--user",
            ),
            (
                CredentialsCommand::AddSession {
                    user: "alice".into(),
                    ttl_secs: 0,
                },
                "--ttl-secs",
            ),
        ] {
            let err = run(&path, command).expect_err(wanted).to_string();
            assert!(err.contains(wanted), "{wanted:?} not in {err:?}");
        }
        assert!(!path.exists());
        // A PAT needs an existing user.
        let err = file::add_pat(&path, "alice", None).expect_err("no user");
        assert!(err.to_string().contains("add-user"), "{err}");
    }

    #[tokio::test]
    async fn written_credentials_verify() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("creds.toml");
        std::fs::write(&path, "# kept\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let alice = CredentialsCommand::AddUser {
            user: "alice".into(),
            projects: vec!["org-1/proj-1".into()],
        };
        run(&path, alice.clone()).expect("add-user");
        assert!(run(&path, alice).is_err(), "a duplicate user");
        let key = file::add_api_key(&path, "org-1", "proj-2", Some("ci")).expect("api key");
        let pat = file::add_pat(&path, "alice", Some("laptop")).expect("pat");
        let session = file::add_session(&path, "alice", Duration::from_secs(60)).expect("session");
        assert!(key.starts_with("sbx_key_") && key.len() == 8 + 43, "{key}");
        assert!(pat.starts_with("tl_pat_") && pat.len() == 7 + 43, "{pat}");
        assert_eq!(session.len(), 43);

        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.starts_with("# kept\n"), "{text}");
        for secret in [&key, &pat, &session] {
            assert!(!text.contains(secret.as_str()));
        }
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let leftovers = std::fs::read_dir(dir.path()).expect("dir").count();
        assert_eq!(leftovers, 1, "temporary files left behind");

        let store = FileStore::load(&path).expect("load");
        let ctx = Context {
            organization_id: Some("org-1".into()),
            project_id: Some("proj-1".into()),
            from_query: false,
        };
        let granted = |org: &str, project: &str| {
            Verdict::Granted(Principal {
                organization_id: org.into(),
                project_id: project.into(),
            })
        };
        for (kind, secret, wanted) in [
            (CredentialKind::ApiKey, &key, granted("org-1", "proj-2")),
            (
                CredentialKind::PersonalAccessToken,
                &pat,
                granted("org-1", "proj-1"),
            ),
            (
                CredentialKind::Session,
                &session,
                granted("org-1", "proj-1"),
            ),
        ] {
            let got = store
                .verify(&Credential::new(kind, secret.as_str()), &ctx)
                .await;
            assert_eq!(got.expect("verdict"), wanted, "{kind}");
        }

        let now = 1_000;
        let lines: Vec<String> = file::list(&path)
            .expect("list")
            .iter()
            .map(|e| list_line(e, now))
            .collect();
        let short = |s: &str| hex::encode(sha2::Sha256::digest(s.as_bytes()))[..8].to_owned();
        assert_eq!(
            lines[0],
            format!("api_key\tci\torg-1/proj-2\t{}", short(&key))
        );
        assert_eq!(lines[1], "user\talice\torg-1/proj-1\t-");
        assert_eq!(lines[2], format!("pat\talice (laptop)\t-\t{}", short(&pat)));
        assert!(
            lines[3].starts_with("session\talice\texpires_at="),
            "{}",
            lines[3]
        );
        assert_eq!(lines.len(), 4);
        for (line, secret) in lines.iter().zip([&key, &pat, &session]) {
            assert!(!line.contains(secret.as_str()));
        }
    }

    #[test]
    fn list_quotes_odd_values() {
        let entry = Entry::Session {
            user: "bob\tsmith".into(),
            expires_at: 5,
            sha256: "ab".repeat(32),
        };
        assert_eq!(
            list_line(&entry, 10),
            "session\t\"bob\\tsmith\"\texpired_at=5\tabababab"
        );
        assert_eq!(
            file::list(Path::new("/nonexistent/x.toml")).expect("empty"),
            vec![]
        );
    }
}
