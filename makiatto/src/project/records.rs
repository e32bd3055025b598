//! `[[domain.records]]`: record types and the rules for their values.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::names::{self, Kind};

/// Default TTL of a record that does not set one, seconds.
pub const DEFAULT_TTL: u32 = 300;
/// Smallest TTL accepted, seconds.
pub const MIN_TTL: u32 = 60;
/// Largest TTL accepted (one week), seconds.
pub const MAX_TTL: u32 = 604_800;
/// Longest TXT value accepted, bytes (split into 255-byte strings on the wire).
pub const MAX_TXT_LEN: usize = 4096;

/// A DNS record type that `[[domain.records]]` may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum RecordType {
    /// IPv4 address.
    A,
    /// IPv6 address.
    Aaaa,
    /// Alias to another name (never at the apex).
    Cname,
    /// Mail exchanger (needs `priority`).
    Mx,
    /// Text.
    Txt,
    /// Delegation of a subdomain (the apex NS records are automatic).
    Ns,
    /// Service locator (needs `priority`; value `weight port target`).
    Srv,
    /// Certification authority authorisation (value `flags tag "value"`).
    Caa,
}

impl RecordType {
    /// Every accepted type.
    pub const ALL: [RecordType; 8] = [
        Self::A,
        Self::Aaaa,
        Self::Cname,
        Self::Mx,
        Self::Txt,
        Self::Ns,
        Self::Srv,
        Self::Caa,
    ];

    /// The upper-case mnemonic (`AAAA`), as stored in the cluster.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::A => "A",
            Self::Aaaa => "AAAA",
            Self::Cname => "CNAME",
            Self::Mx => "MX",
            Self::Txt => "TXT",
            Self::Ns => "NS",
            Self::Srv => "SRV",
            Self::Caa => "CAA",
        }
    }

    /// Parses a mnemonic, ignoring case.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(text))
    }

    /// Whether records of this type carry a `priority`.
    pub fn has_priority(self) -> bool {
        matches!(self, Self::Mx | Self::Srv)
    }
}

impl fmt::Display for RecordType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A custom DNS record of a domain, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The type.
    pub rtype: RecordType,
    /// Owner name relative to the domain, lower-case; `@` for the apex.
    pub name: String,
    /// Record data in presentation form, normalised (host names lower-case, no final dot).
    pub value: String,
    /// Time to live, seconds.
    pub ttl: u32,
    /// Priority (MX and SRV only).
    pub priority: Option<u16>,
}

/// Why a value is not acceptable, and how to fix it.
pub(crate) struct Rejection {
    pub(crate) message: String,
    pub(crate) help: String,
}

fn reject(message: impl Into<String>, help: impl Into<String>) -> Rejection {
    Rejection {
        message: message.into(),
        help: help.into(),
    }
}

/// Checks the value of a record of type `rtype` at relative owner `name` and returns it
/// normalised.
pub(crate) fn check_value(rtype: RecordType, name: &str, value: &str) -> Result<String, Rejection> {
    match rtype {
        RecordType::A => value
            .parse::<Ipv4Addr>()
            .map(|ip| ip.to_string())
            .map_err(|_| {
                reject(
                    format!("`{value}` is not an IPv4 address"),
                    "an A record holds an IPv4 address such as 192.0.2.10; use AAAA for IPv6",
                )
            }),
        RecordType::Aaaa => value
            .parse::<Ipv6Addr>()
            .map(|ip| ip.to_string())
            .map_err(|_| {
                reject(
                    format!("`{value}` is not an IPv6 address"),
                    "an AAAA record holds an IPv6 address such as 2001:db8::10; use A for IPv4",
                )
            }),
        RecordType::Cname | RecordType::Ns => host(value, rtype),
        RecordType::Mx => {
            if value == "." {
                // RFC 7505 null MX: the domain accepts no mail.
                Ok(".".into())
            } else {
                host(value, rtype)
            }
        }
        RecordType::Txt => txt(value),
        RecordType::Srv => srv(name, value),
        RecordType::Caa => caa(value),
    }
}

fn host(value: &str, rtype: RecordType) -> Result<String, Rejection> {
    let bare = value.strip_suffix('.').unwrap_or(value);
    names::check(bare, Kind::Host).map_err(|why| {
        reject(
            format!("`{value}` is not a host name: {why}"),
            format!("a {rtype} record points at a host name such as mail.example.com"),
        )
    })
}

