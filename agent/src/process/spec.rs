//! Turning an API request into a command to spawn: validation of the
//! command, arguments, environment and working directory, and resolution of
//! the `user` field into a uid and gid.

use std::os::fd::RawFd;
use std::path::PathBuf;

use nix::unistd::{Gid, Group, Uid, User};
use sbx_proto::api::ProcessUser;
use sbx_proto::ErrorCode;

use super::child::ChildSetup;
use crate::error::ApiError;

/// Largest number of arguments or environment variables accepted.
const MAX_ITEMS: usize = 4096;

/// A validated command line with its environment.
#[derive(Debug, Clone)]
pub struct CommandSpec {
    pub command: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<PathBuf>,
    pub user: Option<ResolvedUser>,
}

/// The identity a process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// From the password database, when the uid is listed there.
    pub name: Option<String>,
    pub home: Option<PathBuf>,
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, message)
}

impl CommandSpec {
    pub fn new(
        command: String,
        args: Vec<String>,
        env: impl IntoIterator<Item = (String, String)>,
        working_dir: Option<String>,
        user: Option<&ProcessUser>,
    ) -> Result<Self, ApiError> {
        if command.is_empty() {
            return Err(bad("command must not be empty"));
        }
        if command.contains('\0') || args.iter().any(|a| a.contains('\0')) {
            return Err(bad("command and args must not contain NUL bytes"));
        }
        if args.len() > MAX_ITEMS {
            return Err(bad(format!("at most {MAX_ITEMS} args are accepted")));
        }
        let env: Vec<(String, String)> = env.into_iter().collect();
        if env.len() > MAX_ITEMS {
            return Err(bad(format!(
                "at most {MAX_ITEMS} env variables are accepted"
            )));
        }
        for (key, value) in &env {
            if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
                return Err(bad(format!(
                    "invalid env variable {key:?}: names must be non-empty without '=' or NUL, values without NUL"
                )));
            }
        }
        let working_dir = match working_dir {
            None => None,
            Some(dir) if dir.is_empty() => None,
            Some(dir) => {
                let path = PathBuf::from(&dir);
                match std::fs::metadata(&path) {
                    Ok(meta) if meta.is_dir() => Some(path),
                    Ok(_) => {
                        return Err(ApiError::new(
                            ErrorCode::NotADirectory,
                            format!("working_dir {dir:?} is not a directory"),
                        ))
                    }
                    Err(err) => {
                        return Err(bad(format!("working_dir {dir:?}: {err}")));
                    }
                }
            }
        };
        let user = user.map(resolve_user).transpose()?;
        Ok(Self {
            command,
            args,
            env,
            working_dir,
            user,
        })
    }

    /// A `tokio` command with arguments, environment, directory and
    /// identity applied; stdio is left to the caller.
    pub fn command(&self) -> tokio::process::Command {
        let mut cmd = self.base_command();
        if let Some((uid, gid)) = self.identity_switch() {
            // std drops supplementary groups when root changes identity.
            cmd.gid(gid).uid(uid);
        }
        if let Some(dir) = &self.working_dir {
            cmd.current_dir(dir);
        }
        cmd
    }

    /// Like [`Self::command`], but the child first joins the cgroup whose
    /// `cgroup.procs` is open as `join_fd`, then switches identity and
    /// directory itself (see `child`).
    pub fn command_joining(&self, join_fd: RawFd) -> Result<tokio::process::Command, ApiError> {
        let setup = ChildSetup::new(join_fd, self.identity_switch(), self.working_dir.as_deref())?;
        let mut cmd = self.base_command();
        // SAFETY: `ChildSetup::run` only makes async-signal-safe system
        // calls on data prepared before the fork.
        unsafe {
            cmd.pre_exec(move || setup.run());
        }
        Ok(cmd)
    }

    /// The `(uid, gid)` to switch to, when it differs from the agent's.
    fn identity_switch(&self) -> Option<(u32, u32)> {
        self.user.as_ref().and_then(|user| {
            (user.uid != Uid::current().as_raw() || user.gid != Gid::current().as_raw())
                .then_some((user.uid, user.gid))
        })
    }

    /// Program, arguments and environment.
    fn base_command(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.command);
        cmd.args(&self.args);
        // The agent's own settings (secret file paths among them) are none
        // of the sandboxed program's business.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SBX_AGENT_") {
                cmd.env_remove(key);
            }
        }
        if let Some(user) = &self.user {
            if let Some(home) = &user.home {
                cmd.env("HOME", home);
            }
            if let Some(name) = &user.name {
                cmd.env("USER", name).env("LOGNAME", name);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }
}

