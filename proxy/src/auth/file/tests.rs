//! Tests of the store: loading, parsing and verdicts. The writers are
//! exercised through the CLI in `credentials_cli`.

use super::*;

const NOW: u64 = 1_700_000_000;

fn hash(secret: &str) -> String {
    sha256_hex(secret)
}

fn store_with(text: &str) -> (tempfile::TempDir, PathBuf, Result<FileStore, AuthError>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("credentials.toml");
    std::fs::write(&path, text).expect("write");
    let store = FileStore::load(&path);
    (dir, path, store)
}

fn sample() -> String {
    format!(
        r#"# hand-written
[[api_key]]
sha256 = "{}"
organization_id = "org-1"
project_id = "proj-1"
label = "ci"

[[user]]
id = "alice"
projects = [{{ organization_id = "org-1", project_id = "proj-1" }}]

[[personal_access_token]]
sha256 = "{}"
user = "alice"

[[personal_access_token]]
sha256 = "{}"
user = "ghost"

[[session]]
sha256 = "{}"
user = "alice"
expires_at = {NOW}
"#,
        hash("sbx_key_a").to_uppercase(),
        hash("tl_pat_a"),
        hash("tl_pat_ghost"),
        hash("sess"),
    )
}

fn ctx(org: Option<&str>, project: Option<&str>) -> Context {
    Context {
        organization_id: org.map(str::to_owned),
        project_id: project.map(str::to_owned),
        from_query: false,
    }
}

fn granted(org: &str, project: &str) -> Verdict {
    Verdict::Granted(Principal {
        organization_id: org.into(),
        project_id: project.into(),
    })
}

#[test]
fn verdicts() {
    let (_dir, _, store) = store_with(&sample());
    let store = store.expect("load");
    let key = |k, s: &str| Credential::new(k, s);
    let (api, pat, session) = (
        CredentialKind::ApiKey,
        CredentialKind::PersonalAccessToken,
        CredentialKind::Session,
    );
    let mine = ctx(Some("org-1"), Some("proj-1"));
    let other = ctx(Some("org-1"), Some("proj-2"));
    let none = ctx(None, None);
    let check = |c: &Credential, x: &Context, now| store.check(c, x, now);
    // An API key acts in its own project whatever the context says.
    assert_eq!(
        check(&key(api, "sbx_key_a"), &other, NOW),
        granted("org-1", "proj-1")
    );
    assert_eq!(check(&key(api, "sbx_key_b"), &none, NOW), Verdict::Invalid);
    // The right secret under another kind is not found.
    assert_eq!(check(&key(pat, "sbx_key_a"), &mine, NOW), Verdict::Invalid);
    assert_eq!(
        check(&key(pat, "tl_pat_a"), &mine, NOW),
        granted("org-1", "proj-1")
    );
    assert_eq!(
        check(&key(pat, "tl_pat_a"), &other, NOW),
        Verdict::OutOfScope
    );
    assert_eq!(
        check(&key(pat, "tl_pat_a"), &ctx(Some("org-1"), None), NOW),
        Verdict::Invalid
    );
    assert_eq!(
        check(&key(pat, "tl_pat_ghost"), &mine, NOW),
        Verdict::OutOfScope
    );
    assert_eq!(check(&key(pat, "tl_pat_b"), &mine, NOW), Verdict::Invalid);
    assert_eq!(
        check(&key(session, "sess"), &mine, NOW - 1),
        granted("org-1", "proj-1")
    );
    assert_eq!(
        check(&key(session, "sess"), &other, NOW - 1),
        Verdict::OutOfScope
    );
    assert_eq!(
        check(&key(session, "sess"), &none, NOW - 1),
        Verdict::Invalid
    );
    assert_eq!(check(&key(session, "sess"), &mine, NOW), Verdict::Invalid);
}

#[tokio::test]
async fn verify_through_the_trait() {
    let (_dir, _, store) = store_with(&sample());
    let store: Box<dyn CredentialStore> = Box::new(store.expect("load"));
    let got = store
        .verify(
            &Credential::new(CredentialKind::ApiKey, "sbx_key_a"),
            &Context::default(),
        )
        .await;
    assert_eq!(got.expect("verdict"), granted("org-1", "proj-1"));
}

#[test]
fn malformed_files_are_refused_with_the_reason() {
    let h = hash("x");
    for (text, wanted) in [
        ("[[api_key]]\nsha256 = \"ab\"\norganization_id = \"o\"\nproject_id = \"p\"\n", "64 hex"),
        ("\n\n[[user]]\nid = \"a\"\nrole = \"admin\"\n", "line 5"),
        ("[[users]]\nid = \"a\"\n", "unknown field"),
        ("[[user]]\nid = \"a\"\n[[user]]\nid = \"a\"\n", "duplicate user"),
        (&format!("[[session]]\nsha256 = \"{h}\"\nuser = \"a\"\nexpires_at = 1\n[[session]]\nsha256 = \"{h}\"\nuser = \"b\"\nexpires_at = 2\n"), "[[session]] #2: duplicate"),
        ("[[api_key]]\nsha256 = \"\"\norganization_id = \"\"\nproject_id = \"p\"\n", "organization_id"),
        ("[[user\n", "line 1"),
    ] {
        let (_dir, path, store) = store_with(text);
        let err = store.expect_err(text).to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains(wanted), "{wanted:?} not in {err:?}");
        assert!(!err.contains('\n'), "{err:?}");
    }
    let err = FileStore::load(Path::new("/nonexistent/credentials.toml")).expect_err("missing");
    assert!(
        err.to_string().contains("/nonexistent/credentials.toml"),
        "{err}"
    );
}

#[test]
fn reload_swaps_or_keeps() {
    let (_dir, path, store) = store_with("");
    let store = store.expect("an empty file is an empty store");
    let a = Credential::new(CredentialKind::ApiKey, "sbx_key_a");
    assert_eq!(store.check(&a, &Context::default(), NOW), Verdict::Invalid);
    std::fs::write(&path, sample()).expect("write");
    store.reload().expect("reload");
    assert_eq!(
        store.check(&a, &Context::default(), NOW),
        granted("org-1", "proj-1")
    );
    std::fs::write(&path, "garbage").expect("write");
    assert!(store.reload().is_err());
    assert_eq!(
        store.check(&a, &Context::default(), NOW),
        granted("org-1", "proj-1")
    );
    assert!(!format!("{store:?}").contains("sha256"));
}