fn txt(value: &str) -> Result<String, Rejection> {
    if value.len() > MAX_TXT_LEN {
        return Err(reject(
            format!(
                "the TXT value is {} bytes long, over the {MAX_TXT_LEN}-byte limit",
                value.len()
            ),
            "shorten the value; long keys (DKIM) usually fit well under this limit",
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(reject(
            "the TXT value holds a control character (newline, tab...)",
            "write the value on one line; it is split into 255-byte strings automatically",
        ));
    }
    Ok(value.to_owned())
}

fn srv(name: &str, value: &str) -> Result<String, Rejection> {
    let form = "an SRV record is named `_service._proto` (e.g. `_sip._tcp`), sets `priority`, \
                and its value is `weight port target`, e.g. \"5 5060 sip.example.com\"";
    let mut labels = name.split('.');
    let service_ok = labels
        .next()
        .is_some_and(|l| l.len() > 1 && l.starts_with('_'));
    let proto_ok = labels
        .next()
        .is_some_and(|l| l.len() > 1 && l.starts_with('_'));
    if !(service_ok && proto_ok) {
        return Err(reject(
            format!("the SRV name `{name}` is not `_service._proto`"),
            form,
        ));
    }
    let parts: Vec<&str> = value.split_whitespace().collect();
    let [weight, port, target] = parts.as_slice() else {
        return Err(reject(
            format!("`{value}` is not `weight port target`"),
            form,
        ));
    };
    let (Ok(weight), Ok(port)) = (weight.parse::<u16>(), port.parse::<u16>()) else {
        return Err(reject(
            format!("`{value}`: weight and port must be numbers from 0 to 65535"),
            form,
        ));
    };
    let target = if *target == "." {
        ".".to_owned()
    } else {
        host(target, RecordType::Srv)?
    };
    Ok(format!("{weight} {port} {target}"))
}

fn caa(value: &str) -> Result<String, Rejection> {
    let form = "a CAA value is `flags tag \"value\"`, e.g. `0 issue \"letsencrypt.org\"`";
    let mut parts = value.trim().splitn(3, ' ');
    let (Some(flags), Some(tag), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(reject(
            format!("`{value}` is not `flags tag \"value\"`"),
            form,
        ));
    };
    let Ok(flags) = flags.parse::<u8>() else {
        return Err(reject(
            format!("CAA flags `{flags}` is not a number from 0 to 255"),
            form,
        ));
    };
    if tag.is_empty() || tag.len() > 15 || !tag.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(reject(
            format!("CAA tag `{tag}` is not 1 to 15 letters or digits"),
            "the usual tags are issue, issuewild and iodef",
        ));
    }
    let rest = rest.trim();
    if rest.len() < 2
        || !rest.starts_with('"')
        || !rest.ends_with('"')
        || rest[1..rest.len() - 1].contains('"')
    {
        return Err(reject(
            format!("the CAA value {rest} is not one quoted string"),
            form,
        ));
    }
    Ok(format!("{flags} {} {rest}", tag.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(rtype: RecordType, name: &str, value: &str) -> String {
        check_value(rtype, name, value).unwrap_or_else(|r| panic!("{}", r.message))
    }

    fn bad(rtype: RecordType, name: &str, value: &str) -> String {
        match check_value(rtype, name, value) {
            Ok(v) => panic!("{rtype} {value} accepted as {v}"),
            Err(r) => r.message,
        }
    }

    #[test]
    fn types_parse_ignoring_case() {
        assert_eq!(RecordType::parse("aaaa"), Some(RecordType::Aaaa));
        assert_eq!(RecordType::parse("Mx"), Some(RecordType::Mx));
        assert_eq!(RecordType::parse("SOA"), None);
        for t in RecordType::ALL {
            assert_eq!(RecordType::parse(t.as_str()), Some(t));
        }
    }

    #[test]
    fn addresses_match_their_family() {
        assert_eq!(ok(RecordType::A, "www", "192.0.2.1"), "192.0.2.1");
        assert!(bad(RecordType::A, "www", "2001:db8::1").contains("IPv4"));
        assert!(bad(RecordType::A, "www", "192.0.2.256").contains("IPv4"));
        assert_eq!(ok(RecordType::Aaaa, "www", "2001:DB8:0::1"), "2001:db8::1");
        assert!(bad(RecordType::Aaaa, "www", "192.0.2.1").contains("IPv6"));
    }

    #[test]
    fn host_targets_are_normalised() {
        assert_eq!(
            ok(RecordType::Mx, "@", "Mail.Example.com."),
            "mail.example.com"
        );
        assert_eq!(ok(RecordType::Mx, "@", "."), ".");
        assert_eq!(
            ok(RecordType::Cname, "www", "host.example.net"),
            "host.example.net"
        );
        assert!(bad(RecordType::Cname, "www", "not a host").contains("not a host name"));
    }

    #[test]
    fn txt_length_and_control_characters() {
        assert_eq!(ok(RecordType::Txt, "@", "v=spf1 -all"), "v=spf1 -all");
        assert!(bad(RecordType::Txt, "@", &"x".repeat(MAX_TXT_LEN + 1)).contains("limit"));
        assert!(bad(RecordType::Txt, "@", "a\nb").contains("control"));
    }

    #[test]
    fn srv_needs_service_proto_and_three_fields() {
        assert_eq!(
            ok(RecordType::Srv, "_sip._tcp", "5 5060 SIP.example.com"),
            "5 5060 sip.example.com"
        );
        assert!(bad(RecordType::Srv, "sip", "5 5060 sip.example.com").contains("_service._proto"));
        assert!(
            bad(RecordType::Srv, "_sip._tcp", "5060 sip.example.com")
                .contains("weight port target")
        );
        assert!(bad(RecordType::Srv, "_sip._tcp", "5 70000 sip.example.com").contains("65535"));
    }

    #[test]
    fn caa_form() {
        assert_eq!(
            ok(RecordType::Caa, "@", "0 ISSUE \"letsencrypt.org\""),
            "0 issue \"letsencrypt.org\""
        );
        assert!(bad(RecordType::Caa, "@", "0 issue letsencrypt.org").contains("quoted"));
        assert!(bad(RecordType::Caa, "@", "300 issue \"x\"").contains("0 to 255"));
        assert!(bad(RecordType::Caa, "@", "issue").contains("flags tag"));
    }
}
