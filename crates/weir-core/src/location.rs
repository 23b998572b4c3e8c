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

/// Where snapshot bytes live: a local directory or a prefix in an S3 bucket. Parsed from what
/// users write (plain path, `file:` URI, `s3://bucket/prefix`) and printed back in a form that
/// parses to the same place.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SnapshotUri {
    Local(PathBuf),
    /// `prefix` has no leading or trailing `/` (empty: the bucket's root).
    S3 {
        bucket: String,
        prefix: String,
    },
}

/// Refusals of an `s3://` location, naming what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum S3UriError {
    #[error("'{0}' names no bucket: write s3://bucket/prefix")]
    NoBucket(String),
    #[error(
        "'{input}' has an empty path segment ('//'); S3 keys with empty segments cannot be listed back as written"
    )]
    EmptySegment { input: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotUriError {
    #[error(transparent)]
    Local(#[from] LocationError),
    #[error(transparent)]
    S3(#[from] S3UriError),
}

impl SnapshotUri {
    /// Parses a location; `s3://` (or `s3a://`, as Flink users write it) names a bucket and prefix,
    /// anything else is a local location as [`parse`] reads it.
    pub fn parse(input: &str) -> Result<SnapshotUri, SnapshotUriError> {
        let s3 = ["s3://", "s3a://"].iter().find_map(|scheme| {
            let head = input.get(..scheme.len())?;
            head.eq_ignore_ascii_case(scheme).then(|| &input[scheme.len()..])
        });
        let Some(rest) = s3 else { return Ok(SnapshotUri::Local(parse(input)?)) };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(S3UriError::NoBucket(input.to_string()).into());
        }
        let prefix = prefix.trim_end_matches('/');
        if prefix.split('/').any(str::is_empty) && !prefix.is_empty() {
            return Err(S3UriError::EmptySegment { input: input.to_string() }.into());
        }
        Ok(SnapshotUri::S3 { bucket: bucket.to_string(), prefix: percent_decode(prefix) })
    }

    /// The location of `name` inside this one.
    pub fn join(&self, name: &str) -> SnapshotUri {
        match self {
            SnapshotUri::Local(dir) => SnapshotUri::Local(dir.join(name)),
            SnapshotUri::S3 { bucket, prefix } if prefix.is_empty() => {
                SnapshotUri::S3 { bucket: bucket.clone(), prefix: name.to_string() }
            }
            SnapshotUri::S3 { bucket, prefix } => {
                SnapshotUri::S3 { bucket: bucket.clone(), prefix: format!("{prefix}/{name}") }
            }
        }
    }
}

impl From<PathBuf> for SnapshotUri {
    fn from(path: PathBuf) -> Self {
        SnapshotUri::Local(path)
    }
}

impl SnapshotUri {
    /// The local path, for a location on the local file system.
    pub fn as_local(&self) -> Option<&Path> {
        match self {
            SnapshotUri::Local(path) => Some(path),
            SnapshotUri::S3 { .. } => None,
        }
    }

    /// The last segment (a file or directory name).
    pub fn file_name(&self) -> Option<&str> {
        match self {
            SnapshotUri::Local(path) => path.file_name()?.to_str(),
            SnapshotUri::S3 { prefix, .. } => prefix.rsplit('/').next().filter(|n| !n.is_empty()),
        }
    }

    /// The location this one is in (none for a bucket's root or a file system's).
    pub fn parent(&self) -> Option<SnapshotUri> {
        match self {
            SnapshotUri::Local(path) => Some(SnapshotUri::Local(path.parent()?.to_path_buf())),
            SnapshotUri::S3 { prefix, .. } if prefix.is_empty() => None,
            SnapshotUri::S3 { bucket, prefix } => Some(SnapshotUri::S3 {
                bucket: bucket.clone(),
                prefix: prefix.rsplit_once('/').map_or("", |(p, _)| p).to_string(),
            }),
        }
    }

    /// A reference as `_metadata` records it (`file`, `../shared/file`) resolved against this
    /// directory, with `.` and `..` folded (the file may not exist, so nothing is looked up).
    pub fn resolve(&self, reference: &str) -> SnapshotUri {
        match self {
            SnapshotUri::Local(dir) => SnapshotUri::Local(normalize_path(&dir.join(reference))),
            SnapshotUri::S3 { bucket, prefix } => {
                let mut segments: Vec<&str> = prefix.split('/').filter(|s| !s.is_empty()).collect();
                for segment in reference.split('/') {
                    match segment {
                        "" | "." => {}
                        ".." => {
                            segments.pop();
                        }
                        name => segments.push(name),
                    }
                }
                SnapshotUri::S3 { bucket: bucket.clone(), prefix: segments.join("/") }
            }
        }
    }

    /// This location relative to `base` (`/`-separated), when it lies inside it.
    pub fn relative_to(&self, base: &SnapshotUri) -> Option<String> {
        match (self, base) {
            (SnapshotUri::Local(path), SnapshotUri::Local(base)) => {
                let rel = path.strip_prefix(base).ok()?;
                rel.to_str().map(str::to_string)
            }
            (SnapshotUri::S3 { bucket, prefix }, SnapshotUri::S3 { bucket: b, prefix: p }) if bucket == b => {
                if p.is_empty() {
                    return Some(prefix.clone());
                }
                if prefix == p {
                    return Some(String::new());
                }
                prefix.strip_prefix(p.as_str())?.strip_prefix('/').map(str::to_string)
            }
            _ => None,
        }
    }

    /// Whether this location is `base` or lies inside it.
    pub fn starts_with(&self, base: &SnapshotUri) -> bool {
        self.relative_to(base).is_some()
    }
}

/// Folds `.` and `..` in a path without touching the file system (the file may be gone), so a
/// snapshot reference like `../shared/<file>` resolves to one canonical path.
pub fn normalize_path(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

impl std::fmt::Display for SnapshotUri {
    /// `file:/abs` (relative paths as they are) or `s3://bucket/prefix`, with `%` escaped so the
    /// printed form parses back to the same location.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotUri::Local(path) if path.is_absolute() => f.write_str(&to_uri(path)),
            SnapshotUri::Local(path) => write!(f, "{}", path.display()),
            SnapshotUri::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{}", prefix.replace('%', "%25")),
        }
    }
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

    #[test]
    fn snapshot_uris_print_as_they_parse() {
        for input in ["s3://bucket/a/b", "s3://bucket", "file:/tmp/x y", "relative/dir", "s3://b/100%25"] {
            let uri = SnapshotUri::parse(input).unwrap();
            assert_eq!(SnapshotUri::parse(&uri.to_string()).unwrap(), uri, "{input} -> {uri}");
        }
        assert_eq!(
            SnapshotUri::parse("S3A://bucket/ck/").unwrap(),
            SnapshotUri::S3 { bucket: "bucket".into(), prefix: "ck".into() }
        );
        assert_eq!(SnapshotUri::parse("s3://b/ck").unwrap().join("chk-1").to_string(), "s3://b/ck/chk-1");
        assert_eq!(SnapshotUri::parse("s3://b").unwrap().join("chk-1").to_string(), "s3://b/chk-1");
        assert_eq!(SnapshotUri::parse("/abs").unwrap(), SnapshotUri::Local("/abs".into()));
    }

    #[test]
    fn bad_s3_uris_are_refused_by_name() {
        assert!(matches!(SnapshotUri::parse("s3:///prefix"), Err(SnapshotUriError::S3(S3UriError::NoBucket(_)))));
        assert!(matches!(
            SnapshotUri::parse("s3://b/a//c"),
            Err(SnapshotUriError::S3(S3UriError::EmptySegment { .. }))
        ));
        assert!(matches!(SnapshotUri::parse("gs://b/x"), Err(SnapshotUriError::Local(_))));
    }

    #[test]
    fn references_resolve_and_relativize_alike_on_s3_and_on_disk() {
        for base in ["s3://b/ck/job/chk-3", "/ck/job/chk-3"] {
            let dir = SnapshotUri::parse(base).unwrap();
            let job = dir.parent().unwrap();
            let shared = dir.resolve("../shared/f1");
            assert_eq!(shared, job.join("shared").join("f1"), "{base}");
            assert_eq!(shared.relative_to(&job).as_deref(), Some("shared/f1"));
            assert_eq!(dir.resolve("./state").relative_to(&dir).as_deref(), Some("state"));
            assert!(shared.starts_with(&job) && !shared.starts_with(&dir));
            assert_eq!(dir.file_name(), Some("chk-3"));
        }
        let s3 = SnapshotUri::parse("s3://b/ck").unwrap();
        assert!(!SnapshotUri::parse("s3://b/ckx/1").unwrap().starts_with(&s3), "a prefix of a name is not a parent");
        assert!(!SnapshotUri::parse("s3://other/ck/1").unwrap().starts_with(&s3));
        assert_eq!(SnapshotUri::parse("s3://b").unwrap().parent(), None);
        assert_eq!(s3.parent(), Some(SnapshotUri::parse("s3://b").unwrap()));
    }
}
