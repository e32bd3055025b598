//! Diagnostics that point into a TOML file: one [`Problem`] per mistake, gathered into an
//! [`InvalidFile`] that carries the file's text so miette can show the offending line.

use std::fmt;
use std::ops::Range;
use std::path::Path;

use miette::{Diagnostic, NamedSource, SourceSpan};

/// One mistake in a file: what is wrong, where, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Diagnostic)]
#[error("{message}")]
pub struct Problem {
    message: String,
    #[label("{label}")]
    span: Option<SourceSpan>,
    label: String,
    #[help]
    help: Option<String>,
}

impl Problem {
    /// A problem at `span` (byte range in the file; `None`: the whole file).
    pub(crate) fn new(
        message: impl Into<String>,
        span: Option<Range<usize>>,
        label: impl Into<String>,
    ) -> Self {
        Self {
            message: message.into(),
            span: span.map(SourceSpan::from),
            label: label.into(),
            help: None,
        }
    }

    /// Adds a hint on how to fix it.
    #[must_use]
    pub(crate) fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// What is wrong.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The hint, if any.
    pub fn hint(&self) -> Option<&str> {
        self.help.as_deref()
    }

    /// Byte offset of the offending text in the file, if the problem has a place.
    pub fn offset(&self) -> Option<usize> {
        self.span.map(|s| s.offset())
    }
}

/// A file that could not be accepted, with every problem found in it.
///
/// Renders (through miette) the first problem with the file excerpt, and the others as
/// related diagnostics.
#[derive(Debug, thiserror::Error)]
#[error("{}: {}", self.name, self.problems.first().map_or("invalid", Problem::message))]
pub struct InvalidFile {
    name: String,
    code: NamedSource<String>,
    text: String,
    problems: Vec<Problem>,
}

impl InvalidFile {
    /// Gathers `problems` (at least one) found in `text`, read from `path`.
    pub(crate) fn new(path: &Path, text: &str, problems: Vec<Problem>) -> Self {
        let name = path.display().to_string();
        Self {
            code: NamedSource::new(name.clone(), text.to_owned()),
            name,
            text: text.to_owned(),
            problems,
        }
    }

    /// Every problem, in file order.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// The 1-based line of `problem` in the file (1 when it has no place).
    pub fn line_of(&self, problem: &Problem) -> usize {
        problem
            .offset()
            .map_or(1, |offset| line_of(&self.text, offset))
    }

    /// One line per problem: `file:line: message`, for logs and tests.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for p in &self.problems {
            let line = self.line_of(p);
            out.push_str(&self.name);
            out.push(':');
            out.push_str(&line.to_string());
            out.push_str(": ");
            out.push_str(&p.message);
            out.push('\n');
        }
        out
    }
}

impl Diagnostic for InvalidFile {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        None
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.problems
            .first()?
            .help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(&self.code)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        let first = self.problems.first()?;
        let span = first.span?;
        Some(Box::new(std::iter::once(
            miette::LabeledSpan::new_with_span(Some(first.label.clone()), span),
        )))
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        if self.problems.len() < 2 {
            return None;
        }
        Some(Box::new(
            self.problems[1..].iter().map(|p| p as &dyn Diagnostic),
        ))
    }
}

/// The problem a TOML syntax or type error describes, placed where the parser says.
pub(crate) fn from_toml(err: &toml::de::Error) -> Problem {
    let message = err.message().trim().to_owned();
    let help = if message.starts_with("unknown field") {
        Some("remove the key or fix its spelling; the accepted keys are listed above")
    } else if message.starts_with("missing field") {
        Some("add the required key to this table")
    } else if message.starts_with("invalid type") {
        Some("give the value the type the message asks for")
    } else {
        Some("fix the TOML syntax at the marked place")
    };
    let label = if message.starts_with("unknown field") {
        "unknown key"
    } else {
        "here"
    };
    let problem = Problem::new(message, err.span(), label);
    match help {
        Some(h) => problem.help(h),
        None => problem,
    }
}

/// The 1-based line holding byte `offset` of `text`.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].split(|&b| b == b'\n').count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_of_counts_newlines_before_the_offset() {
        let text = "a = 1\nb = 2\nc = 3\n";
        assert_eq!(line_of(text, 0), 1);
        assert_eq!(line_of(text, 6), 2);
        assert_eq!(line_of(text, 13), 3);
        assert_eq!(line_of(text, 10_000), 4);
    }

    #[test]
    fn invalid_file_summary_names_file_line_and_message() {
        let text = "a = 1\nbad = 2\n";
        let err = InvalidFile::new(
            Path::new("x.toml"),
            text,
            vec![Problem::new("bad key", Some(6..9), "here")],
        );
        assert_eq!(err.summary(), "x.toml:2: bad key\n");
        assert_eq!(err.to_string(), "x.toml: bad key");
    }
}
