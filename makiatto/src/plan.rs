//! What `maki sync` would deploy: per domain, the manifest and the configuration, checked
//! locally. `maki sync --dry-run` prints it; the deploy client uploads it.

use std::fmt;

use miette::Diagnostic;

use crate::manifest::{self, Manifest, ManifestError};
use crate::project::{Domain, Project};

/// The deployments `maki sync` would create.
#[derive(Debug, Clone)]
pub struct Plan {
    /// One per domain, in file order.
    pub domains: Vec<DomainPlan>,
}

/// One domain's deployment.
#[derive(Debug, Clone)]
pub struct DomainPlan {
    /// The validated domain.
    pub domain: Domain,
    /// Its files.
    pub manifest: Manifest,
}

/// Why a plan could not be made.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[non_exhaustive]
pub enum PlanError {
    /// A domain directory could not be turned into a manifest.
    #[error("cannot deploy {domain}")]
    Manifest {
        /// The domain.
        domain: String,
        /// The cause.
        #[source]
        #[diagnostic_source]
        source: ManifestError,
    },
}

impl Plan {
    /// Builds every domain's manifest (in parallel inside each domain). `progress` receives
    /// the domain name and its hashing progress.
    pub fn build(
        project: &Project,
        options: &manifest::Options,
        progress: &(dyn Fn(&str, manifest::Progress) + Sync),
    ) -> Result<Self, PlanError> {
        let mut domains = Vec::new();
        for domain in &project.domains {
            let manifest = Manifest::build(&domain.dir, options, &|p| progress(&domain.name, p))
                .map_err(|source| PlanError::Manifest {
                    domain: domain.name.clone(),
                    source,
                })?;
            domains.push(DomainPlan {
                domain: domain.clone(),
                manifest,
            });
        }
        Ok(Self { domains })
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.domains {
            let m = &d.manifest;
            let digest = m.digest().to_string();
            writeln!(
                f,
                "{}  {}  {} files, {}, manifest {}",
                d.domain.name,
                d.domain.path,
                m.len(),
                human_bytes(m.total_bytes()),
                &digest[..12]
            )?;
            if !d.domain.aliases.is_empty() {
                writeln!(f, "  aliases: {}", d.domain.aliases.join(", "))?;
            }
            for r in &d.domain.records {
                let prio = r.priority.map(|p| format!(" {p}")).unwrap_or_default();
                writeln!(
                    f,
                    "  record: {} {}{prio} {} (ttl {})",
                    r.name, r.rtype, r.value, r.ttl
                )?;
            }
            for func in &d.domain.functions {
                writeln!(f, "  function: {} -> {}", func.route, func.path)?;
            }
            for t in &d.domain.transforms {
                writeln!(f, "  transform: {} on {}", t.path, t.files)?;
            }
        }
        Ok(())
    }
}

/// `1.5 KiB`-style sizes.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn human_bytes_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
    }

    #[test]
    fn plan_lists_each_domain_with_its_manifest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a")).unwrap();
        std::fs::create_dir_all(dir.path().join("b")).unwrap();
        std::fs::write(dir.path().join("a/index.html"), "aaaa").unwrap();
        std::fs::write(dir.path().join("b/index.html"), "bb").unwrap();
        std::fs::write(dir.path().join("b/x.css"), "b").unwrap();
        let text = "[[domain]]\nname = \"example.com\"\npath = \"a\"\naliases = [\"www.example.com\"]\n\
                    [[domain]]\nname = \"example.org\"\npath = \"b\"\n";
        let project = Project::parse(Path::new("makiatto.toml"), text, dir.path()).unwrap();
        let plan = Plan::build(&project, &manifest::Options::default(), &|_, _| {}).unwrap();
        assert_eq!(plan.domains[0].manifest.len(), 1);
        assert_eq!(plan.domains[1].manifest.total_bytes(), 3);
        let shown = plan.to_string();
        assert!(shown.contains("example.com  a  1 files, 4 B"), "{shown}");
        assert!(shown.contains("  aliases: www.example.com"), "{shown}");
        assert!(shown.contains("example.org  b  2 files, 3 B"), "{shown}");
    }
}
