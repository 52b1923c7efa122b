//! The layout in redis and every command that touches it.
//!
//! ```text
//! {prefix}:sandbox:{id}   hash  spec    = the entry's JSON (the state file's form)
//!                               name    = spec.name, when it has one (for the index)
//!                               version = the store version of the write that made it
//! {prefix}:names          hash  name → id
//! {prefix}:ids            set   every id (list without SCAN)
//! {prefix}:version        counter, INCR'd by every write and removal
//! {prefix}:incarnation    random token the first write sets: a new one
//!                         means the data (and the counter) were lost
//! {prefix}:changes        channel; each write publishes the id it changed
//! ```
//!
//! Writes are Lua scripts: the uniqueness check, the entry, the name index,
//! the version and the notice happen in one step that no other client can
//! interleave with, and every check runs before the first change (but for
//! the incarnation token, which is set once and never changes).

use std::sync::LazyLock;
use std::time::Duration;

use ::redis::aio::ConnectionManager;
use ::redis::{RedisError, Script};

use crate::registry::names::NameClash;
use crate::registry::{RegistryError, SandboxSpec};

use super::cache::{Fetched, Read};

/// Longest any single redis round trip may take before the caller gives up
/// (the connection's own timeouts are shorter; this is the backstop).
pub(crate) const OP_TIMEOUT: Duration = Duration::from_secs(3);

/// Why talking to redis failed. Never carries an entry's content.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis holds a malformed entry: {0}")]
    Corrupt(String),
}

impl From<StoreError> for RegistryError {
    fn from(e: StoreError) -> Self {
        Self::Store(e.to_string())
    }
}

/// The key names under one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    sandbox_prefix: String,
    pub names: String,
    pub ids: String,
    pub version: String,
    pub incarnation: String,
    pub channel: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            sandbox_prefix: format!("{prefix}:sandbox:"),
            names: format!("{prefix}:names"),
            ids: format!("{prefix}:ids"),
            version: format!("{prefix}:version"),
            incarnation: format!("{prefix}:incarnation"),
            channel: format!("{prefix}:changes"),
        }
    }

    pub fn sandbox(&self, id: &str) -> String {
        format!("{}{id}", self.sandbox_prefix)
    }
}

/// One id or name, resolved atomically: `{store version, incarnation}` when
/// nothing has that id or name, else `{.., id, spec, version}`. Ids first,
/// like the embedded store.
static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local g = redis.call('GET', KEYS[3]) or '0'
local inc = redis.call('GET', KEYS[4]) or ''
local e = redis.call('HMGET', KEYS[1], 'spec', 'version')
if e[1] then return {g, inc, ARGV[1], e[1], e[2]} end
local id = redis.call('HGET', KEYS[2], ARGV[1])
if not id then return {g, inc} end
e = redis.call('HMGET', ARGV[2] .. id, 'spec', 'version')
if not e[1] then return {g, inc} end
return {g, inc, id, e[1], e[2]}
",
    )
});

/// Create or replace one entry. ARGV[4] is the version the caller read
/// (a patch: the write happens only if the entry is still at it) or '' (a
/// put). Checks, in the order of [`crate::registry::names::check`], then
/// writes; nothing is written when a check fails.
static WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local id, spec, name, expected, channel = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
redis.call('SET', KEYS[6], ARGV[6], 'NX')
local inc = redis.call('GET', KEYS[6])
if expected ~= '' and redis.call('HGET', KEYS[1], 'version') ~= expected then
  return {'stale', inc}
end
local owner = redis.call('HGET', KEYS[2], id)
if owner and owner ~= id then return {'conflict', inc, 'id_is_name', id, owner} end
if name ~= '' then
  if name ~= id and redis.call('EXISTS', KEYS[5]) == 1 then
    return {'conflict', inc, 'name_is_id', name, ''}
  end
  local holder = redis.call('HGET', KEYS[2], name)
  if holder and holder ~= id then return {'conflict', inc, 'name_taken', name, holder} end
end
local version = redis.call('INCR', KEYS[4])
local old = redis.call('HGET', KEYS[1], 'name')
if old and old ~= name and redis.call('HGET', KEYS[2], old) == id then
  redis.call('HDEL', KEYS[2], old)
end
redis.call('HSET', KEYS[1], 'spec', spec, 'version', version)
if name ~= '' then
  redis.call('HSET', KEYS[1], 'name', name)
  redis.call('HSET', KEYS[2], name, id)
else
  redis.call('HDEL', KEYS[1], 'name')
end
redis.call('SADD', KEYS[3], id)
redis.call('PUBLISH', channel, id)
return {'ok', inc, tostring(version)}
",
    )
});

