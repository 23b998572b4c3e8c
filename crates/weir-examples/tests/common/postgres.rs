//! The PostgreSQL server of the tests (`scripts/postgres.sh`, loopback, two-phase commit on).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres.sh")
}

/// Runs `scripts/postgres.sh <arg>` against the server on `port`; returns its stdout.
pub fn postgres_script(arg: &str, port: u16) -> String {
    let out = Command::new(script())
        .arg(arg)
        .env("WEIR_PG_PORT", port.to_string())
        .env_remove("WEIR_PG_DIR")
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "scripts/postgres.sh {arg} failed");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Starts the shared server (installing it when missing) once per test process; its URL.
pub fn postgres() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let port: u16 = std::env::var("WEIR_PG_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(55432);
        postgres_script("start", port);
        postgres_script("url", port)
    })
}

pub fn connect(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls).unwrap()
}

/// A table name no other test uses.
pub fn table_name(prefix: &str) -> String {
    format!("{prefix}_{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// The rows of `(word, frequency)` as word-count prints them, sorted (none while the table or
/// the server is missing).
pub fn word_rows(url: &str, table: &str) -> Vec<String> {
    let Ok(mut client) = postgres::Client::connect(url, postgres::NoTls) else { return Vec::new() };
    let Ok(rows) = client.query(&format!("SELECT word, frequency FROM \"{table}\""), &[]) else { return Vec::new() };
    let mut rows: Vec<String> = rows
        .iter()
        .map(|r| format!("WordCount{{word='{}', frequency={}}}", r.get::<_, String>(0), r.get::<_, i64>(1)))
        .collect();
    rows.sort();
    rows
}

/// The prepared transactions whose id starts with `prefix`.
pub fn prepared(client: &mut postgres::Client, prefix: &str) -> Vec<String> {
    client
        .query("SELECT gid FROM pg_prepared_xacts WHERE gid LIKE $1", &[&format!("{prefix}%")])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}
