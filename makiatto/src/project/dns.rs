//! Checks of `[[domain.records]]`: owner names, types, values, TTLs, priorities, and
//! conflicts between records.

use std::ops::Range;

use super::Checker;
use super::names::{self, Kind};
use super::raw::RawRecord;
use super::records::{self, Record, RecordType};
use crate::diag::Problem;

impl Checker<'_> {
    pub(super) fn records(
        &mut self,
        domain: &str,
        aliases: &[String],
        raw: Vec<toml::Spanned<RawRecord>>,
    ) -> Vec<Record> {
        let mut out: Vec<Record> = Vec::new();
        for spanned in raw {
            let table_span = spanned.span();
            let r = spanned.into_inner();
            if let Some(record) = self.record(domain, aliases, &r) {
                let name_span = r.name.span();
                let clash = out.iter().find(|o| {
                    o.name == record.name
                        && (o.rtype == RecordType::Cname || record.rtype == RecordType::Cname)
                });
                if let Some(other) = clash {
                    self.push(
                        Problem::new(
                            format!("`{}` has a CNAME and a {} record", record.name, if other.rtype == RecordType::Cname { record.rtype } else { other.rtype }),
                            Some(name_span),
                            "conflicts with another record",
                        )
                        .help("a name with a CNAME can hold no other record (RFC 1034); point the CNAME elsewhere or drop it"),
                    );
                } else if out.iter().any(|o| {
                    o.rtype == record.rtype && o.name == record.name && o.value == record.value
                }) {
                    self.push(
                        Problem::new(
                            format!(
                                "the {} record `{}` → `{}` is declared twice",
                                record.rtype, record.name, record.value
                            ),
                            Some(table_span),
                            "duplicate",
                        )
                        .help("remove one of them"),
                    );
                } else {
                    out.push(record);
                }
            }
        }
        out
    }

    fn record(&mut self, domain: &str, aliases: &[String], r: &RawRecord) -> Option<Record> {
        let type_text = r.rtype.get_ref();
        let Some(rtype) = RecordType::parse(type_text) else {
            let all: Vec<&str> = RecordType::ALL.iter().map(|t| t.as_str()).collect();
            self.push(
                Problem::new(
                    format!("`{type_text}` is not a record type Makiatto serves"),
                    Some(r.rtype.span()),
                    "unknown type",
                )
                .help(format!(
                    "use one of {} (SOA and the apex NS, A and AAAA are automatic)",
                    all.join(", ")
                )),
            );
            return None;
        };
        let name = self.owner(domain, r.name.get_ref(), r.name.span())?;
        let fqdn = if name == "@" {
            domain.to_owned()
        } else {
            format!("{name}.{domain}")
        };
        let span = r.name.span();
        if name == "@" {
            let automatic = match rtype {
                RecordType::A | RecordType::Aaaa => Some(
                    "the apex A and AAAA records are automatic: GeoDNS answers with the nearest node",
                ),
                RecordType::Ns => {
                    Some("the apex NS records are automatic: one per nameserver node")
                }
                RecordType::Cname => Some(
                    "a CNAME cannot sit at the apex, where SOA and NS live (RFC 1034); use an alias instead",
                ),
                _ => None,
            };
            if let Some(why) = automatic {
                self.push(
                    Problem::new(
                        format!("a {rtype} record cannot be set at the apex (`@`)"),
                        Some(span),
                        "at the apex",
                    )
                    .help(why),
                );
                return None;
            }
        }
        if fqdn.len() > names::MAX_NAME_LEN {
            self.push(Problem::new(
                format!("`{fqdn}` is longer than {} characters", names::MAX_NAME_LEN),
                Some(span),
                "too long",
            ));
            return None;
        }
        if matches!(rtype, RecordType::A | RecordType::Aaaa | RecordType::Cname)
            && aliases.contains(&fqdn)
        {
            self.push(
                Problem::new(
                    format!("`{fqdn}` is an alias of {domain}, which Makiatto answers itself"),
                    Some(span),
                    "alias",
                )
                .help("drop the record, or remove the name from aliases"),
            );
            return None;
        }
        let value = match records::check_value(rtype, &name, r.value.get_ref()) {
            Ok(v) => v,
            Err(rej) => {
                self.push(
                    Problem::new(
                        rej.message,
                        Some(r.value.span()),
                        format!("invalid {rtype} value"),
                    )
                    .help(rej.help),
                );
                return None;
            }
        };
        let ttl = match &r.ttl {
            None => records::DEFAULT_TTL,
            Some(t) => match u32::try_from(*t.get_ref()) {
                Ok(v) if (records::MIN_TTL..=records::MAX_TTL).contains(&v) => v,
                _ => {
                    self.push(
                        Problem::new(
                            format!("ttl {} is out of range", t.get_ref()),
                            Some(t.span()),
                            "out of range",
                        )
                        .help(format!(
                            "a ttl is from {} to {} seconds (default {})",
                            records::MIN_TTL,
                            records::MAX_TTL,
                            records::DEFAULT_TTL
                        )),
                    );
                    return None;
                }
            },
        };
        let priority = match (&r.priority, rtype.has_priority()) {
            (None, false) => None,
            (None, true) => {
                self.push(
                    Problem::new(
                        format!("a {rtype} record needs a priority"),
                        Some(r.rtype.span()),
                        "priority missing",
                    )
                    .help("add priority = 10 (lower is preferred), from 0 to 65535"),
                );
                return None;
            }
            (Some(p), false) => {
                self.push(
                    Problem::new(
                        format!("a {rtype} record has no priority"),
                        Some(p.span()),
                        "not allowed here",
                    )
                    .help("priority applies to MX and SRV records only; remove it"),
                );
                return None;
            }
            (Some(p), true) => {
                if let Ok(v) = u16::try_from(*p.get_ref()) {
                    Some(v)
                } else {
                    self.push(
                        Problem::new(
                            format!("priority {} is out of range", p.get_ref()),
                            Some(p.span()),
                            "out of range",
                        )
                        .help("a priority is from 0 to 65535"),
                    );
                    return None;
                }
            }
        };
        Some(Record {
            rtype,
            name,
            value,
            ttl,
            priority,
        })
    }

    /// A record's owner name, relative to the domain (`@` for the apex).
    fn owner(&mut self, domain: &str, text: &str, span: Range<usize>) -> Option<String> {
        if text == "@" {
            return Some("@".into());
        }
        let absolute = text.ends_with('.');
        let bare = text.strip_suffix('.').unwrap_or(text);
        let name = match names::check(bare, Kind::Owner) {
            Ok(n) => n,
            Err(why) => {
                self.push(
                    Problem::new(format!("`{text}` is not a record name: {why}"), Some(span), "invalid name")
                        .help(format!("names are relative to {domain}: `_dmarc` means _dmarc.{domain}; `@` is {domain} itself")),
                );
                return None;
            }
        };
        if names::is_within(&name, domain) {
            let rel = name
                .strip_suffix(domain)
                .unwrap_or("")
                .trim_end_matches('.');
            return Some(if rel.is_empty() {
                "@".into()
            } else {
                rel.to_owned()
            });
        }
        if absolute {
            self.push(
                Problem::new(format!("`{text}` is outside {domain}"), Some(span), "outside the domain")
                    .help(format!("a domain can only hold records for names under it; write `www` for www.{domain}")),
            );
            return None;
        }
        Some(name)
    }
}
