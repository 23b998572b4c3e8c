//! The SQL the sink sends, built without a server: quoting, multi-row inserts and upserts, and
//! the transaction ids it prepares under. Pure and unit-tested.

use crate::value::SqlValue;
use std::collections::HashMap;

/// How rows reach the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteMode {
    /// `INSERT`: every row is a new row.
    Insert,
    /// `INSERT ... ON CONFLICT (key) DO UPDATE`: a row replaces the one with the same key (the
    /// key columns need a unique index or primary key).
    Upsert { key: Vec<String> },
}

/// `"name"` with inner quotes doubled; a dotted name is quoted part by part (`schema.table`).
pub fn quote_identifier(name: &str) -> String {
    name.split('.').map(|part| format!("\"{}\"", part.replace('"', "\"\""))).collect::<Vec<_>>().join(".")
}

/// `'text'` with inner quotes doubled (for `PREPARE TRANSACTION` and `COMMIT PREPARED`, which
/// take no parameters).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The statement writing `rows` rows: `INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)`, and for
/// an upsert `ON CONFLICT (key) DO UPDATE SET` every other column (`DO NOTHING` when every column
/// is in the key).
pub fn write_statement(table: &str, columns: &[String], mode: &WriteMode, rows: usize) -> String {
    let n = columns.len();
    let cols: Vec<String> = columns.iter().map(|c| quote_identifier(c)).collect();
    let values: Vec<String> = (0..rows)
        .map(|r| {
            let params: Vec<String> = (1..=n).map(|c| format!("${}", r * n + c)).collect();
            format!("({})", params.join(", "))
        })
        .collect();
    let mut sql = format!("INSERT INTO {} ({}) VALUES {}", quote_identifier(table), cols.join(", "), values.join(", "));
    if let WriteMode::Upsert { key } = mode {
        let key_cols: Vec<String> = key.iter().map(|c| quote_identifier(c)).collect();
        let updates: Vec<String> = columns
            .iter()
            .filter(|c| !key.contains(c))
            .map(|c| format!("{q} = EXCLUDED.{q}", q = quote_identifier(c)))
            .collect();
        if updates.is_empty() {
            sql.push_str(&format!(" ON CONFLICT ({}) DO NOTHING", key_cols.join(", ")));
        } else {
            sql.push_str(&format!(" ON CONFLICT ({}) DO UPDATE SET {}", key_cols.join(", "), updates.join(", ")));
        }
    }
    sql
}

/// Keeps the last row per key, in the order keys first appeared: one statement cannot upsert a
/// key twice (PostgreSQL: "ON CONFLICT DO UPDATE command cannot affect row a second time"), and
/// the last row is the one an upsert keeps anyway.
pub fn last_row_per_key(rows: Vec<Vec<SqlValue>>, key_positions: &[usize]) -> Vec<Vec<SqlValue>> {
    let mut at: HashMap<Vec<String>, usize> = HashMap::new();
    let mut kept: Vec<Vec<SqlValue>> = Vec::with_capacity(rows.len());
    for row in rows {
        let key: Vec<String> = key_positions.iter().map(|&i| row[i].key_text()).collect();
        match at.get(&key) {
            Some(&i) => kept[i] = row,
            None => {
                at.insert(key, kept.len());
                kept.push(row);
            }
        }
    }
    kept
}

/// The id a subtask prepares a checkpoint's transaction under:
/// `<prefix>-<subtask>-<checkpoint>-<run>`. The run token (new at every start) keeps ids unique
/// when a job restores an earlier snapshot and takes checkpoint ids again.
pub fn transaction_id(prefix: &str, subtask: u32, checkpoint: u64, run: &str) -> String {
    format!("{prefix}-{subtask}-{checkpoint}-{run}")
}

/// The subtask that wrote a prepared transaction of this sink (`None`: not one of this prefix's).
pub fn writer_of(prefix: &str, gid: &str) -> Option<u32> {
    let rest = gid.strip_prefix(prefix)?.strip_prefix('-')?;
    let mut parts = rest.split('-');
    let writer = parts.next()?.parse().ok()?;
    let _checkpoint: u64 = parts.next()?.parse().ok()?;
    let run = parts.next()?;
    (parts.next().is_none() && !run.is_empty()).then_some(writer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn statements() {
        assert_eq!(
            write_statement("word_counts", &cols(&["word", "frequency"]), &WriteMode::Insert, 2),
            r#"INSERT INTO "word_counts" ("word", "frequency") VALUES ($1, $2), ($3, $4)"#
        );
        assert_eq!(
            write_statement("s.t", &cols(&["word", "frequency"]), &WriteMode::Upsert { key: cols(&["word"]) }, 1),
            r#"INSERT INTO "s"."t" ("word", "frequency") VALUES ($1, $2) ON CONFLICT ("word") DO UPDATE SET "frequency" = EXCLUDED."frequency""#
        );
        assert_eq!(
            write_statement("t", &cols(&["k"]), &WriteMode::Upsert { key: cols(&["k"]) }, 1),
            r#"INSERT INTO "t" ("k") VALUES ($1) ON CONFLICT ("k") DO NOTHING"#
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_identifier(r#"we"ird"#), r#""we""ird""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn the_last_row_of_a_key_wins_in_first_seen_order() {
        let row = |w: &str, n: i64| vec![SqlValue::Text(w.into()), SqlValue::BigInt(n)];
        let kept = last_row_per_key(vec![row("a", 1), row("b", 1), row("a", 2)], &[0]);
        assert_eq!(kept, vec![row("a", 2), row("b", 1)]);
    }

    #[test]
    fn transaction_ids_round_trip_and_other_ids_are_not_ours() {
        let gid = transaction_id("weir-word_counts", 3, 17, "ab12cd34");
        assert_eq!(gid, "weir-word_counts-3-17-ab12cd34");
        assert_eq!(writer_of("weir-word_counts", &gid), Some(3));
        assert_eq!(writer_of("weir-word", &gid), None, "a prefix of the prefix is another sink");
        assert_eq!(writer_of("weir-word_counts", "weir-word_counts-3-x-ab"), None);
        assert_eq!(writer_of("weir-word_counts", "someone-else"), None);
    }
}
