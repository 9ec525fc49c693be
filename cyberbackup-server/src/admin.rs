//! Admin listings for the `clients` and `files` subcommands: aligned tables (`comfy-table`,
//! which measures display width, so wide names stay aligned) or CSV (`csv`), streamed page by
//! page so a million files never sit in memory. [`FileRow`] is the one shape of a file row:
//! the JSON API, `/api/v1/files.csv` and `files --csv` all use it.

use std::io::Write;

use comfy_table::{CellAlignment, ColumnConstraint, ContentArrangement, Table, Width, presets};
use serde::Serialize;

use crate::catalog::{Catalog, ClientRecord, FileFilter, FileRecord};
use crate::error::ServerError;

/// Rows fetched per page.
const PAGE: u32 = 100;

/// The CSV columns: the fields of [`FileRow`], in order.
pub const FILE_CSV_COLUMNS: [&str; 13] = [
    "row",
    "client",
    "client_id",
    "name",
    "version",
    "state",
    "verified",
    "size",
    "cksum",
    "sha256",
    "created_at",
    "verified_at",
    "path",
];

/// One file row as the admin API and the `files --csv` command show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileRow {
    /// Catalog row id (the paging cursor).
    pub row: i64,
    /// Client name (lossy UTF-8).
    pub client: String,
    /// Client id, 32 hex digits.
    pub client_id: String,
    /// File name as sent (lossy UTF-8).
    pub name: String,
    /// Version number of the file.
    pub version: u32,
    /// Life-cycle state (`verified`, `receiving`, …).
    pub state: &'static str,
    /// Whether the client confirmed the checksum.
    pub verified: bool,
    /// Plaintext size.
    pub size: Option<u64>,
    /// POSIX cksum of the plaintext.
    pub cksum: Option<u32>,
    /// SHA-256 of the plaintext, hex.
    pub sha256: Option<String>,
    /// Creation time (RFC 3339).
    pub created_at: String,
    /// Verification time (RFC 3339).
    pub verified_at: Option<String>,
    /// Stored path, relative to `files/`.
    pub path: String,
}

impl From<&FileRecord> for FileRow {
    fn from(f: &FileRecord) -> Self {
        Self {
            row: f.row.0,
            client: String::from_utf8_lossy(&f.client_name).into_owned(),
            client_id: hex::encode(f.client_id),
            name: String::from_utf8_lossy(&f.file_name).into_owned(),
            version: f.version,
            state: f.state.as_str(),
            verified: f.verified,
            size: f.size,
            cksum: f.cksum,
            sha256: f.sha256.as_ref().map(hex::encode),
            created_at: f.created_at.clone(),
            verified_at: f.verified_at.clone(),
            path: f.path_name.clone(),
        }
    }
}

/// Writes `records` as CSV rows ([`FILE_CSV_COLUMNS`]), preceded by the header line when
/// `header` (RFC 4180 quoting).
///
/// # Errors
/// The writer's error.
pub fn write_files_csv(
    out: impl Write,
    records: &[FileRecord],
    header: bool,
) -> Result<(), csv::Error> {
    let mut writer = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(out);
    if header {
        writer.write_record(FILE_CSV_COLUMNS)?;
    }
    for record in records {
        writer.serialize(FileRow::from(record))?;
    }
    writer.flush()?;
    Ok(())
}

/// Writes the v4 device table (client, fingerprint, role, added); returns the number of
/// devices.
///
/// # Errors
/// [`ServerError::Catalog`] or [`ServerError::Io`] when `out` fails.
pub async fn write_devices(catalog: &Catalog, out: &mut impl Write) -> Result<usize, ServerError> {
    let devices = catalog.list_devices().await?;
    let mut table = text_table(&["CLIENT", "DEVICE", "ROLE", "ADDED"]);
    for device in &devices {
        table.add_row([
            display(&device.client_name),
            crate::catalog::v4::device_fingerprint(&device.key),
            device.role.as_str().to_owned(),
            device.added_at.clone(),
        ]);
    }
    write_lines(out, &table, true).map_err(|e| ServerError::io("cannot write device list", e))?;
    Ok(devices.len())
}

/// Writes the client table; returns the number of clients.
///
/// # Errors
/// [`ServerError::Catalog`] or [`ServerError::Io`] when `out` fails.
pub async fn write_clients(catalog: &Catalog, out: &mut impl Write) -> Result<usize, ServerError> {
    let clients = catalog.list_clients().await?;
    let mut table = text_table(&["ID", "NAME", "LAST SEEN", "KEY", "REGISTERED"]);
    for ClientRecord {
        id,
        name,
        public_key,
        last_seen,
        registered_at,
        ..
    } in &clients
    {
        table.add_row([
            hex::encode(id),
            display(name),
            last_seen.clone().unwrap_or_else(|| "-".into()),
            if public_key.is_some() { "yes" } else { "no" }.to_owned(),
            registered_at.clone(),
        ]);
    }
    write_lines(out, &table, true).map_err(|e| ServerError::io("cannot write client list", e))?;
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
    filter.limit = PAGE;
    let mut count = 0;
    loop {
        let page = catalog.list_files(filter.clone()).await?;
        let first = count == 0;
        if csv {
            write_files_csv(&mut *out, &page, first).map_err(|e| io(e.into()))?;
        } else if first || !page.is_empty() {
            write_lines(out, &files_table(&page), first).map_err(io)?;
        }
        let Some(last) = page.last() else { break };
        filter.after_row = Some(last.row);
        count += page.len();
    }
    Ok(count)
}

