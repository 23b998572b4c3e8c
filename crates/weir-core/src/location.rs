//! Snapshot and checkpoint locations as users write them: a plain path, or a `file:` URI
//! (`file:/abs`, `file:///abs`, `file://localhost/abs`), which is how Weir prints them (as Flink
//! does). What Weir prints, Weir accepts: every place that takes a location parses it here.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    #[error("'{0}' is empty; give a directory path or a file: URI")]
    Empty(String),
    #[error("'{input}' uses the {scheme}: scheme, which this Weir does not support; snapshots live on the local file system: give a path or a file: URI (file:/abs/path)")]
    UnsupportedScheme { input: String, scheme: String },
    #[error("'{input}' names the host '{host}'; a file: URI must be local: file:/abs/path or file:///abs/path")]
    RemoteHost { input: String, host: String },
    #[error("'{0}' is a relative file: URI; a file: URI needs an absolute path (file:/abs/path), or give a plain relative path")]
    RelativeUri(String),
}

/// The local path a location names. Plain paths are returned as they are (relative ones stay
/// relative to the working directory).
pub fn parse(input: &str) -> Result<PathBuf, LocationError> {
    if input.is_empty() {
        return Err(LocationError::Empty(input.to_string()));
    }
    let file_uri = input.get(..5).is_some_and(|p| p.eq_ignore_ascii_case("file:"));
    let Some((scheme, rest)) = split_scheme(input) else {
        if file_uri {
            return Err(LocationError::RelativeUri(input.to_string()));
        }
        return Ok(PathBuf::from(input));
    };
    if !scheme.eq_ignore_ascii_case("file") {
        return Err(LocationError::UnsupportedScheme { input: input.to_string(), scheme: scheme.to_string() });
    }
    let path = match rest.strip_prefix("//") {
        Some(authority_and_path) => {
            let (host, path) =
                authority_and_path.split_at(authority_and_path.find('/').unwrap_or(authority_and_path.len()));
            if !host.is_empty() && !host.eq_ignore_ascii_case("localhost") {
                return Err(LocationError::RemoteHost { input: input.to_string(), host: host.to_string() });
            }
            path
        }
        None => rest,
    };
    if !path.starts_with('/') {
        return Err(LocationError::RelativeUri(input.to_string()));
    }
    Ok(PathBuf::from(percent_decode(path)))
}

/// `file:<path>`, the form Weir prints (give it an absolute path). A `%` is escaped as `%25`,
/// so the printed form parses back to the same path.
pub fn to_uri(path: &Path) -> String {
    format!("file:{}", path.display().to_string().replace('%', "%25"))
}

/// `scheme:rest` when `input` starts with a URI scheme followed by `/` (RFC 3986 scheme
/// characters); a plain path with a colon elsewhere is not a URI.
fn split_scheme(input: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = input.split_once(':')?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && scheme.len() > 1;
    (valid && rest.starts_with('/')).then_some((scheme, rest))
}

/// Decodes `%XX` escapes (a URI's spaces and other reserved characters); anything malformed is
/// kept as written.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_uris_and_plain_paths_name_the_same_directory() {
        for (input, path) in [
            ("/savepoints/sp-1", "/savepoints/sp-1"),
            ("savepoints/sp-1", "savepoints/sp-1"),
            ("file:/savepoints/sp-1", "/savepoints/sp-1"),
            ("file:///savepoints/sp-1", "/savepoints/sp-1"),
            ("FILE:///savepoints/sp-1", "/savepoints/sp-1"),
            ("file://localhost/savepoints/sp-1", "/savepoints/sp-1"),
            ("file:/tmp/with%20space", "/tmp/with space"),
            ("file:/tmp/100%", "/tmp/100%"),
            ("dir:with:colons", "dir:with:colons"),
            ("a:/b", "a:/b"),
        ] {
            assert_eq!(parse(input), Ok(PathBuf::from(path)), "{input}");
        }
        for path in ["/x/y", "/tmp/100%", "/tmp/a%20b", "/tmp/with space"] {
            assert_eq!(parse(&to_uri(Path::new(path))), Ok(PathBuf::from(path)), "{path}");
        }
    }

    #[test]
    fn other_schemes_remote_hosts_and_relative_uris_are_refused() {
        assert!(
            matches!(parse("s3://bucket/sp"), Err(LocationError::UnsupportedScheme { scheme, .. }) if scheme == "s3")
        );
        assert!(matches!(parse("hdfs:///sp"), Err(LocationError::UnsupportedScheme { .. })));
        assert!(matches!(parse("file://nas/sp"), Err(LocationError::RemoteHost { host, .. }) if host == "nas"));
        assert!(matches!(parse("file:relative"), Err(LocationError::RelativeUri(_))));
        assert!(matches!(parse("file://"), Err(LocationError::RelativeUri(_))));
        assert!(matches!(parse(""), Err(LocationError::Empty(_))));
    }
}