/// Remove one entry and its name; `{'removed', store version}` or `{'gone'}`.
static REMOVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local inc = redis.call('GET', KEYS[5]) or ''
if redis.call('EXISTS', KEYS[1]) == 0 then return {'gone', inc} end
local version = redis.call('INCR', KEYS[4])
local old = redis.call('HGET', KEYS[1], 'name')
if old and redis.call('HGET', KEYS[2], old) == ARGV[1] then
  redis.call('HDEL', KEYS[2], old)
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[1])
return {'removed', inc, tostring(version)}
",
    )
});

/// What a write script decided.
#[derive(Debug)]
pub(crate) enum WriteOutcome {
    Written(u64),
    /// A patch's entry changed (or went) since it was read.
    Stale,
    Conflict(NameClash),
}

/// A reply with the incarnation of the store that gave it (see
/// [`super::cache::Cache::observe`]).
#[derive(Debug)]
pub(crate) struct Seen<T> {
    pub incarnation: String,
    pub value: T,
}

/// A read, tried again once when the connection had dropped: the
/// connection manager reconnects on the first failure, the second try
/// then finds redis if it is back. (Writes are not retried: one may have
/// happened before its answer was lost.)
async fn read_twice<T, F, Fut>(mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RedisError>>,
{
    match timed(op()).await {
        Err(StoreError::Redis(e)) if e.is_io_error() || e.is_connection_dropped() => {
            timed(op()).await
        }
        other => other,
    }
}

pub(crate) async fn timed<T>(
    op: impl std::future::Future<Output = Result<T, RedisError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(OP_TIMEOUT, op).await {
        Ok(result) => result.map_err(StoreError::from),
        Err(_) => Err(StoreError::Timeout(OP_TIMEOUT)),
    }
}

/// The entry of `id_or_name`, or proof of its absence.
pub(crate) async fn read(
    conn: &ConnectionManager,
    keys: &Keys,
    id_or_name: &str,
) -> Result<Seen<Read>, StoreError> {
    let mut invocation = READ.prepare_invoke();
    invocation
        .key(keys.sandbox(id_or_name))
        .key(&keys.names)
        .key(&keys.version)
        .key(&keys.incarnation)
        .arg(id_or_name)
        .arg(keys.sandbox(""));
    let reply: Vec<String> = read_twice(|| {
        let (invocation, mut conn) = (&invocation, conn.clone());
        async move { invocation.invoke_async(&mut conn).await }
    })
    .await?;
    let value = match reply.as_slice() {
        [g, _] => Read::Absent {
            as_of: number(g, "store version")?,
        },
        [_, _, id, spec, version] => Read::Found(fetched(id, spec, Some(version))?),
        [_, _, id, _] => return Err(StoreError::Corrupt(format!("entry {id:?} has no version"))),
        _ => return Err(StoreError::Corrupt("unexpected reply to a read".into())),
    };
    Ok(Seen {
        incarnation: reply[1].clone(),
        value,
    })
}

/// Several entries by id in one snapshot (MULTI/EXEC), in the order given.
pub(crate) async fn read_ids(
    conn: &ConnectionManager,
    keys: &Keys,
    ids: &[String],
) -> Result<Seen<Vec<Result<Read, StoreError>>>, StoreError> {
    let mut pipe = ::redis::pipe();
    pipe.atomic().get(&keys.version).get(&keys.incarnation);
    for id in ids {
        pipe.cmd("HMGET")
            .arg(keys.sandbox(id))
            .arg("spec")
            .arg("version");
    }
    let replies: Vec<::redis::Value> = read_twice(|| {
        let (pipe, mut conn) = (&pipe, conn.clone());
        async move { pipe.query_async(&mut conn).await }
    })
    .await?;
    let mut replies = replies.into_iter();
    let mut next = |what: &str| {
        replies
            .next()
            .ok_or_else(|| StoreError::Corrupt(format!("no {what} in a batch read")))
    };
    let as_of: Option<String> = ::redis::from_redis_value(next("store version")?)
        .map_err(|e| StoreError::Corrupt(format!("store version: {e}")))?;
    let as_of = as_of.map_or(Ok(0), |g| number(&g, "store version"))?;
    let incarnation: Option<String> = ::redis::from_redis_value(next("incarnation")?)
        .map_err(|e| StoreError::Corrupt(format!("incarnation: {e}")))?;
    let mut value = Vec::with_capacity(ids.len());
    for id in ids {
        let (spec, version): (Option<String>, Option<String>) =
            ::redis::from_redis_value(next("entry")?)
                .map_err(|e| StoreError::Corrupt(format!("entry {id:?}: {e}")))?;
        value.push(match spec {
            None => Ok(Read::Absent { as_of }),
            Some(spec) => fetched(id, &spec, version.as_deref()).map(Read::Found),
        });
    }
    Ok(Seen {
        incarnation: incarnation.unwrap_or_default(),
        value,
    })
}

/// Creates or replaces `id` (a patch passes the version it read as
/// `expected`) and publishes its id.
pub(crate) async fn write(
    conn: &ConnectionManager,
    keys: &Keys,
    id: &str,
    spec: &SandboxSpec,
    expected: Option<u64>,
) -> Result<Seen<WriteOutcome>, StoreError> {
    let json = serde_json::to_string(spec)
        .map_err(|e| StoreError::Corrupt(format!("encode entry {id:?}: {e}")))?;
    let name = spec.name.as_deref().unwrap_or("");
    let mut conn = conn.clone();
    let mut invocation = WRITE.prepare_invoke();
    invocation
        .key(keys.sandbox(id))
        .key(&keys.names)
        .key(&keys.ids)
        .key(&keys.version)
        .key(keys.sandbox(if name.is_empty() { id } else { name }))
        .key(&keys.incarnation)
        .arg(id)
        .arg(json)
        .arg(name)
        .arg(expected.map(|v| v.to_string()).unwrap_or_default())
        .arg(&keys.channel)
        .arg(format!("{:016x}", rand::random::<u64>()));
    let reply: Vec<String> = timed(invocation.invoke_async(&mut conn)).await?;
    let value = match reply.as_slice() {
        [ok, _, version] if ok == "ok" => WriteOutcome::Written(number(version, "version")?),
        [stale, _] if stale == "stale" => WriteOutcome::Stale,
        [c, _, kind, subject, owner] if c == "conflict" => {
            let (subject, owner) = (subject.clone(), owner.clone());
            WriteOutcome::Conflict(match kind.as_str() {
                "id_is_name" => NameClash::IdIsName { id: subject, owner },
                "name_is_id" => NameClash::NameIsId { name: subject },
                _ => NameClash::NameTaken {
                    name: subject,
                    owner,
                },
            })
        }
        _ => return Err(StoreError::Corrupt("unexpected reply to a write".into())),
    };
    Ok(Seen {
        incarnation: reply[1].clone(),
        value,
    })
}

/// Removes `id` and publishes it: the store version of the removal, or
/// None if there was no such entry.
pub(crate) async fn remove(
    conn: &ConnectionManager,
    keys: &Keys,
    id: &str,
) -> Result<Seen<Option<u64>>, StoreError> {
    let mut conn = conn.clone();
    let mut invocation = REMOVE.prepare_invoke();
    invocation
        .key(keys.sandbox(id))
        .key(&keys.names)
        .key(&keys.ids)
        .key(&keys.version)
        .key(&keys.incarnation)
        .arg(id)
        .arg(&keys.channel);
    let reply: Vec<String> = timed(invocation.invoke_async(&mut conn)).await?;
    let value = match reply.as_slice() {
        [removed, _, version] if removed == "removed" => Some(number(version, "version")?),
        [gone, _] if gone == "gone" => None,
        _ => return Err(StoreError::Corrupt("unexpected reply to a removal".into())),
    };
    Ok(Seen {
        incarnation: reply[1].clone(),
        value,
    })
}

pub(crate) async fn all_ids(
    conn: &ConnectionManager,
    keys: &Keys,
) -> Result<Vec<String>, StoreError> {
    let mut conn = conn.clone();
    let mut ids: Vec<String> = timed(
        ::redis::cmd("SMEMBERS")
            .arg(&keys.ids)
            .query_async(&mut conn),
    )
    .await?;
    ids.sort();
    Ok(ids)
}

fn number(text: &str, what: &str) -> Result<u64, StoreError> {
    text.parse()
        .map_err(|_| StoreError::Corrupt(format!("{what} {text:?} is not a number")))
}

/// Decodes an entry. A decoding error names where the JSON went wrong, never
/// what it held (an inline forwarded-auth key lives there).
fn fetched(id: &str, spec: &str, version: Option<&str>) -> Result<Fetched, StoreError> {
    let version = version
        .ok_or_else(|| StoreError::Corrupt(format!("entry {id:?} has no version")))
        .and_then(|v| number(v, "version"))?;
    let spec: SandboxSpec = serde_json::from_str(spec).map_err(|e| {
        StoreError::Corrupt(format!(
            "entry {id:?} is not a sandbox spec ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    Ok(Fetched {
        id: id.to_owned(),
        spec,
        version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_under_a_prefix() {
        let keys = Keys::new("fleet-a");
        assert_eq!(keys.sandbox("sbx-1"), "fleet-a:sandbox:sbx-1");
        assert_eq!(keys.names, "fleet-a:names");
        assert_eq!(keys.channel, "fleet-a:changes");
    }

    #[test]
    fn decoding_errors_never_echo_the_entry() {
        let secret = "cd".repeat(32);
        let json = format!(r#"{{"forwarded_auth_key":"{secret}","organization_id":5}}"#);
        let err = fetched("sbx-1", &json, Some("3")).unwrap_err().to_string();
        assert!(!err.contains(&secret), "{err}");
        assert!(err.contains("sbx-1"), "{err}");
        assert!(fetched("sbx-1", "{}", None).is_err());
        assert!(fetched("sbx-1", "{}", Some("x")).is_err());
    }
}
