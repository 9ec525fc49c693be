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

impl PostgresUrl {
    /// The URL with its password, for connecting.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for PostgresUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        ::postgres::Config::from_str(text).map_err(|err| {
            format!(
                "catalog URL {:?} is not a PostgreSQL URL ({err}); the form is postgres://USER:PASSWORD@HOST:PORT/DATABASE",
                redact_url(text)
            )
        })?;
        Ok(Self(Zeroizing::new(text.to_owned())))
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
