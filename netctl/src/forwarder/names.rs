//! Which names a sandbox may resolve (SPEC 4): a policy's domain and
//! wildcard entries, judged in the policy's order (`allow_out` before
//! `deny_out`).

use std::collections::HashSet;

use sbx_proto::policy::{Destination, ValidPolicy};

/// How a policy treats one name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameVerdict {
    /// Named (or covered by a wildcard) in `allow_out`: its answers'
    /// addresses are allowed.
    Allowed,
    /// Named in `deny_out`: NXDOMAIN.
    Denied,
    /// Neither: forwarded with `allow_internet_access`, else NXDOMAIN.
    Unlisted,
}

/// One list's names: exact names and wildcard suffixes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct NameList {
    exact: HashSet<String>,
    /// `example.com` for `*.example.com`.
    under: Vec<String>,
}

impl NameList {
    fn from(list: &[Destination]) -> Self {
        let mut names = Self::default();
        for d in list {
            match d {
                Destination::Domain(name) => {
                    names.exact.insert(name.clone());
                }
                Destination::Wildcard(suffix) => names.under.push(suffix.clone()),
                Destination::Net(_) => {}
            }
        }
        names
    }

    /// `name` is lower case without the trailing dot.
    fn covers(&self, name: &str) -> bool {
        self.exact.contains(name)
            || self.under.iter().any(|suffix| {
                name.len() > suffix.len() + 1
                    && name.ends_with(suffix.as_str())
                    && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
            })
    }
}

/// A policy's name rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameRules {
    allow: NameList,
    deny: NameList,
    pub allow_internet_access: bool,
}

impl NameRules {
    pub fn from_policy(policy: &ValidPolicy) -> Self {
        Self {
            allow: NameList::from(&policy.allow_out),
            deny: NameList::from(&policy.deny_out),
            allow_internet_access: policy.allow_internet_access,
        }
    }

    pub fn judge(&self, name: &str) -> NameVerdict {
        let name = normalise(name);
        if self.allow.covers(&name) {
            NameVerdict::Allowed
        } else if self.deny.covers(&name) {
            NameVerdict::Denied
        } else {
            NameVerdict::Unlisted
        }
    }
}

/// Lower case, without the root's trailing dot: how policies store names.
pub fn normalise(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allow: &[&str], deny: &[&str], internet: bool) -> NameRules {
        let policy = sbx_proto::policy::NetworkPolicy {
            allow_internet_access: internet,
            allow_out: allow.iter().map(|s| (*s).to_owned()).collect(),
            deny_out: deny.iter().map(|s| (*s).to_owned()).collect(),
        };
        NameRules::from_policy(&policy.validate().expect("valid policy"))
    }

    #[test]
    fn exact_names_wildcards_and_order() {
        let r = rules(
            &["pypi.org", "*.example.com"],
            &["*.bad.test", "evil.test"],
            true,
        );
        assert_eq!(r.judge("PyPI.org."), NameVerdict::Allowed);
        assert_eq!(r.judge("files.pypi.org"), NameVerdict::Unlisted);
        assert_eq!(r.judge("a.example.com"), NameVerdict::Allowed);
        assert_eq!(r.judge("a.b.example.com"), NameVerdict::Allowed);
        // The apex is covered only when listed too.
        assert_eq!(r.judge("example.com"), NameVerdict::Unlisted);
        assert_eq!(r.judge("notexample.com"), NameVerdict::Unlisted);
        assert_eq!(r.judge("x.bad.test"), NameVerdict::Denied);
        assert_eq!(r.judge("evil.test"), NameVerdict::Denied);
        assert_eq!(r.judge("bad.test"), NameVerdict::Unlisted);
        // allow_out is evaluated before deny_out.
        let r = rules(&["ok.bad.test"], &["*.bad.test"], false);
        assert_eq!(r.judge("ok.bad.test"), NameVerdict::Allowed);
        assert_eq!(r.judge("no.bad.test"), NameVerdict::Denied);
    }
}
