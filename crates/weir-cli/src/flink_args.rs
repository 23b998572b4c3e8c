//! Flink's CLI (Apache Commons CLI) takes long options after a single dash: `-type native`,
//! `-detached`, `-sae`, `-restoreMode claim`, `-savepointPath dir`. Weir's parser wants two, so
//! those spellings are rewritten before parsing. Only Weir's own flags are touched: everything
//! after the job of `weir run` belongs to the job.

/// Long options Flink users write with one dash.
const FLINK_LONG: &[&str] = &[
    "type",
    "detached",
    "sae",
    "shutdownOnAttachedExit",
    "restoreMode",
    "claimMode",
    "savepointPath",
    "fromSavepoint",
    "allowNonRestoredState",
    "parallelism",
    "dispose",
    "drain",
    "jobmanager",
    "address",
];

/// Options of `weir` and `weir run` that take a value (so the value is not mistaken for the job).
const TAKES_VALUE: &[&str] = &[
    "-s",
    "-p",
    "-D",
    "-m",
    "-t",
    "--fromSavepoint",
    "--from-savepoint",
    "--parallelism",
    "--claim-mode",
    "--claimMode",
    "--restoreMode",
    "--config",
    "--address",
    "--jobmanager",
    "--token-file",
    "--type",
    "--savepoint-path",
    "--savepointPath",
    "--dispose",
];

pub fn normalize(args: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut args = args.into_iter();
    let mut out: Vec<String> = args.next().into_iter().collect();
    let (mut subcommand, mut job_reached, mut value_next) = (None::<String>, false, false);
    for arg in args {
        if job_reached || value_next {
            value_next = false;
            out.push(arg);
            continue;
        }
        let arg = match arg.strip_prefix('-') {
            Some(name) if FLINK_LONG.contains(&name) => format!("--{name}"),
            _ => arg,
        };
        if arg.starts_with('-') {
            value_next = TAKES_VALUE.contains(&arg.as_str());
        } else if subcommand.is_none() {
            subcommand = Some(arg.clone());
        } else if subcommand.as_deref() == Some("run") {
            job_reached = true;
        }
        out.push(arg);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::normalize;

    fn n(line: &str) -> String {
        normalize(line.split(' ').map(String::from)).join(" ")
    }

    #[test]
    fn single_dash_long_options_become_double_dash_until_the_job() {
        assert_eq!(n("weir savepoint -type native -detached j /sp"), "weir savepoint --type native --detached j /sp");
        assert_eq!(n("weir stop -savepointPath /sp -drain j"), "weir stop --savepointPath /sp --drain j");
        assert_eq!(
            n("weir run -detached -sae -restoreMode claim -s /sp -p 2 job -type x -detached"),
            "weir run --detached --sae --restoreMode claim -s /sp -p 2 job -type x -detached"
        );
        assert_eq!(n("weir -m localhost:8081 list"), "weir -m localhost:8081 list");
        assert_eq!(n("weir run -D a=b job --input -x"), "weir run -D a=b job --input -x");
    }
}