/// One page of the file table. Every page has the same minimum column widths, so pages line
/// up unless a value is wider than its column.
fn files_table(page: &[FileRecord]) -> Table {
    let mut table = text_table(&["ROW", "CLIENT", "FILE", "VER", "STATE", "SIZE", "CREATED"]);
    let widths = [8, 16, 32, 4, 9, 12, 0];
    let right = [true, false, false, true, false, true, false];
    for (i, (width, right)) in widths.into_iter().zip(right).enumerate() {
        let Some(column) = table.column_mut(i) else {
            continue;
        };
        column.set_constraint(ColumnConstraint::LowerBoundary(Width::Fixed(width)));
        if right {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    for f in page {
        table.add_row([
            f.row.to_string(),
            display(&f.client_name),
            display(&f.file_name),
            f.version.to_string(),
            f.state.to_string(),
            f.size.map_or_else(|| "-".into(), |s| s.to_string()),
            f.created_at.clone(),
        ]);
    }
    table
}

/// A borderless table with `header`, columns two spaces apart.
fn text_table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().copied());
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table
}

/// Writes the table's lines, without trailing blanks; the header line only if `header`.
fn write_lines(out: &mut impl Write, table: &Table, header: bool) -> std::io::Result<()> {
    for line in table.lines().skip(usize::from(!header)) {
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
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
        let table = String::from_utf8(table).unwrap();
        let csv = String::from_utf8(csv).unwrap();
        assert_eq!(n_clients, 1);
        assert!(
            clients.contains("01010101010101010101010101010101  alice"),
            "{clients}"
        );
        assert_eq!((n_table, n_csv), (150, 150));
        assert_eq!(table.lines().count(), 151);
        let state_at: Vec<Option<usize>> = table.lines().map(|l| l.find("verified")).collect();
        assert!(
            state_at
                .iter()
                .skip(1)
                .all(|at| at.is_some() && *at == state_at[1]),
            "pages line up:\n{table}"
        );
        assert_eq!(csv.lines().count(), 151);
        assert_eq!(
            csv.lines().next(),
            Some(FILE_CSV_COLUMNS.join(",").as_str())
        );
        assert!(
            csv.lines().nth(1).unwrap().contains(",\"f0,x.txt\","),
            "{csv}"
        );
    }

    #[test]
    fn csv_header_names_the_fields_and_quotes_when_needed() {
        let record = FileRecord {
            row: crate::catalog::FileRowId(7),
            client_id: [0xab; 16],
            client_name: b"alice".to_vec(),
            file_name: b"a,\"b\".txt".to_vec(),
            path_name: "x/y".into(),
            version: 1,
            state: crate::catalog::FileState::Verified,
            verified: true,
            size: Some(3),
            ciphertext_size: Some(16),
            cksum: Some(9),
            sha256: None,
            created_at: "t".into(),
            updated_at: "t".into(),
            verified_at: None,
        };
        let mut derived = csv::Writer::from_writer(Vec::new());
        derived.serialize(FileRow::from(&record)).unwrap();
        let derived = String::from_utf8(derived.into_inner().unwrap()).unwrap();
        let mut out = Vec::new();

        write_files_csv(&mut out, std::slice::from_ref(&record), true).unwrap();

        let out = String::from_utf8(out).unwrap();
        assert_eq!(out, derived, "the header is the struct's field names");
        assert_eq!(
            out.lines().nth(1),
            Some(
                "7,alice,abababababababababababababababab,\"a,\"\"b\"\".txt\",1,verified,true,3,9,,t,,x/y"
            )
        );
    }

    #[test]
    fn wide_names_keep_the_columns_aligned() {
        let record = |name: &str| FileRecord {
            row: crate::catalog::FileRowId(1),
            client_id: [1; 16],
            client_name: "名前".as_bytes().to_vec(),
            file_name: name.as_bytes().to_vec(),
            path_name: String::new(),
            version: 1,
            state: crate::catalog::FileState::Verified,
            verified: true,
            size: Some(1),
            ciphertext_size: None,
            cksum: None,
            sha256: None,
            created_at: "t".into(),
            updated_at: "t".into(),
            verified_at: None,
        };
        let table = files_table(&[record("報告書.txt"), record("report.txt")]);

        let lines: Vec<String> = table.lines().collect();
        let column_of_state = |line: &str| {
            let at = line.find("verified").unwrap();
            unicode_width::UnicodeWidthStr::width(&line[..at])
        };
        assert_eq!(
            column_of_state(&lines[1]),
            column_of_state(&lines[2]),
            "{lines:#?}"
        );
    }
}
