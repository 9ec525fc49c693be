//! Exclude rules of a backup: `--exclude` / `--iexclude` globs (matched against the whole
//! path and against the base name), `--exclude-file` (one glob a line, `#` comments),
//! `--exclude-caches` (a directory holding a `CACHEDIR.TAG` with the standard signature) and
//! `--one-file-system`.

use std::io::Read;
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::v4::V4ClientError;

/// The first bytes of a valid `CACHEDIR.TAG` (<https://bford.info/cachedir/>).
const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

/// What to leave out of a backup.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExcludeOptions {
    /// Globs to exclude (case-sensitive).
    pub exclude: Vec<String>,
    /// Globs to exclude, case-insensitive.
    pub iexclude: Vec<String>,
    /// Files of globs, one a line.
    pub exclude_files: Vec<PathBuf>,
    /// Skip the contents of directories tagged with `CACHEDIR.TAG`.
    pub exclude_caches: bool,
    /// Stay on the file system of each backup path.
    pub one_file_system: bool,
}

/// The compiled rules.
#[derive(Clone, Debug)]
pub struct Excluder {
    globs: GlobSet,
    exclude_caches: bool,
    one_file_system: bool,
}

impl Excluder {
    /// Compiles the rules.
    ///
    /// # Errors
    /// [`V4ClientError::Usage`] for an invalid glob; [`V4ClientError::Local`] for an
    /// unreadable exclude file.
    pub fn new(options: &ExcludeOptions) -> Result<Self, V4ClientError> {
        let mut builder = GlobSetBuilder::new();
        let mut from_files = Vec::new();
        for file in &options.exclude_files {
            let text = std::fs::read_to_string(file).map_err(|source| V4ClientError::Local {
                what: "cannot read the exclude file",
                path: file.clone(),
                source,
            })?;
            from_files.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|line| !line.is_empty() && !line.starts_with('#'))
                    .map(str::to_owned),
            );
        }
        let sensitive = options.exclude.iter().chain(&from_files);
        let patterns = sensitive
            .map(|p| (p, false))
            .chain(options.iexclude.iter().map(|p| (p, true)));
        for (pattern, case_insensitive) in patterns {
            let glob = GlobBuilder::new(pattern)
                .case_insensitive(case_insensitive)
                .build()
                .map_err(|err| V4ClientError::Usage {
                    message: format!("invalid exclude pattern {pattern:?}: {err}"),
                })?;
            builder.add(glob);
        }
        let globs = builder.build().map_err(|err| V4ClientError::Usage {
            message: format!("invalid exclude patterns: {err}"),
        })?;
        Ok(Self {
            globs,
            exclude_caches: options.exclude_caches,
            one_file_system: options.one_file_system,
        })
    }

    /// Whether a glob excludes `path` (matched as a whole and by its base name).
    #[must_use]
    pub fn is_excluded(&self, path: &Path) -> bool {
        self.globs.is_match(path)
            || path
                .file_name()
                .is_some_and(|name| self.globs.is_match(name))
    }

    /// Whether the contents of directory `dir` are skipped as a tagged cache.
    #[must_use]
    pub fn is_tagged_cache(&self, dir: &Path) -> bool {
        if !self.exclude_caches {
            return false;
        }
        let mut head = [0u8; CACHEDIR_SIGNATURE.len()];
        std::fs::File::open(dir.join("CACHEDIR.TAG"))
            .and_then(|mut file| file.read_exact(&mut head))
            .is_ok_and(|()| head == CACHEDIR_SIGNATURE)
    }

    /// Whether an entry on device `dev` is left out of a backup path on `root_dev`.
    #[must_use]
    pub fn crosses_file_system(&self, root_dev: u64, dev: u64) -> bool {
        self.one_file_system && root_dev != dev
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn excluder(options: ExcludeOptions) -> Excluder {
        Excluder::new(&options).unwrap()
    }

    #[test]
    fn globs_match_the_whole_path_or_the_base_name_and_iexclude_ignores_case() {
        let rules = excluder(ExcludeOptions {
            exclude: vec!["*.o".into(), "/src/target".into()],
            iexclude: vec!["*.JPG".into()],
            ..ExcludeOptions::default()
        });
        assert!(rules.is_excluded(Path::new("/src/a/b.o")));
        assert!(rules.is_excluded(Path::new("/src/target")));
        assert!(rules.is_excluded(Path::new("/x/photo.jpg")));
        assert!(!rules.is_excluded(Path::new("/src/a/b.c")));
        assert!(!rules.is_excluded(Path::new("/other/target")));
        let sensitive = excluder(ExcludeOptions {
            exclude: vec!["*.JPG".into()],
            ..ExcludeOptions::default()
        });
        assert!(!sensitive.is_excluded(Path::new("/x/photo.jpg")));
    }

    #[test]
    fn exclude_files_skip_comments_and_blank_lines() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("excludes");
        std::fs::write(&list, "# build output\n\n  *.tmp  \n").unwrap();
        let rules = excluder(ExcludeOptions {
            exclude_files: vec![list],
            ..ExcludeOptions::default()
        });
        assert!(rules.is_excluded(Path::new("/a/b.tmp")));
        assert!(!rules.is_excluded(Path::new("/a/# build output")));
    }

    #[test]
    fn only_a_cachedir_tag_with_the_signature_marks_a_cache() {
        let dir = tempfile::tempdir().unwrap();
        let rules = excluder(ExcludeOptions {
            exclude_caches: true,
            ..ExcludeOptions::default()
        });
        std::fs::write(
            dir.path().join("CACHEDIR.TAG"),
            b"not the signature at all, no",
        )
        .unwrap();
        assert!(!rules.is_tagged_cache(dir.path()));
        std::fs::write(
            dir.path().join("CACHEDIR.TAG"),
            [CACHEDIR_SIGNATURE, b"\n# x"].concat(),
        )
        .unwrap();
        assert!(rules.is_tagged_cache(dir.path()));
        assert!(!excluder(ExcludeOptions::default()).is_tagged_cache(dir.path()));
    }

    #[test]
    fn a_bad_glob_is_a_usage_error() {
        let err = Excluder::new(&ExcludeOptions {
            exclude: vec!["a[".into()],
            ..ExcludeOptions::default()
        })
        .unwrap_err();
        assert!(matches!(err, V4ClientError::Usage { .. }), "{err}");
    }
}
