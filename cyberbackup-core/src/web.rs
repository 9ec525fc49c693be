//! Rules shared by the two browser-facing HTTP listeners, the server's admin dashboard and
//! the client's web UI: which `Host` header values they answer (the defence against DNS
//! rebinding) and the security headers they send. Pure functions over header values; the
//! listeners apply them.

use std::net::IpAddr;

/// Response headers both UIs send with every answer: another site may not frame their pages
/// (clickjacking), and browsers must not guess a content type other than the one sent.
pub const SECURITY_HEADERS: [(&str, &str); 3] = [
    ("x-frame-options", "DENY"),
    ("content-security-policy", "frame-ancestors 'none'"),
    ("x-content-type-options", "nosniff"),
];

/// The host of a `Host` header value, without its port: `localhost` of `localhost:9091`,
/// `::1` of `[::1]:9091`. `None` for an empty host or a bracket that does not close.
#[must_use]
pub fn host_name(host_header: &str) -> Option<&str> {
    let host = host_header.trim();
    let name = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split_once(']')?.0,
        None => host.split(':').next().unwrap_or_default(),
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    (!name.is_empty()).then_some(name)
}

/// Whether a request whose `Host` header is `host_header` is addressed to a listener bound
/// to `listen`: the name is `localhost`, a loopback address, the listening address itself,
/// any IP address when `listen` is unspecified (`0.0.0.0`, `::`: the listener answers on all
/// of the machine's addresses), or one of `names` (compared case-insensitively).
///
/// A DNS-rebinding page reaches the listener under the attacker's own domain name, which is
/// none of these, while an address typed in a browser cannot be rebound. The port is not
/// compared: behind an SSH tunnel (`ssh -L 8080:127.0.0.1:9091`) or a reverse proxy the
/// browser names another port, and the port is no part of the defence.
#[must_use]
pub fn host_allowed(host_header: &str, listen: IpAddr, names: &[String]) -> bool {
    let Some(name) = host_name(host_header) else {
        return false;
    };
    if name.eq_ignore_ascii_case("localhost") || names.iter().any(|n| n.eq_ignore_ascii_case(name))
    {
        return true;
    }
    name.parse::<IpAddr>()
        .is_ok_and(|ip| ip.is_loopback() || ip == listen || listen.is_unspecified())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn host_names_drop_the_port_and_brackets() {
        assert_eq!(host_name("127.0.0.1:9091"), Some("127.0.0.1"));
        assert_eq!(host_name("[::1]:9091"), Some("::1"));
        assert_eq!(host_name("[::1]"), Some("::1"));
        assert_eq!(host_name("LocalHost."), Some("LocalHost"));
        assert_eq!(host_name("backup.example.com"), Some("backup.example.com"));
        assert_eq!(host_name(""), None);
        assert_eq!(host_name(":9091"), None);
        assert_eq!(host_name("[::1"), None);
    }

    #[test]
    fn loopback_names_and_configured_names_are_allowed_others_are_not() {
        let names = ["Backup.Example.com".to_owned()];

        for allowed in [
            "127.0.0.1:9091",
            "127.0.0.1:8080",
            "localhost:9091",
            "LOCALHOST",
            "[::1]:9091",
            "backup.example.com",
            "backup.example.com:443",
        ] {
            assert!(host_allowed(allowed, LOOPBACK, &names), "{allowed}");
        }
        for refused in [
            "evil.example:9091",
            "evil.example",
            "localhost.evil.example",
            "192.168.1.5:9091",
            "",
            "[::1",
        ] {
            assert!(!host_allowed(refused, LOOPBACK, &names), "{refused}");
        }
    }

    #[test]
    fn the_listening_address_is_allowed_and_any_address_when_unspecified() {
        let specific: IpAddr = "192.168.1.5".parse().unwrap();
        let any: IpAddr = "0.0.0.0".parse().unwrap();

        assert!(host_allowed("192.168.1.5:9091", specific, &[]));
        assert!(!host_allowed("192.168.1.6:9091", specific, &[]));
        assert!(host_allowed("192.168.1.6:9091", any, &[]));
        assert!(host_allowed("[fd00::5]:9091", any, &[]));
        assert!(!host_allowed("evil.example:9091", any, &[]));
    }
}
