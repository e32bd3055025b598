use std::fs;

use super::*;

/// A project directory with `dist/index.html`, `dist/api/hello.wasm`, `dist/t.wasm`.
fn project_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("dist/api")).unwrap();
    fs::write(dir.path().join("dist/index.html"), "hi").unwrap();
    fs::write(dir.path().join("dist/api/hello.wasm"), "\0asm").unwrap();
    fs::write(dir.path().join("dist/t.wasm"), "\0asm").unwrap();
    dir
}

fn parse(dir: &tempfile::TempDir, text: &str) -> Result<Project, ProjectError> {
    Project::parse(Path::new("makiatto.toml"), text, dir.path())
}

/// The (line, message, hint) of each problem; panics if the file was accepted.
fn problems(dir: &tempfile::TempDir, text: &str) -> Vec<(usize, String, String)> {
    match parse(dir, text) {
        Ok(p) => panic!("accepted: {p:?}"),
        Err(ProjectError::Invalid(file)) => file
            .problems()
            .iter()
            .map(|p| {
                (
                    file.line_of(p),
                    p.message().to_owned(),
                    p.hint().unwrap_or("").to_owned(),
                )
            })
            .collect(),
        Err(e) => panic!("unexpected error {e}"),
    }
}

/// The single problem of `text`, asserting it sits on `line` and its message holds `needle`.
fn one_problem(text: &str, line: usize, needle: &str) -> String {
    let dir = project_dir();
    let found = problems(&dir, text);
    assert_eq!(found.len(), 1, "{found:?}");
    let (l, message, hint) = &found[0];
    assert_eq!(*l, line, "{message}");
    assert!(message.contains(needle), "`{message}` lacks `{needle}`");
    assert!(!hint.is_empty(), "`{message}` has no hint");
    message.clone()
}

const HEAD: &str = "[[domain]]\nname = \"example.com\"\npath = \"./dist\"\n";

#[test]
fn the_guides_complete_example_parses() {
    let dir = project_dir();
    let text = r#"
[[domain]]
name = "example.com"
path = "./dist"
aliases = ["www.example.com", "old-domain.com"]

[[domain.records]]
type = "TXT"
name = "_dmarc"  # Creates _dmarc.example.com
value = "v=DMARC1; p=none; rua=mailto:dmarc@example.com"

[[domain.records]]
type = "MX"
name = "@"  # @ means the root domain (example.com)
value = "mail.example.com"
ttl = 300
priority = 10

[[domain.functions]]
path = "api/hello.wasm"
methods = ["get", "POST"]
env = { API_KEY = "secret" }
timeout_ms = 500

[[domain.transforms]]
path = "t.wasm"
files = "**/*.html"
max_file_size_kb = 64

[[domain]]
name = "zuccherocat.cafe"
path = "./dist"
"#;
    let project = parse(&dir, text).unwrap();
    assert_eq!(project.domains.len(), 2);
    let d = &project.domains[0];
    assert_eq!(d.name, "example.com");
    assert_eq!(d.dir, dir.path().canonicalize().unwrap().join("dist"));
    assert_eq!(d.aliases, ["www.example.com", "old-domain.com"]);
    assert_eq!(d.records.len(), 2);
    assert_eq!(d.records[0].name, "_dmarc");
    assert_eq!(d.records[0].ttl, records::DEFAULT_TTL);
    assert_eq!(d.records[1].rtype, RecordType::Mx);
    assert_eq!(d.records[1].priority, Some(10));
    assert_eq!(d.functions[0].route, "/api/hello");
    assert_eq!(d.functions[0].methods, ["GET", "POST"]);
    assert_eq!(d.functions[0].env.0["API_KEY"], "secret");
    assert_eq!(format!("{:?}", d.functions[0].env), "{\"API_KEY\"}");
    assert_eq!(d.transforms[0].files, "**/*.html");
    assert_eq!(d.transforms[0].max_file_size_kb, Some(64));
    assert_eq!(
        project.domain("zuccherocat.cafe").unwrap().name,
        "zuccherocat.cafe"
    );
}

#[test]
fn unknown_keys_are_named_with_their_line() {
    let message = one_problem(
        "[[domain]]\nname = \"example.com\"\npth = \"./dist\"\n",
        3,
        "pth",
    );
    assert!(message.contains("unknown field"), "{message}");
    one_problem(
        &format!(
            "{HEAD}[[domain.records]]\ntype = \"A\"\nname = \"x\"\nvalue = \"192.0.2.1\"\nweight = 1\n"
        ),
        8,
        "weight",
    );
}

