//! Opening a PostgreSQL connection, over TLS when the URL says `sslmode=require`: rustls
//! (ring, the crypto provider the server already uses) through `tokio-postgres-rustls`. The
//! server's certificate chain is verified against the certificates of `sslrootcert=FILE`
//! (PEM), or the system's roots without it, and its name against the URL's host — what
//! libpq calls `verify-full`. Any other `sslmode` connects without TLS.

use std::path::Path;
use std::sync::Arc;

use postgres::config::SslMode;
use postgres::{Client, NoTls};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::SqlError;
use crate::catalog::PostgresUrl;

/// Connects to the database of `url`.
pub(super) fn connect(url: &PostgresUrl) -> Result<Client, SqlError> {
    let settings = url.settings().map_err(SqlError::Settings)?;
    if settings.config.get_ssl_mode() != SslMode::Require {
        return Ok(settings.config.connect(NoTls)?);
    }
    let roots = match &settings.root_cert {
        Some(file) => roots_from(file)?,
        None => system_roots()?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| SqlError::Settings(format!("TLS for the catalog: {err}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(settings.config.connect(MakeRustlsConnect::new(tls))?)
}

/// The certificates of the PEM file `file`, which must hold at least one.
fn roots_from(file: &Path) -> Result<RootCertStore, SqlError> {
    let unreadable = |err: &dyn std::fmt::Display| {
        SqlError::Settings(format!(
            "cannot read the catalog's sslrootcert {}: {err} — give a PEM file of the certificate(s) that signed the PostgreSQL server's",
            file.display()
        ))
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(file).map_err(|e| unreadable(&e))? {
        roots
            .add(cert.map_err(|e| unreadable(&e))?)
            .map_err(|e| unreadable(&e))?;
    }
    if roots.is_empty() {
        return Err(unreadable(&"it holds no certificate"));
    }
    Ok(roots)
}

/// The system's trusted roots.
fn system_roots() -> Result<RootCertStore, SqlError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(SqlError::Settings(format!(
            "sslmode=require: no trusted root certificate found on this system ({} errors); install ca-certificates, or name the server's CA with sslrootcert=FILE in the catalog URL",
            found.errors.len()
        )));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use crate::catalog::testing::postgres_server::PgServer;
    use crate::catalog::{Catalog, CatalogError, CatalogLocation, error};

    /// Whether the catalog's own read connection is encrypted, as the server sees it.
    async fn encrypted(catalog: &Catalog) -> bool {
        catalog
            .read(|c| {
                c.query_row(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    (),
                    |r| r.get(0),
                )
                .map_err(error::query_err("pg_stat_ssl"))
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn sslmode_require_encrypts_every_connection_and_checks_the_servers_certificate() {
        let Some((pg, ca)) = PgServer::start_tls_or_skip() else {
            return;
        };
        let plain = pg.database();
        let with = |query: &str| CatalogLocation::parse(&format!("{plain}?{query}")).unwrap();

        let catalog = Catalog::open_at(with(&format!(
            "sslmode=require&sslrootcert={}",
            ca.display()
        )))
        .await
        .unwrap();
        assert!(
            encrypted(&catalog).await,
            "sslmode=require connected in the clear"
        );
        catalog.close().await.unwrap();
        // Without sslmode=require the same server is reached without TLS.
        let catalog = Catalog::open_at(plain.clone()).await.unwrap();
        assert!(!encrypted(&catalog).await);
        catalog.close().await.unwrap();

        // A certificate nothing trusted signed (the test CA is not among the system's
        // roots) is refused, and the error says what to do.
        let Err(refused) = Catalog::open_at(with("sslmode=require")).await else {
            panic!("connected to a server whose certificate no trusted CA signed");
        };
        assert!(
            matches!(refused, CatalogError::Connect { .. }),
            "{refused:?}"
        );
        assert!(
            refused.to_string().contains("sslrootcert=FILE"),
            "{refused}"
        );
        // An sslrootcert that holds no certificate.
        let empty = ca.with_file_name("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let Err(unusable) = Catalog::open_at(with(&format!(
            "sslmode=require&sslrootcert={}",
            empty.display()
        )))
        .await
        else {
            panic!("connected with an sslrootcert holding no certificate");
        };
        assert!(
            unusable.to_string().contains("holds no certificate"),
            "{unusable}"
        );
    }
}
