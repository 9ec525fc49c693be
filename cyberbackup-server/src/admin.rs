//! Admin listings for the `clients` and `files` subcommands: aligned tables or CSV, streamed
//! page by page so a million files never sit in memory.

use std::io::{self, Write};

use crate::catalog::{Catalog, ClientRecord, FileFilter, FileRecord};
use crate::error::ServerError;

/// Rows fetched per page.
const PAGE: u32 = 100;

/// Writes the client table; returns the number of clients.
///
/// # Errors
/// [`ServerError::Catalog`] or [`ServerError::Io`] when `out` fails.
pub async fn write_clients(catalog: &Catalog, out: &mut impl Write) -> Result<usize, ServerError> {
    let clients = catalog.list_clients().await?;
    let name_width = clients
        .iter()
        .map(|c| display(&c.name).chars().count())
        .max()
        .unwrap_or(0)
        .max(4);
    let io = |e| ServerError::io("cannot write client list", e);
    writeln!(
        out,
        "{:<32}  {:<name_width$}  {:<24}  KEY  REGISTERED",
        "ID", "NAME", "LAST SEEN"
    )
    .map_err(io)?;
    for ClientRecord {
        id,
        name,
        public_key,
        last_seen,
        registered_at,
        ..
    } in &clients
    {
        writeln!(
            out,
            "{}  {:<name_width$}  {:<24}  {:<3}  {registered_at}",
            hex::encode(id),
            display(name),
            last_seen.as_deref().unwrap_or("-"),
            if public_key.is_some() { "yes" } else { "no" },
        )
        .map_err(io)?;
    }
    Ok(clients.len())
}

/// Writes files matching `filter` as a table or CSV (header included); returns the row count.
///
/// # Errors
/// [`ServerError::Catalog`] or [`ServerError::Io`] when `out` fails.
pub async fn write_files(
    catalog: &Catalog,
    mut filter: FileFilter,
    csv: bool,
    out: &mut impl Write,
) -> Result<usize, ServerError> {
    let io = |e| ServerError::io("cannot write file list", e);
    if csv {
        writeln!(
            out,
            "row,client_id,client,file,path,version,state,size,cksum,sha256,created_at,verified_at"
        )
        .map_err(io)?;
    } else {
        writeln!(
            out,
            "{:>8}  {:<16}  {:<32}  {:>4}  {:<9}  {:>12}  CREATED",
            "ROW", "CLIENT", "FILE", "VER", "STATE", "SIZE"
        )
        .map_err(io)?;
    }
    filter.limit = PAGE;
    let mut count = 0;
    loop {
        let page = catalog.list_files(filter.clone()).await?;
        let Some(last) = page.last() else { break };
        filter.after_row = Some(last.row);
        for file in &page {
            if csv {
                write_csv_row(out, file).map_err(io)?;
            } else {
                write_table_row(out, file).map_err(io)?;
            }
        }
        count += page.len();
    }
    Ok(count)
}

fn write_table_row(out: &mut impl Write, f: &FileRecord) -> io::Result<()> {
    writeln!(
        out,
        "{:>8}  {:<16}  {:<32}  {:>4}  {:<9}  {:>12}  {}",
        f.row,
        display(&f.client_name),
        display(&f.file_name),
        f.version,
        f.state,
        f.size.map_or_else(|| "-".into(), |s| s.to_string()),
        f.created_at
    )
}

fn write_csv_row(out: &mut impl Write, f: &FileRecord) -> io::Result<()> {
    let fields = [
        f.row.to_string(),
        hex::encode(f.client_id),
        display(&f.client_name),
        display(&f.file_name),
        f.path_name.clone(),
        f.version.to_string(),
        f.state.to_string(),
        f.size.map(|s| s.to_string()).unwrap_or_default(),
        f.cksum.map(|c| c.to_string()).unwrap_or_default(),
        f.sha256.as_deref().map(hex::encode).unwrap_or_default(),
        f.created_at.clone(),
        f.verified_at.clone().unwrap_or_default(),
    ];
    let line: Vec<String> = fields.iter().map(|s| csv_field(s)).collect();
    writeln!(out, "{}", line.join(","))
}

/// Quotes a CSV field when needed (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// Names are bytes on the wire; show them lossily, control characters escaped.
fn display(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).escape_debug().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::ReceivedFile;

    #[tokio::test]
    async fn lists_clients_and_files_as_table_and_csv() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path().join("defensive.db"))
            .await
            .unwrap();
        catalog
            .register_client([1; 16], b"alice".to_vec(), 3)
            .await
            .unwrap();
        for i in 0..150 {
            let name = format!("f{i},x.txt");
            let (row, _) = catalog
                .begin_file(
                    [1; 16],
                    name.clone().into_bytes(),
                    format!("01/{name}"),
                    None,
                )
                .await
                .unwrap();
            let facts = ReceivedFile {
                size: 5,
                ciphertext_size: 16,
                cksum: 9,
                sha256: [0xAB; 32],
            };
            catalog.mark_received(row, facts).await.unwrap();
            catalog.commit_file(row, 1).await.unwrap();
        }
        let (mut clients, mut table, mut csv) = (Vec::new(), Vec::new(), Vec::new());

        let n_clients = write_clients(&catalog, &mut clients).await.unwrap();
        let n_table = write_files(&catalog, FileFilter::default(), false, &mut table)
            .await
            .unwrap();
        let n_csv = write_files(&catalog, FileFilter::default(), true, &mut csv)
            .await
            .unwrap();

        let clients = String::from_utf8(clients).unwrap();
        let csv = String::from_utf8(csv).unwrap();
        assert_eq!(n_clients, 1);
        assert!(
            clients.contains("01010101010101010101010101010101  alice"),
            "{clients}"
        );
        assert_eq!((n_table, n_csv), (150, 150));
        assert_eq!(String::from_utf8(table).unwrap().lines().count(), 151);
        assert_eq!(csv.lines().count(), 151);
        assert!(
            csv.lines().nth(1).unwrap().contains(",\"f0,x.txt\","),
            "{csv}"
        );
    }

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
