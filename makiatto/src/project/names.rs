//! Host and domain name rules for makiatto.toml.

/// Longest DNS name in presentation form, without the trailing dot (RFC 1035).
pub(crate) const MAX_NAME_LEN: usize = 253;
/// Longest DNS label (RFC 1035).
const MAX_LABEL_LEN: usize = 63;

/// Which extra characters a name may hold besides letters, digits and hyphens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A host name: letters, digits and hyphens only (domains, aliases, record targets).
    Host,
    /// A record owner name: labels may also hold `_` (`_dmarc`, `_sip._tcp`), and the first
    /// label may be `*` (wildcard).
    Owner,
}

/// Checks `name` (already without a trailing dot) and returns it lower-cased, or why it is
/// not a valid name.
pub(crate) fn check(name: &str, kind: Kind) -> Result<String, String> {
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if !name.is_ascii() {
        return Err("the name holds non-ASCII characters (write IDNs in punycode, xn--…)".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("the name is longer than {MAX_NAME_LEN} characters"));
    }
    for (i, label) in name.split('.').enumerate() {
        if label.is_empty() {
            return Err("the name has an empty label (two dots in a row, or a leading dot)".into());
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(format!(
                "the label `{label}` is longer than {MAX_LABEL_LEN} characters"
            ));
        }
        if kind == Kind::Owner && i == 0 && label == "*" {
            continue;
        }
        let allowed =
            |c: char| c.is_ascii_alphanumeric() || c == '-' || (kind == Kind::Owner && c == '_');
        if let Some(bad) = label.chars().find(|&c| !allowed(c)) {
            return Err(format!("the label `{label}` holds the character `{bad}`"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("the label `{label}` starts or ends with a hyphen"));
        }
    }
    Ok(name.to_ascii_lowercase())
}

/// The registrable domain (public suffix plus one label) of a valid lower-case `name`,
/// from the compiled-in Public Suffix List; `None` when `name` is itself a public suffix.
pub(crate) fn registrable(name: &str) -> Option<&str> {
    psl::domain_str(name)
}

/// True when `name` equals `zone` or lies under it.
pub(crate) fn is_within(name: &str, zone: &str) -> bool {
    name == zone
        || name
            .strip_suffix(zone)
            .is_some_and(|head| head.ends_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_lower_cased_and_checked() {
        assert_eq!(check("Example.COM", Kind::Host).unwrap(), "example.com");
        assert!(check("exa_mple.com", Kind::Host).is_err());
        assert!(check("-a.com", Kind::Host).is_err());
        assert!(check("a..com", Kind::Host).is_err());
        assert!(check("*.a.com", Kind::Host).is_err());
        assert!(
            check("bücher.de", Kind::Host)
                .unwrap_err()
                .contains("punycode")
        );
        assert!(check(&format!("{}.com", "a".repeat(64)), Kind::Host).is_err());
        assert!(check("a.".repeat(128).trim_end_matches('.'), Kind::Host).is_err());
    }

    #[test]
    fn owner_names_allow_underscores_and_a_leading_wildcard() {
        assert_eq!(check("_dmarc", Kind::Owner).unwrap(), "_dmarc");
        assert_eq!(check("*.dev", Kind::Owner).unwrap(), "*.dev");
        assert!(check("dev.*", Kind::Owner).is_err());
    }

    #[test]
    fn registrable_domain_follows_the_public_suffix_list() {
        assert_eq!(registrable("example.com"), Some("example.com"));
        assert_eq!(registrable("blog.example.com"), Some("example.com"));
        assert_eq!(registrable("example.co.uk"), Some("example.co.uk"));
        assert_eq!(registrable("shop.example.co.uk"), Some("example.co.uk"));
        assert_eq!(registrable("co.uk"), None);
    }

    #[test]
    fn within_means_equal_or_under_a_label_boundary() {
        assert!(is_within("example.com", "example.com"));
        assert!(is_within("a.example.com", "example.com"));
        assert!(!is_within("badexample.com", "example.com"));
        assert!(!is_within("example.org", "example.com"));
    }
}
