//! Server-side sessions in Redis, so a restart (or another replica) logs nobody out.
//!
//! A session is a hash at `<prefix>session:<id>` holding the user name, the CSRF token and the
//! login time. The key's TTL is the idle timeout, renewed on each use but never past the
//! absolute lifetime, so Redis itself forgets idle and expired sessions; logout deletes the key.
//! The id is 244 random bits (two v4 UUIDs), unguessable and new at every login.

use std::time::Duration;

use deadpool_redis::Pool;
use redis::AsyncCommands;

use crate::Result;

/// One logged-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    /// The cookie value.
    pub id: String,
    /// Who logged in.
    pub user: String,
    /// Sent back in `X-CSRF-Token` on every state-changing request.
    pub csrf: String,
    /// Login time, Unix milliseconds.
    pub created: i64,
}

/// Sessions in Redis.
#[derive(Clone)]
pub struct SessionStore {
    pool: Pool,
    prefix: String,
    idle: Duration,
    absolute: Duration,
}

impl std::fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStore")
            .field("prefix", &self.prefix)
            .field("idle", &self.idle)
            .field("absolute", &self.absolute)
            .finish()
    }
}

/// 244 random bits as 64 hex digits.
pub(crate) fn random_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Compares without stopping at the first difference, so timing does not reveal a prefix.
pub(crate) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl SessionStore {
    /// Sessions under `prefix` with the two lifetimes.
    pub fn new(pool: Pool, prefix: &str, idle: Duration, absolute: Duration) -> Self {
        Self {
            pool,
            prefix: prefix.to_owned(),
            idle,
            absolute,
        }
    }

    fn key(&self, id: &str) -> String {
        format!("{}session:{id}", self.prefix)
    }

    /// A new session for `user` (a login).
    #[tracing::instrument(skip(self))]
    pub async fn create(&self, user: &str) -> Result<Session> {
        let session = Session {
            id: random_token(),
            user: user.to_owned(),
            csrf: random_token(),
            created: chrono::Utc::now().timestamp_millis(),
        };
        let key = self.key(&session.id);
        let mut conn = self.pool.get().await?;
        redis::pipe()
            .atomic()
            .hset_multiple(
                &key,
                &[
                    ("user", session.user.clone()),
                    ("csrf", session.csrf.clone()),
                    ("created", session.created.to_string()),
                ],
            )
            .ignore()
            .pexpire(&key, ttl_ms(self.idle))
            .ignore()
            .query_async::<()>(&mut *conn)
            .await?;
        Ok(session)
    }

    /// The live session of `id`, its idle timer renewed; `None` when unknown or expired.
    pub async fn get(&self, id: &str) -> Result<Option<Session>> {
        // Ids are our own 64 hex digits: anything else is not worth a Redis round trip.
        if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let key = self.key(id);
        let mut conn = self.pool.get().await?;
        let (user, csrf, created): (Option<String>, Option<String>, Option<i64>) =
            redis::cmd("HMGET")
                .arg(&key)
                .arg(&["user", "csrf", "created"])
                .query_async(&mut *conn)
                .await?;
        let (Some(user), Some(csrf), Some(created)) = (user, csrf, created) else {
            return Ok(None);
        };
        let age = chrono::Utc::now()
            .timestamp_millis()
            .saturating_sub(created);
        let left = i64::try_from(self.absolute.as_millis())
            .unwrap_or(i64::MAX)
            .saturating_sub(age);
        if left <= 0 {
            conn.del::<_, ()>(&key).await?;
            return Ok(None);
        }
        let renewed = self
            .idle
            .min(Duration::from_millis(u64::try_from(left).unwrap_or(0)));
        conn.pexpire::<_, ()>(&key, ttl_ms(renewed)).await?;
        Ok(Some(Session {
            id: id.to_owned(),
            user,
            csrf,
            created,
        }))
    }

    /// Whether the session still exists and is within its lifetime, without renewing it (an
    /// open WebSocket is not activity that keeps a session alive).
    pub async fn is_live(&self, id: &str) -> Result<bool> {
        let mut conn = self.pool.get().await?;
        let created: Option<i64> = conn.hget(self.key(id), "created").await?;
        let absolute = i64::try_from(self.absolute.as_millis()).unwrap_or(i64::MAX);
        Ok(created
            .is_some_and(|c| chrono::Utc::now().timestamp_millis().saturating_sub(c) < absolute))
    }

    /// Ends a session (logout, or the old id at a login).
    pub async fn delete(&self, id: &str) -> Result<()> {
        let mut conn = self.pool.get().await?;
        conn.del::<_, ()>(self.key(id)).await?;
        Ok(())
    }
}

fn ttl_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis().max(1)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_64_hex_digits_and_differ() {
        let (a, b) = (random_token(), random_token());
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn comparison_is_exact() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "abcd"));
    }
}