#[test]
fn wrong_types_and_missing_keys_are_reported() {
    one_problem("[[domain]]\nname = 42\npath = \"./dist\"\n", 2, "string");
    let dir = project_dir();
    let found = problems(&dir, "[[domain]]\nname = \"example.com\"\n");
    assert!(found[0].1.contains("path"), "{found:?}");
}

#[test]
fn syntax_errors_point_at_the_line() {
    one_problem(
        "[[domain]]\nname = \"example.com\"\npath = \"./dist\n",
        3,
        "",
    );
}

#[test]
fn subdomains_and_public_suffixes_are_not_root_domains() {
    let m = one_problem(
        "[[domain]]\nname = \"blog.example.com\"\npath = \"./dist\"\n",
        2,
        "subdomain of `example.com`",
    );
    assert!(m.contains("blog.example.com"));
    one_problem(
        "[[domain]]\nname = \"blog.example.co.uk\"\npath = \"./dist\"\n",
        2,
        "subdomain of `example.co.uk`",
    );
    one_problem(
        "[[domain]]\nname = \"co.uk\"\npath = \"./dist\"\n",
        2,
        "public suffix",
    );
    one_problem(
        "[[domain]]\nname = \"exa mple.com\"\npath = \"./dist\"\n",
        2,
        "not a domain name",
    );
}

#[test]
fn a_domain_or_alias_declared_twice_is_rejected() {
    one_problem(&format!("{HEAD}{HEAD}"), 5, "declared twice");
    one_problem(
        "[[domain]]\nname = \"example.com\"\npath = \"./dist\"\naliases = [\"www.example.com\", \"WWW.example.com\"]\n",
        4,
        "declared twice",
    );
}

#[test]
fn empty_file_is_rejected() {
    one_problem("", 1, "no [[domain]]");
}

#[test]
fn record_values_are_checked_per_type() {
    let rec = |t: &str, name: &str, value: &str, extra: &str| {
        format!(
            "{HEAD}[[domain.records]]\ntype = \"{t}\"\nname = \"{name}\"\nvalue = \"{value}\"\n{extra}"
        )
    };
    one_problem(&rec("A", "api", "2001:db8::1", ""), 7, "IPv4");
    one_problem(&rec("AAAA", "api", "192.0.2.1", ""), 7, "IPv6");
    one_problem(
        &rec("MX", "@", "mail.example.com", ""),
        5,
        "needs a priority",
    );
    one_problem(
        &rec("TXT", "@", "x", "priority = 1\n"),
        8,
        "has no priority",
    );
    one_problem(&rec("CNAME", "@", "elsewhere.net", ""), 6, "apex");
    one_problem(&rec("A", "@", "192.0.2.1", ""), 6, "apex");
    one_problem(&rec("NS", "@", "ns.other.net", ""), 6, "apex");
    one_problem(&rec("SOA", "@", "x", ""), 5, "not a record type");
    one_problem(&rec("TXT", "@", &"x".repeat(5000), ""), 7, "limit");
    one_problem(
        &rec("SRV", "sip", "5 5060 sip.example.com", "priority = 1\n"),
        7,
        "_service._proto",
    );
    one_problem(&rec("CAA", "@", "0 issue letsencrypt.org", ""), 7, "quoted");
    one_problem(
        &rec("MX", "@", "mail.example.com", "priority = 70000\n"),
        8,
        "out of range",
    );
    one_problem(&rec("TXT", "@", "x", "ttl = 5\n"), 8, "ttl 5");
    one_problem(
        &rec("TXT", "www.example.org.", "x", ""),
        6,
        "outside example.com",
    );
    one_problem(&rec("TXT", "bad name", "x", ""), 6, "not a record name");
}

#[test]
fn record_names_are_made_relative() {
    let dir = project_dir();
    let text = format!(
        "{HEAD}[[domain.records]]\ntype = \"TXT\"\nname = \"_x.Example.com.\"\nvalue = \"a\"\n\
         [[domain.records]]\ntype = \"CAA\"\nname = \"example.com\"\nvalue = '0 issue \"letsencrypt.org\"'\n\
         [[domain.records]]\ntype = \"SRV\"\nname = \"_sip._tcp\"\nvalue = \"5 5060 sip.example.com\"\npriority = 10\n"
    );
    let project = parse(&dir, &text).unwrap();
    let names: Vec<&str> = project.domains[0]
        .records
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(names, ["_x", "@", "_sip._tcp"]);
}

