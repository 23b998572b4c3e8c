//! Who may use a job's REST API. It can stop the job, take savepoints and delete them, so it is
//! served on loopback by default; any other address needs a bearer token (`rest.auth.token` or
//! `rest.auth.token-file`), unless `rest.auth.allow-unauthenticated` says otherwise.

use crate::Error;
use weir_core::config::{keys, Configuration};

/// The configured token, after checking that the bind address is safe without one.
pub(crate) fn token(config: &Configuration) -> Result<Option<String>, Error> {
    let token = match (config.get_str(keys::REST_AUTH_TOKEN), config.get_path(keys::REST_AUTH_TOKEN_FILE)) {
        (Some(_), Some(_)) => {
            return Err(Error::Args(format!(
                "set one of {} and {}, not both",
                keys::REST_AUTH_TOKEN,
                keys::REST_AUTH_TOKEN_FILE
            )))
        }
        (Some(t), None) => Some(t),
        (None, Some(file)) => {
            let text = std::fs::read_to_string(&file).map_err(|e| {
                Error::Args(format!(
                    "cannot read the REST token file '{}' ({}): {e}",
                    file.display(),
                    keys::REST_AUTH_TOKEN_FILE
                ))
            })?;
            let token = text.lines().next().unwrap_or("").trim().to_string();
            if token.is_empty() {
                return Err(Error::Args(format!("the REST token file '{}' is empty", file.display())));
            }
            Some(token)
        }
        (None, None) => None,
    };
    let bind = config.get_str(keys::REST_BIND_ADDRESS).unwrap_or_else(|| "127.0.0.1".into());
    let allowed = config.get_bool(keys::REST_AUTH_ALLOW_UNAUTHENTICATED).unwrap_or(false);
    if token.is_none() && !is_loopback(&bind) {
        if !allowed {
            return Err(Error::Args(format!(
                "{}: {bind} is not a loopback address, and the REST API can stop the job and delete its savepoints: set {} (or {}) so requests need a bearer token, or set {}: true to serve it to anyone who can reach it",
                keys::REST_BIND_ADDRESS,
                keys::REST_AUTH_TOKEN,
                keys::REST_AUTH_TOKEN_FILE,
                keys::REST_AUTH_ALLOW_UNAUTHENTICATED
            )));
        }
        tracing::warn!(
            "The REST API is served on {bind} without authentication ({}: true).",
            keys::REST_AUTH_ALLOW_UNAUTHENTICATED
        );
    }
    Ok(token)
}

fn is_loopback(bind: &str) -> bool {
    bind.eq_ignore_ascii_case("localhost") || bind.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Configuration {
        let mut c = Configuration::new();
        for (k, v) in pairs {
            c.set(k, v).unwrap();
        }
        c
    }

    #[test]
    fn a_non_loopback_address_needs_a_token_or_an_explicit_opt_out() {
        assert_eq!(token(&config(&[])).unwrap(), None);
        assert_eq!(token(&config(&[("rest.bind-address", "::1")])).unwrap(), None);
        let err = token(&config(&[("rest.bind-address", "0.0.0.0")])).unwrap_err().to_string();
        assert!(err.contains("0.0.0.0 is not a loopback address") && err.contains("rest.auth.token"), "{err}");
        let with = config(&[("rest.bind-address", "0.0.0.0"), ("rest.auth.token", "s3cret")]);
        assert_eq!(token(&with).unwrap().as_deref(), Some("s3cret"));
        let open = config(&[("rest.bind-address", "0.0.0.0"), ("rest.auth.allow-unauthenticated", "true")]);
        assert_eq!(token(&open).unwrap(), None);
    }

    #[test]
    fn the_token_file_holds_the_token_on_its_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file\n").unwrap();
        let c = config(&[("rest.auth.token-file", file.to_str().unwrap())]);
        assert_eq!(token(&c).unwrap().as_deref(), Some("from-file"));
        let both = config(&[("rest.auth.token-file", file.to_str().unwrap()), ("rest.auth.token", "x")]);
        assert!(token(&both).is_err());
    }
}
