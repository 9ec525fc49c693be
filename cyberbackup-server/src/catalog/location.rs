//! Where the catalog lives: the SQLite file in the data directory (the default), another
//! SQLite file, or a PostgreSQL database (`catalog = "postgres://…"`, the scale-out layout
//! of docs/deployment.md).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use zeroize::Zeroizing;

use super::Engine;

/// The catalog's database.
#[derive(Clone, PartialEq, Eq)]
pub enum CatalogLocation {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database.
    Postgres(PostgresUrl),
}

impl CatalogLocation {
    /// Parses the `catalog` setting: `sqlite:PATH`, or a `postgres://` (`postgresql://`)
    /// URL.
    ///
    /// # Errors
    /// A message naming the accepted forms.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("sqlite:") {
            if path.is_empty() {
                return Err("catalog = \"sqlite:\" needs a path, e.g. \"sqlite:/var/lib/cyberbackup/defensive.db\"".into());
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return PostgresUrl::from_str(text).map(Self::Postgres);
        }
        Err(format!(
            "catalog {:?} is neither \"sqlite:PATH\" nor a \"postgres://USER:PASSWORD@HOST:PORT/DATABASE\" URL",
            redact_url(text)
        ))
    }

    /// The engine it names.
    #[must_use]
    pub fn engine(&self) -> Engine {
        match self {
            Self::Sqlite(_) => Engine::Sqlite,
            Self::Postgres(_) => Engine::Postgres,
        }
    }
}

impl FromStr for CatalogLocation {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::parse(text)
    }
}

/// Written as its [`Display`](fmt::Display) form: a PostgreSQL password is not written
/// (like `admin_token`), so a printed configuration keeps it out.
impl serde::Serialize for CatalogLocation {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for CatalogLocation {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Shown without the password.
impl fmt::Display for CatalogLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            Self::Postgres(url) => url.fmt(f),
        }
    }
}

impl fmt::Debug for CatalogLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A PostgreSQL connection URL. It may hold a password: zeroized on drop, and shown (by
/// `Display` and `Debug`) with the password replaced by `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresUrl(Zeroizing<String>);

/// What a [`PostgresUrl`] says about connecting: the client's settings, and the file of
/// certificates to trust for TLS (`sslrootcert=FILE`; `None`: the system's roots).
pub(crate) struct PostgresSettings {
    /// Everything but `sslrootcert`, as `postgres` parses it.
    pub(crate) config: ::postgres::Config,
    /// `sslrootcert`.
    pub(crate) root_cert: Option<PathBuf>,
}

impl PostgresUrl {
    /// The connection settings, password included. `sslrootcert`, a libpq parameter the
    /// Rust client does not know, is taken out of the URL here; it needs `sslmode=require`.
    ///
    /// # Errors
    /// A message saying what is wrong with the URL (without its password).
    pub(crate) fn settings(&self) -> Result<PostgresSettings, String> {
        let (url, root_cert) = take_root_cert(&self.0);
        let config = ::postgres::Config::from_str(&url).map_err(|err| {
            format!(
                "catalog URL {:?} is not a PostgreSQL URL ({err}); the form is postgres://USER:PASSWORD@HOST:PORT/DATABASE[?sslmode=require[&sslrootcert=FILE]]",
                redact_url(&self.0)
            )
        })?;
        if root_cert.is_some() && config.get_ssl_mode() != ::postgres::config::SslMode::Require {
            return Err(format!(
                "catalog URL {:?} names an sslrootcert but not sslmode=require: add sslmode=require (the certificate is only used for TLS)",
                redact_url(&self.0)
            ));
        }
        Ok(PostgresSettings { config, root_cert })
    }
}

/// `url` without its `sslrootcert=FILE` query parameter, and that file.
fn take_root_cert(url: &str) -> (Zeroizing<String>, Option<PathBuf>) {
    let Some((base, query)) = url.split_once('?') else {
        return (Zeroizing::new(url.to_owned()), None);
    };
    let mut root_cert = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|param| match param.strip_prefix("sslrootcert=") {
            Some(path) => {
                root_cert = Some(PathBuf::from(path));
                false
            }
            None => true,
        })
        .collect();
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (Zeroizing::new(url), root_cert)
}

impl FromStr for PostgresUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let url = Self(Zeroizing::new(text.to_owned()));
        url.settings()?;
        Ok(url)
    }
}

impl fmt::Display for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostgresUrl({self})")
    }
}

/// `text` with the password of a `scheme://user:password@…` URL (and a `password=` query
/// parameter) replaced by `<redacted>`.
fn redact_url(text: &str) -> String {
    let mut out = text.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest = scheme_end + 3;
        let authority_end = out[rest..].find(['/', '?']).map_or(out.len(), |i| rest + i);
        if let Some(at) = out[rest..authority_end].rfind('@') {
            if let Some(colon) = out[rest..rest + at].find(':') {
                out.replace_range(rest + colon + 1..rest + at, "<redacted>");
            }
        }
    }
    if let Some(start) = out.find("password=") {
        let value = start + "password=".len();
        let end = out[value..].find('&').map_or(out.len(), |i| value + i);
        out.replace_range(value..end, "<redacted>");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forms_parse_and_anything_else_is_refused_with_the_forms() {
        assert_eq!(
            CatalogLocation::parse("sqlite:/tmp/x.db").unwrap(),
            CatalogLocation::Sqlite("/tmp/x.db".into())
        );
        let pg = CatalogLocation::parse("postgres://cb:s3cret@127.0.0.1:5432/catalog").unwrap();
        assert_eq!(pg.engine(), Engine::Postgres);
        let err = CatalogLocation::parse("mysql://root:pw@db/x").unwrap_err();
        assert!(err.contains("sqlite:PATH") && !err.contains("pw@"), "{err}");
        assert!(CatalogLocation::parse("sqlite:").is_err());
        assert!(CatalogLocation::parse("postgres://cb@host:notaport/db").is_err());
    }

    #[test]
    fn sslrootcert_is_taken_out_of_the_url_and_needs_sslmode_require() {
        let url: PostgresUrl =
            "postgres://cb@db/catalog?sslmode=require&sslrootcert=/etc/ca.pem&connect_timeout=5"
                .parse()
                .unwrap();
        let settings = url.settings().unwrap();
        assert_eq!(settings.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(
            settings.config.get_ssl_mode(),
            ::postgres::config::SslMode::Require
        );
        assert_eq!(
            settings.config.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(5))
        );
        let without: PostgresUrl = "postgres://cb@db/catalog?sslmode=require".parse().unwrap();
        assert_eq!(without.settings().unwrap().root_cert, None);
        let err = "postgres://cb:pw@db/catalog?sslrootcert=/etc/ca.pem"
            .parse::<PostgresUrl>()
            .unwrap_err();
        assert!(
            err.contains("sslmode=require") && !err.contains("pw@"),
            "{err}"
        );
    }

    #[test]
    fn the_password_is_never_shown() {
        let pg = CatalogLocation::parse("postgres://cb:s3cret@127.0.0.1:5432/catalog").unwrap();
        for shown in [pg.to_string(), format!("{pg:?}")] {
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(
                shown.contains("cb:<redacted>@127.0.0.1:5432/catalog"),
                "{shown}"
            );
        }
        let query = CatalogLocation::parse(
            "postgresql://db/catalog?user=cb&password=s3cret&connect_timeout=5",
        )
        .unwrap()
        .to_string();
        assert_eq!(
            query,
            "postgresql://db/catalog?user=cb&password=<redacted>&connect_timeout=5"
        );
    }
}