#[test]
fn cname_excludes_other_records_and_duplicates_are_rejected() {
    let two =
        |a: &str, b: &str| format!("{HEAD}[[domain.records]]\n{a}\n[[domain.records]]\n{b}\n");
    one_problem(
        &two(
            "type = \"CNAME\"\nname = \"shop\"\nvalue = \"x.net\"",
            "type = \"TXT\"\nname = \"shop\"\nvalue = \"v\"",
        ),
        10,
        "CNAME and a TXT",
    );
    one_problem(
        &two(
            "type = \"TXT\"\nname = \"a\"\nvalue = \"v\"",
            "type = \"TXT\"\nname = \"a\"\nvalue = \"v\"",
        ),
        8,
        "declared twice",
    );
}

#[test]
fn all_problems_of_a_file_are_reported_in_order() {
    let dir = project_dir();
    let text = format!(
        "{HEAD}aliases = [\"bad alias\"]\n[[domain.records]]\ntype = \"A\"\nname = \"x\"\nvalue = \"nope\"\n"
    );
    let found = problems(&dir, &text);
    let lines: Vec<usize> = found.iter().map(|p| p.0).collect();
    assert_eq!(lines, [4, 8], "{found:?}");
}

#[test]
fn domain_paths_must_exist_and_stay_inside_the_project() {
    one_problem(
        "[[domain]]\nname = \"example.com\"\npath = \"./missing\"\n",
        3,
        "does not exist",
    );
    one_problem(
        "[[domain]]\nname = \"example.com\"\npath = \"../dist\"\n",
        3,
        "..",
    );
    one_problem(
        "[[domain]]\nname = \"example.com\"\npath = \"/etc\"\n",
        3,
        "absolute",
    );
    one_problem(
        "[[domain]]\nname = \"example.com\"\npath = \"./dist/index.html\"\n",
        3,
        "not a directory",
    );
    one_problem(
        "[[domain]]\nname = \"example.com\"\npath = \".\"\n",
        3,
        "project directory",
    );
}

#[cfg(unix)]
#[test]
fn symlinks_leading_outside_are_rejected() {
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("evil.wasm"), "\0asm").unwrap();
    let dir = project_dir();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("site")).unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("evil.wasm"),
        dir.path().join("dist/evil.wasm"),
    )
    .unwrap();
    let found = problems(
        &dir,
        "[[domain]]\nname = \"example.com\"\npath = \"./site\"\n",
    );
    assert!(found[0].1.contains("outside"), "{found:?}");
    let found = problems(
        &dir,
        &format!("{HEAD}[[domain.functions]]\npath = \"evil.wasm\"\n"),
    );
    assert_eq!(found[0].0, 5);
    assert!(
        found[0].1.contains("outside the domain directory"),
        "{found:?}"
    );
    // A link that stays inside is fine.
    std::os::unix::fs::symlink(dir.path().join("dist"), dir.path().join("public")).unwrap();
    assert!(
        parse(
            &dir,
            "[[domain]]\nname = \"example.com\"\npath = \"public\"\n"
        )
        .is_ok()
    );
}

#[test]
fn function_and_transform_paths_are_checked() {
    one_problem(
        &format!("{HEAD}[[domain.functions]]\npath = \"index.html\"\n"),
        5,
        ".wasm",
    );
    one_problem(
        &format!("{HEAD}[[domain.functions]]\npath = \"nope.wasm\"\n"),
        5,
        "does not exist",
    );
    one_problem(
        &format!("{HEAD}[[domain.functions]]\npath = \"../makiatto.toml\"\n"),
        5,
        "..",
    );
    one_problem(
        &format!(
            "{HEAD}[[domain.functions]]\npath = \"api/hello.wasm\"\n[[domain.functions]]\npath = \"./api/hello.wasm\"\n"
        ),
        7,
        "route /api/hello",
    );
    one_problem(
        &format!("{HEAD}[[domain.functions]]\npath = \"t.wasm\"\nmethods = [\"FETCH\"]\n"),
        6,
        "HTTP method",
    );
    one_problem(
        &format!("{HEAD}[[domain.functions]]\npath = \"t.wasm\"\ntimeout_ms = 0\n"),
        6,
        "timeout_ms",
    );
    one_problem(
        &format!("{HEAD}[[domain.transforms]]\npath = \"t.wasm\"\nfiles = \"**/*.{{html\"\n"),
        6,
        "glob",
    );
    one_problem(
        &format!("{HEAD}[[domain.transforms]]\npath = \"t.wasm\"\n"),
        4,
        "files",
    );
}

