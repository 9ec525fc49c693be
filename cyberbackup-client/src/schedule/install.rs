//! `cyberbackup-client schedule install`: a systemd user unit that starts the daemon at
//! login and restarts it after a failure, so scheduled backups need no open UI. Other
//! platforms are described in docs/client.md (launchd on macOS, Task Scheduler on Windows).

use std::path::{Path, PathBuf};

/// File name of the unit.
pub const UNIT_NAME: &str = "cyberbackup-client.service";

/// `$XDG_CONFIG_HOME/systemd/user`, else `~/.config/systemd/user`.
///
/// # Errors
/// A sentence when neither variable is set.
pub fn user_unit_dir() -> Result<PathBuf, String> {
    let from_env = |name: &str| {
        std::env::var_os(name)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
            .filter(|dir| dir.is_absolute())
    };
    let config = match (from_env("XDG_CONFIG_HOME"), from_env("HOME")) {
        (Some(config), _) => config,
        (None, Some(home)) => home.join(".config"),
        (None, None) => {
            return Err(
                "cannot find the systemd user unit directory: set HOME or XDG_CONFIG_HOME".into(),
            );
        }
    };
    Ok(config.join("systemd").join("user"))
}

/// The unit's text: `daemon` run from `exe` with these arguments.
#[must_use]
pub fn unit_text(exe: &Path, args: &[String]) -> String {
    let command: Vec<String> = std::iter::once(exe.display().to_string())
        .chain(args.iter().cloned())
        .map(|arg| quote(&arg))
        .collect();
    format!(
        "# Written by `cyberbackup-client schedule install`; rerun it after moving the binary.\n\
         [Unit]\n\
         Description=CyberBackup scheduled backups (the sources of `cyberbackup-client schedule list`)\n\
         Documentation={}/blob/main/docs/client.md\n\
         After=network-online.target\n\
         \n\
         [Service]\n\
         Type=simple\n\
         ExecStart={}\n\
         Restart=on-failure\n\
         RestartSec=30\n\
         # A backup reads the disk and sends over the network: stay out of the way.\n\
         Nice=10\n\
         IOSchedulingClass=idle\n\
         \n\
         [Install]\n\
         WantedBy=default.target\n",
        env!("CARGO_PKG_REPOSITORY"),
        command.join(" ")
    )
}

/// Quotes one command-line word for `ExecStart=`: in double quotes, with `\` and `"`
/// escaped, `%` (a specifier) doubled and `$` (a variable) doubled.
fn quote(word: &str) -> String {
    let mut quoted = String::with_capacity(word.len() + 2);
    quoted.push('"');
    for c in word.chars() {
        match c {
            '\\' | '"' => {
                quoted.push('\\');
                quoted.push(c);
            }
            '%' => quoted.push_str("%%"),
            '$' => quoted.push_str("$$"),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// Writes the unit into `dir` (created when missing); returns its path.
///
/// # Errors
/// A sentence naming the file when it cannot be written.
pub fn write_unit(dir: &Path, text: &str) -> Result<PathBuf, String> {
    let path = dir.join(UNIT_NAME);
    let fail = |err: std::io::Error| {
        format!(
            "cannot write the unit {}: {err} — check that the directory is writable",
            path.display()
        )
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    cyberbackup_fs::write_private(&path, text.as_bytes()).map_err(fail)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_start_quotes_what_systemd_would_expand() {
        let text = unit_text(
            Path::new("/opt/cyber backup/cyberbackup-client"),
            &[
                "daemon".into(),
                "--data-dir".into(),
                "/home/a\"b/100%$x".into(),
            ],
        );
        let exec = text
            .lines()
            .find_map(|line| line.strip_prefix("ExecStart="))
            .unwrap();
        assert_eq!(
            exec,
            r#""/opt/cyber backup/cyberbackup-client" "daemon" "--data-dir" "/home/a\"b/100%%$$x""#
        );
        assert!(text.contains("WantedBy=default.target"));
    }
}
