//! Rendering of admin answers: aligned tables for people, JSON for scripts.

use std::io::Write;

use serde::Serialize;

use super::error::{AdminError, Refusal};

/// How answers are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// One JSON document on stdout.
    Json,
}

/// An answer that can be shown as text for people.
pub trait Report: Serialize {
    fn table(&self) -> String;
}

/// Prints `report` on stdout. A closed pipe (`| head`) is not an error worth a message.
pub fn print(format: Format, report: &impl Report) {
    let text = match format {
        Format::Table => report.table(),
        Format::Json => match serde_json::to_string_pretty(report) {
            Ok(json) => json + "\n",
            Err(e) => format!("{{\"error\": \"cannot encode JSON: {e}\"}}\n"),
        },
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
}

/// Prints what succeeded, then fails with what was refused, if anything.
pub fn finish(
    format: Format,
    report: &impl Report,
    refused: Vec<Refusal>,
) -> Result<(), AdminError> {
    print(format, report);
    if refused.is_empty() {
        Ok(())
    } else {
        Err(AdminError::Refused(refused))
    }
}

/// Columns padded to their widest cell, headers in capitals as Kafka's tools print them.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Table {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.chars().count());
                }
            }
        }
        let mut out = String::new();
        let headers: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        for row in std::iter::once(&headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let width = widths.get(i).copied().unwrap_or_default();
                    let pad = width.saturating_sub(cell.chars().count()) + 2;
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A cell for a value that may be missing: "-" as Kafka's tools print it.
pub fn cell<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let mut table = Table::new(&["TOPIC", "PARTITIONS"]);
        table.row(vec!["orders".into(), "3".into()]);
        table.row(vec!["a".into(), cell(None::<i32>)]);
        assert_eq!(table.render(), "TOPIC   PARTITIONS\norders  3\na       -\n");
    }
}
