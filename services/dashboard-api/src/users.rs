//! Users and roles in Postgres, passwords as argon2id hashes.

use std::{fmt, str::FromStr};

use argon2::{
    Argon2, PasswordHash, PasswordHasher, PasswordVerifier,
    password_hash::{SaltString, rand_core::OsRng},
};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::{Error, Result};

/// What a user may do; each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads the results.
    Viewer,
    /// Also enters sales and inventory updates.
    Accountant,
    /// Also sees system status and manages users.
    Admin,
}

impl Role {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Accountant => "accountant",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "viewer" => Ok(Self::Viewer),
            "accountant" => Ok(Self::Accountant),
            "admin" => Ok(Self::Admin),
            other => Err(Error::invalid(
                "role",
                format!("`{other}` is not one of viewer, accountant, admin"),
            )),
        }
    }
}

/// A user as listed (never with the hash).
#[derive(Debug, Clone, Serialize)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Role.
    pub role: Role,
}

/// Checks a new user's name and password.
pub(crate) fn validate(name: &str, password: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
    {
        return Err(Error::invalid("name", "1 to 64 letters, digits or `._-@`"));
    }
    if password.chars().count() < 8 || password.len() > 1024 {
        return Err(Error::invalid("password", "8 to 1024 characters"));
    }
    Ok(())
}

/// argon2id with the crate's defaults (19 MiB, 2 passes: OWASP's recommendation).
pub(crate) fn hash(password: &str) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// Whether `password` matches the PHC string `stored`.
pub(crate) fn verify(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// The `dashboard_users` table.
#[derive(Debug, Clone)]
pub struct UserStore {
    pool: PgPool,
    /// Verified against when a name is unknown, so both answers take as long.
    dummy_hash: String,
}

impl UserStore {
    /// Wraps a pool whose database has the migrations applied.
    pub fn new(pool: PgPool) -> Result<Self> {
        Ok(Self {
            pool,
            dummy_hash: hash("not a password of anyone")?,
        })
    }

    /// Adds a user; `UserExists` when the name is taken.
    #[tracing::instrument(skip(self, password))]
    pub async fn add(&self, name: &str, role: Role, password: &str) -> Result<()> {
        validate(name, password)?;
        let hashed = hash(password)?;
        let inserted = sqlx::query(
            "INSERT INTO dashboard_users (name, role, password_hash) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(role.as_str())
        .bind(hashed)
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(Error::UserExists(name.to_owned()));
        }
        Ok(())
    }

    /// Adds the first admin when the table is empty; true when it did.
    pub async fn ensure_first_admin(&self, name: &str, password: &str) -> Result<bool> {
        let any: Option<i64> = sqlx::query_scalar("SELECT id FROM dashboard_users LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        if any.is_some() {
            return Ok(false);
        }
        match self.add(name, Role::Admin, password).await {
            Ok(()) => Ok(true),
            // Another replica started at the same moment and won.
            Err(Error::UserExists(_)) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// The user's role when the password is right; `None` otherwise, in about the same time
    /// whether the name exists or not.
    #[tracing::instrument(skip(self, password))]
    pub async fn authenticate(&self, name: &str, password: &str) -> Result<Option<Role>> {
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT role, password_hash FROM dashboard_users WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        let (role, stored) = match &row {
            Some((role, stored)) => (Some(role.as_str()), stored.as_str()),
            None => (None, self.dummy_hash.as_str()),
        };
        let (password, stored) = (password.to_owned(), stored.to_owned());
        // Hashing takes tens of ms of CPU: off the async workers.
        let ok = tokio::task::spawn_blocking(move || verify(&password, &stored))
            .await
            .unwrap_or(false);
        match (ok, role) {
            (true, Some(role)) => Ok(Some(role.parse()?)),
            _ => Ok(None),
        }
    }

    /// The user's current role, or `None` when the user no longer exists.
    pub async fn role(&self, name: &str) -> Result<Option<Role>> {
        let role: Option<String> =
            sqlx::query_scalar("SELECT role FROM dashboard_users WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        role.map(|r| r.parse()).transpose()
    }

    /// Every user, by name.
    pub async fn list(&self) -> Result<Vec<User>> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT name, role FROM dashboard_users ORDER BY name")
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|(name, role)| {
                Ok(User {
                    name,
                    role: role.parse()?,
                })
            })
            .collect()
    }

    /// Removes a user; `NoUser` when there is none of that name.
    pub async fn remove(&self, name: &str) -> Result<()> {
        let done = sqlx::query("DELETE FROM dashboard_users WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(Error::NoUser(name.to_owned()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_only_its_password() {
        let stored = hash("correct horse").expect("hash");
        assert!(stored.starts_with("$argon2id$"), "{stored}");
        assert!(verify("correct horse", &stored));
        assert!(!verify("wrong horse", &stored));
        assert!(!verify("correct horse", "not a hash"));
    }

    #[test]
    fn roles_are_ordered_and_parse() {
        assert!(Role::Viewer < Role::Accountant && Role::Accountant < Role::Admin);
        assert_eq!("admin".parse::<Role>().expect("role"), Role::Admin);
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn names_and_passwords_are_checked() {
        assert!(validate("alice", "long enough").is_ok());
        assert!(validate("", "long enough").is_err());
        assert!(validate("a b", "long enough").is_err());
        assert!(validate("alice", "short").is_err());
    }
}