#[test]
fn env_files_merge_under_env_and_must_not_be_published() {
    let dir = project_dir();
    fs::write(
        dir.path().join("fn.env"),
        "# secrets\nexport A=1\nB=\"two\"\n",
    )
    .unwrap();
    fs::write(dir.path().join("dist/public.env"), "A=1\n").unwrap();
    fs::write(dir.path().join("bad.env"), "A=1\nnot a pair\n").unwrap();
    let text = format!(
        "{HEAD}[[domain.functions]]\npath = \"t.wasm\"\nenv_file = \"fn.env\"\nenv = {{ B = \"three\" }}\n"
    );
    let project = parse(&dir, &text).unwrap();
    let env = &project.domains[0].functions[0].env.0;
    assert_eq!(env["A"], "1");
    assert_eq!(env["B"], "three");
    let found = problems(
        &dir,
        &format!("{HEAD}[[domain.functions]]\npath = \"t.wasm\"\nenv_file = \"dist/public.env\"\n"),
    );
    assert!(found[0].1.contains("published"), "{found:?}");
    let found = problems(
        &dir,
        &format!("{HEAD}[[domain.functions]]\npath = \"t.wasm\"\nenv_file = \"bad.env\"\n"),
    );
    assert!(found[0].1.contains("line 2"), "{found:?}");
}

#[test]
fn load_reads_relative_to_the_files_directory() {
    let dir = project_dir();
    fs::write(dir.path().join(FILE_NAME), HEAD).unwrap();
    let project = Project::load(&dir.path().join(FILE_NAME)).unwrap();
    assert_eq!(project.dir, dir.path().canonicalize().unwrap());
    let err = Project::load(&dir.path().join("nope.toml")).unwrap_err();
    assert!(matches!(err, ProjectError::Read { .. }));
}

mod props {
    use proptest::prelude::*;

    use super::*;

    fn config() -> ProptestConfig {
        ProptestConfig {
            cases: 256,
            ..ProptestConfig::default()
        }
    }

    proptest! {
        #![proptest_config(config())]

        /// Any text is accepted or rejected with problems, never a panic; every problem
        /// with a place points inside the text.
        #[test]
        fn parse_does_not_panic_on_any_text(text in "\\PC{0,200}") {
            let dir = project_dir();
            if let Err(ProjectError::Invalid(file)) = parse(&dir, &text) {
                prop_assert!(!file.problems().is_empty());
                for p in file.problems() {
                    prop_assert!(p.offset().unwrap_or(0) <= text.len());
                }
            }
        }

        /// Arbitrary record fields inside a valid file: never a panic, and an accepted
        /// record has a known type and a TTL in bounds.
        #[test]
        fn records_do_not_panic(
            rtype in "[A-Za-z]{0,6}",
            name in "[@*_a-zA-Z0-9.\\- ]{0,30}",
            value in "\\PC{0,60}",
            ttl in proptest::option::of(any::<i64>()),
            priority in proptest::option::of(any::<i64>()),
        ) {
            let mut text = format!("{HEAD}[[domain.records]]\ntype = {rtype:?}\nname = {name:?}\nvalue = {value:?}\n");
            text += &ttl.map(|t| format!("ttl = {t}\n")).unwrap_or_default();
            text += &priority.map(|p| format!("priority = {p}\n")).unwrap_or_default();
            let dir = project_dir();
            if let Ok(project) = parse(&dir, &text) {
                let r = &project.domains[0].records[0];
                prop_assert!(RecordType::parse(&rtype) == Some(r.rtype));
                prop_assert!((records::MIN_TTL..=records::MAX_TTL).contains(&r.ttl));
                prop_assert_eq!(r.priority.is_some(), r.rtype.has_priority());
            }
        }
    }
}