/// Resolves `"name"`, `"uid"`, `"uid:gid"`, `"name:group"` or the SDK's
/// `{name}` / `{uid, gid}` object. Unknown names are a 400; switching to
/// another identity without privilege is a 403.
pub fn resolve_user(user: &ProcessUser) -> Result<ResolvedUser, ApiError> {
    let (who, group) = match user {
        ProcessUser::Text(text) => {
            let text = text.trim();
            if text.is_empty() {
                return Err(bad("user must not be empty"));
            }
            match text.split_once(':') {
                Some((u, g)) => (u.to_owned(), Some(g.to_owned())),
                None => (text.to_owned(), None),
            }
        }
        ProcessUser::Spec { name, uid, gid } => {
            let who = match (name, uid) {
                (Some(_), Some(_)) => return Err(bad("user must not set both name and uid")),
                (Some(name), None) if !name.is_empty() => name.clone(),
                (None, Some(uid)) => uid.to_string(),
                _ => return Err(bad("user must include a name or a uid")),
            };
            (who, gid.map(|g| g.to_string()))
        }
    };

    let entry = if let Ok(uid) = who.parse::<u32>() {
        let entry = User::from_uid(Uid::from_raw(uid))
            .map_err(|e| bad(format!("cannot look up uid {uid}: {e}")))?;
        (uid, entry)
    } else {
        let entry = User::from_name(&who)
            .map_err(|e| bad(format!("cannot look up user {who:?}: {e}")))?
            .ok_or_else(|| bad(format!("unknown user {who:?}")))?;
        (entry.uid.as_raw(), Some(entry))
    };
    let (uid, entry) = entry;

    let gid = match group.as_deref() {
        Some("") => return Err(bad("group after ':' must not be empty")),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => Group::from_name(g)
                .map_err(|e| bad(format!("cannot look up group {g:?}: {e}")))?
                .ok_or_else(|| bad(format!("unknown group {g:?}")))?
                .gid
                .as_raw(),
        },
        None => match &entry {
            Some(e) => e.gid.as_raw(),
            // A bare numeric uid unknown to passwd runs with gid = uid, as
            // container runtimes do.
            None => uid,
        },
    };

    let me = Uid::effective();
    if !me.is_root() && (uid != me.as_raw() || gid != Gid::effective().as_raw()) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "cannot run as {uid}:{gid}: the agent runs as uid {me} without the privilege to switch users"
            ),
        ));
    }
    Ok(ResolvedUser {
        uid,
        gid,
        name: entry.as_ref().map(|e| e.name.clone()),
        home: entry.as_ref().map(|e| e.dir.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_current_user_forms() {
        let uid = Uid::effective().as_raw();
        let gid = Gid::effective().as_raw();
        let u = resolve_user(&ProcessUser::Text(format!("{uid}:{gid}"))).unwrap();
        assert_eq!((u.uid, u.gid), (uid, gid));
        let u = resolve_user(&ProcessUser::Spec {
            name: None,
            uid: Some(uid),
            gid: Some(gid),
        })
        .unwrap();
        assert_eq!(u.uid, uid);
        assert!(resolve_user(&ProcessUser::Text("no-such-user-xyz".into())).is_err());
        assert!(resolve_user(&ProcessUser::Text(String::new())).is_err());
        assert!(resolve_user(&ProcessUser::Spec {
            name: Some("root".into()),
            uid: Some(0),
            gid: None
        })
        .is_err());
    }

    #[test]
    fn rejects_bad_env() {
        let spec = |k: &str| {
            CommandSpec::new(
                "true".into(),
                vec![],
                [(k.to_owned(), "v".to_owned())],
                None,
                None,
            )
        };
        assert!(spec("A").is_ok());
        assert!(spec("").is_err());
        assert!(spec("A=B").is_err());
    }
}
