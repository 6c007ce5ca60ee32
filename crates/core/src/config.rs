//! Typed configuration: defaults in code, then an optional TOML file, then the environment.
//!
//! Errors name the setting the way the user wrote it (`SLUICE_AGGREGATOR_PORT`, `DATABASE_URL`,
//! or the file's key), so a bad deployment says exactly what to fix.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use sluice_core::config::ConfigLoader;
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! struct Config { port: u16, database_url: String }
//!
//! let defaults = Config { port: 8080, database_url: "postgres://localhost/sluice".into() };
//! let config: Config = ConfigLoader::new(&defaults)
//!     .env_names(&["PORT", "DATABASE_URL"])  // the seed's names keep working
//!     .env_prefixed("SLUICE_DEMO_")           // SLUICE_DEMO_PORT=9000, SLUICE_DEMO_A__B=nested
//!     .load()
//!     .expect("valid config");
//! assert!(config.port > 0);
//! ```

use std::{fmt, path::PathBuf};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{Error, Result};

/// Builds a config value from layered sources; later layers override earlier ones.
#[derive(Debug)]
pub struct ConfigLoader {
    figment: Figment,
    file: Option<PathBuf>,
}

impl ConfigLoader {
    /// Starts from the defaults.
    pub fn new<T: Serialize>(defaults: &T) -> Self {
        Self {
            figment: Figment::from(Serialized::defaults(defaults)),
            file: None,
        }
    }

    /// Adds a TOML file, which must exist when [`load`](Self::load) runs.
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        self.figment = self.figment.merge(Toml::file_exact(&path));
        self.file = Some(path);
        self
    }

    /// Adds the variables named exactly, lower-cased into keys (`DATABASE_URL` → `database_url`).
    pub fn env_names(mut self, names: &[&str]) -> Self {
        self.figment = self.figment.merge(Env::raw().only(names));
        self
    }

    /// Adds every variable starting with `prefix`; `__` separates nested keys.
    pub fn env_prefixed(mut self, prefix: &str) -> Self {
        self.figment = self.figment.merge(Env::prefixed(prefix).split("__"));
        self
    }

    /// Extracts the typed config, or the first error with the setting it is about.
    pub fn load<T: DeserializeOwned>(self) -> Result<T> {
        if let Some(path) = &self.file
            && !path.is_file()
        {
            return Err(Error::Config {
                setting: "config file".into(),
                reason: format!("{} does not exist", path.display()),
            });
        }
        self.figment.extract().map_err(from_figment)
    }
}

/// A validation failure of a setting that parsed but makes no sense (e.g. `WORKER_COUNT=0`).
pub fn invalid(setting: &str, reason: impl Into<String>) -> Error {
    Error::Config {
        setting: setting.to_owned(),
        reason: reason.into(),
    }
}

fn from_figment(err: figment::Error) -> Error {
    let Some(first) = err.into_iter().next() else {
        return invalid("config", "unknown error");
    };
    let mut path = first.path.clone();
    if let figment::error::Kind::MissingField(field) = &first.kind {
        path.push(field.to_string());
    }
    let setting = match &first.metadata {
        _ if path.is_empty() => "config".to_owned(),
        // Env providers are named "`PREFIX_` environment variable(s)"; name the variable itself.
        Some(meta) if meta.name.contains("environment variable") => {
            let prefix = meta.name.split('`').nth(1).unwrap_or_default();
            format!("{prefix}{}", path.join("__")).to_ascii_uppercase()
        }
        _ => path.join("."),
    };
    invalid(&setting, first.kind.to_string())
}

/// A credential or a URL holding one: deserializes like `T`, never prints.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a value.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The value itself, for the one place that needs it (a connection call).
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Hides the password of a URL such as `postgres://user:pw@host/db`, for logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{tail}")
            } else {
                format!("{scheme}://{user}@{host}{tail}")
            }
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
#[expect(
    clippy::result_large_err,
    reason = "figment's Jail fixes the closures' error type"
)]
mod tests {
    use figment::Jail;

    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Nested {
        batch: u32,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Config {
        port: u16,
        database_url: Secret<String>,
        worker: Nested,
    }

    fn defaults() -> Config {
        Config {
            port: 8080,
            database_url: Secret::new("postgres://u:pw@localhost/db".into()),
            worker: Nested { batch: 100 },
        }
    }

    #[test]
    fn layers_file_then_seed_names_then_prefixed() {
        Jail::expect_with(|jail| {
            jail.create_file("c.toml", "port = 1\n[worker]\nbatch = 7\n")?;
            jail.set_env("PORT", "2");
            jail.set_env("SLUICE_T_WORKER__BATCH", "9");
            let c: Config = ConfigLoader::new(&defaults())
                .file("c.toml")
                .env_names(&["PORT", "DATABASE_URL"])
                .env_prefixed("SLUICE_T_")
                .load()
                .expect("valid");
            assert_eq!((c.port, c.worker.batch), (2, 9));
            Ok(())
        });
    }

    #[test]
    fn names_the_environment_variable_at_fault() {
        Jail::expect_with(|jail| {
            jail.set_env("SLUICE_T_PORT", "eighty");
            let err = ConfigLoader::new(&defaults())
                .env_prefixed("SLUICE_T_")
                .load::<Config>()
                .expect_err("bad port");
            let msg = err.to_string();
            assert!(msg.contains("SLUICE_T_PORT"), "{msg}");
            jail.clear_env();
            jail.set_env("PORT", "-1");
            let err = ConfigLoader::new(&defaults())
                .env_names(&["PORT"])
                .load::<Config>()
                .expect_err("negative port");
            assert!(
                err.to_string().starts_with("invalid setting `PORT`"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn names_the_file_key_at_fault_and_a_missing_file() {
        Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[worker]\nbatch = -1\n")?;
            let err = ConfigLoader::new(&defaults())
                .file("c.toml")
                .load::<Config>()
                .expect_err("negative batch");
            assert!(err.to_string().contains("worker.batch"), "{err}");
            let err = ConfigLoader::new(&defaults())
                .file("missing.toml")
                .load::<Config>()
                .expect_err("missing file");
            assert!(err.to_string().contains("missing.toml"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn secrets_never_print() {
        let c = defaults();
        assert!(!format!("{c:?}").contains("pw"));
        assert_eq!(
            redact_url("postgres://u:pw@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("redis://h:6379/0"), "redis://h:6379/0");
        assert_eq!(redact_url("amqp://guest@h/%2f"), "amqp://guest@h/%2f");
    }
}
