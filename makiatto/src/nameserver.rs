//! `maki dns nameserver-setup`: the registrar steps (glue records, then nameservers) for
//! each domain, from the profile's nameserver machines.

use std::fmt::Write;

use miette::Diagnostic;

use crate::profile::Profile;
use crate::project::Project;

/// Why the instructions cannot be written.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[non_exhaustive]
pub enum NameserverError {
    /// The profile has no nameserver machine.
    #[error("the profile has no nameserver machine")]
    #[diagnostic(help(
        "add machines with `maki machine init <name> <user>@<ip>`, or set is_nameserver = true on one"
    ))]
    NoNameservers,
    /// No domain was given.
    #[error("no domain to set up")]
    #[diagnostic(help("declare a [[domain]] in makiatto.toml"))]
    NoDomains,
}

/// The instructions for every domain of `project`.
pub fn for_project(profile: &Profile, project: &Project) -> Result<String, NameserverError> {
    let domains: Vec<&str> = project.domains.iter().map(|d| d.name.as_str()).collect();
    instructions(profile, &domains)
}

/// The instructions, as the user guide shows them, for `domains`.
pub fn instructions(profile: &Profile, domains: &[&str]) -> Result<String, NameserverError> {
    let ns: Vec<_> = profile.nameservers().collect();
    if ns.is_empty() {
        return Err(NameserverError::NoNameservers);
    }
    if domains.is_empty() {
        return Err(NameserverError::NoDomains);
    }
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "Follow these steps to configure your custom nameservers:\n"
    );
    let _ = writeln!(
        out,
        ":: Step 1: Add glue records to your domain registrar\n"
    );
    let _ = writeln!(
        out,
        "Glue records tell the internet where to find your nameservers when they're subdomains of your own domain.\n\
         Without them, there's a circular dependency: DNS can't find your nameservers to resolve your domain.\n\
         Add these as glue records (also called 'name server records' or 'host records') in your domain registrar's control panel.\n"
    );
    for domain in domains {
        let _ = writeln!(out, ":: Glue records for {domain}:\n");
        for m in &ns {
            let addrs = match m.ipv6 {
                Some(v6) => format!("{}, {v6}", m.ipv4),
                None => m.ipv4.to_string(),
            };
            let _ = writeln!(out, "  {}.ns.{domain}: {addrs}", m.name);
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        ":: Step 2: Set your domain to use your custom nameservers\n"
    );
    let _ = writeln!(
        out,
        "After adding glue records, you must also tell your registrar to use your custom nameservers instead of their defaults.\n\
         In your domain registrar's control panel, change the nameservers for your domain to:\n"
    );
    for domain in domains {
        let _ = writeln!(out, ":: Nameservers for {domain}:\n");
        for m in &ns {
            let _ = writeln!(out, "  {}.ns.{domain}", m.name);
        }
        out.push('\n');
    }
    let _ = writeln!(out, ":: Step 3: Testing and verification");
    let _ = writeln!(out, "After configuration, test your setup with:\n");
    for domain in domains {
        let _ = writeln!(out, "  dig @{}.ns.{domain} {domain}", ns[0].name);
    }
    let _ = writeln!(
        out,
        "\nNote: DNS changes may take 24-48 hours to propagate globally."
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Machine;

    fn machine(name: &str, v4: &str, v6: Option<&str>, ns: bool) -> Machine {
        Machine {
            name: name.into(),
            ssh_target: format!("root@{v4}"),
            ssh_port: 22,
            is_nameserver: ns,
            wg_public_key: String::new(),
            wg_address: None,
            ipv4: v4.parse().unwrap(),
            ipv6: v6.map(|v| v.parse().unwrap()),
            latitude: None,
            longitude: None,
        }
    }

    #[test]
    fn matches_the_guides_example() {
        let profile = Profile {
            machines: vec![
                machine("vector", "203.0.113.1", Some("2001:db8::1"), true),
                machine("klukai", "198.51.100.1", Some("2001:db8::2"), true),
                machine("tololo", "192.0.2.1", Some("2001:db8::3"), true),
                machine("edge", "192.0.2.9", None, false),
            ],
        };
        let text = instructions(&profile, &["example.com"]).unwrap();
        assert!(text.contains(
            ":: Glue records for example.com:\n\n  vector.ns.example.com: 203.0.113.1, 2001:db8::1\n  \
             klukai.ns.example.com: 198.51.100.1, 2001:db8::2\n  tololo.ns.example.com: 192.0.2.1, 2001:db8::3\n"
        ), "{text}");
        assert!(text.contains(
            ":: Nameservers for example.com:\n\n  vector.ns.example.com\n  klukai.ns.example.com\n  tololo.ns.example.com\n"
        ), "{text}");
        assert!(text.contains("  dig @vector.ns.example.com example.com\n"));
        assert!(!text.contains("edge"), "non-nameservers are left out");
    }

    #[test]
    fn ipv4_only_machines_and_errors() {
        let profile = Profile {
            machines: vec![machine("a", "192.0.2.1", None, true)],
        };
        let text = instructions(&profile, &["x.org", "y.org"]).unwrap();
        assert!(text.contains("  a.ns.x.org: 192.0.2.1\n"));
        assert!(text.contains("  a.ns.y.org: 192.0.2.1\n"));
        assert!(matches!(
            instructions(&Profile::default(), &["x.org"]),
            Err(NameserverError::NoNameservers)
        ));
        assert!(matches!(
            instructions(&profile, &[]),
            Err(NameserverError::NoDomains)
        ));
    }
}
