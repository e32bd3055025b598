//! Host header normalisation.

/// Normalises a `Host` / `:authority` value: lower case, port and trailing dot stripped.
///
/// Returns `None` for anything that is not a plausible host name or IP literal, so that
/// odd bytes never reach a lookup.
pub fn normalize_host(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let host = if raw.starts_with('[') {
        // IPv6 literal, maybe with a port after the bracket.
        let end = raw.find(']')?;
        let (lit, rest) = raw.split_at(end + 1);
        if !(rest.is_empty() || port_ok(rest.strip_prefix(':')?)) {
            return None;
        }
        if !lit[1..lit.len() - 1]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return None;
        }
        lit
    } else {
        let host = match raw.rfind(':') {
            Some(i) => {
                if !port_ok(&raw[i + 1..]) {
                    return None;
                }
                &raw[..i]
            }
            None => raw,
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        if host.is_empty()
            || host.len() > 253
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
            || host.starts_with('.')
            || host.contains("..")
        {
            return None;
        }
        host
    };
    Some(host.to_ascii_lowercase())
}

fn port_ok(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::normalize_host;

    #[test]
    fn normalises() {
        assert_eq!(
            normalize_host("Example.COM").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            normalize_host("example.com.:8080").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            normalize_host("example.com.").as_deref(),
            Some("example.com")
        );
        assert_eq!(normalize_host("[::1]:443").as_deref(), Some("[::1]"));
        assert_eq!(normalize_host("127.0.0.1:80").as_deref(), Some("127.0.0.1"));
        assert_eq!(normalize_host(""), None);
        assert_eq!(normalize_host("a/b"), None);
        assert_eq!(normalize_host("a..b"), None);
        assert_eq!(normalize_host("example.com:x"), None);
        assert_eq!(normalize_host("ex ample.com"), None);
        assert_eq!(normalize_host("[::1]x"), None);
    }
}
