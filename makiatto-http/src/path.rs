//! Request path sanitising: the only way a URL path becomes a file path.

use percent_encoding::percent_decode_str;

/// A request path that is safe to join under a site root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafePath {
    /// Segments joined with `/`, no leading slash; empty for the root.
    pub rel: String,
    /// Whether the request path ended with `/`.
    pub trailing_slash: bool,
}

/// Turns a request path (without query) into a [`SafePath`], or `None` when the path
/// could leave the root or name something odd: `.`/`..` segments (raw or encoded),
/// backslashes, NUL, encoded slashes, non-UTF-8, or a path that does not start with `/`.
pub fn sanitize(path: &str) -> Option<SafePath> {
    if !path.starts_with('/') || path.contains('\\') {
        return None;
    }
    let mut rel = String::with_capacity(path.len());
    for seg in path.split('/') {
        if seg.is_empty() {
            continue;
        }
        let decoded = percent_decode_str(seg).decode_utf8().ok()?;
        // Hidden names (`.env`, `.git/…`) are never served, as deploys never publish them;
        // `.well-known` is the one exception.
        if (decoded.starts_with('.') && decoded != ".well-known")
            || decoded
                .bytes()
                .any(|b| b == 0 || b == b'/' || b == b'\\' || b.is_ascii_control())
        {
            return None;
        }
        if !rel.is_empty() {
            rel.push('/');
        }
        rel.push_str(&decoded);
    }
    Some(SafePath {
        rel,
        trailing_slash: path.ends_with('/') && path.len() > 1,
    })
}

#[cfg(test)]
mod tests {
    use super::sanitize;

    #[test]
    fn accepts_normal_paths() {
        let p = sanitize("/a/b%20c.html").unwrap();
        assert_eq!(p.rel, "a/b c.html");
        assert!(!p.trailing_slash);
        let p = sanitize("/docs/").unwrap();
        assert_eq!(p.rel, "docs");
        assert!(p.trailing_slash);
        assert_eq!(sanitize("/").unwrap().rel, "");
        assert_eq!(sanitize("//a//b").unwrap().rel, "a/b");
        assert_eq!(
            sanitize("/.well-known/security.txt").unwrap().rel,
            ".well-known/security.txt"
        );
    }

    #[test]
    fn rejects_escapes() {
        for bad in [
            "/../etc/passwd",
            "/a/../../b",
            "/%2e%2e/etc/passwd",
            "/%2E%2E/x",
            "/.%2e/x",
            "/a%2f..%2fb",
            "/a%2Fb",
            "/a\\..\\b",
            "/a%5c..%5cb",
            "/a%00.html",
            "/./a",
            "etc/passwd",
            "*",
            "/%ff",
            "/.env",
            "/.git/config",
            "/a/.htpasswd",
            "/%2egit/HEAD",
        ] {
            assert_eq!(sanitize(bad), None, "{bad}");
        }
    }
}
