//! Errors that a tired volunteer can act on: file, line, column, field, what is wrong, how to
//! fix it, with the offending line quoted. All problems of a file are collected and reported
//! together. Warnings have the same shape: a file that works, but not as one may expect.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem in an input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based line and column (in characters) of the start of the offending text.
    pub line: usize,
    pub column: usize,
    /// The field, named as the user wrote it, e.g. `machines[lameere-mixer].mac`.
    pub field: String,
    pub message: String,
    pub help: Option<String>,
    /// A warning does not stop the file from being used.
    pub warning: bool,
    /// The source line, quoted under the message, and the span to underline within it.
    snippet: Option<(String, Range<usize>)>,
}

impl Diagnostic {
    /// A problem that concerns a whole file rather than a place in it.
    pub fn file_level(file: &Path, message: impl Into<String>, help: Option<String>) -> Self {
        Diagnostic {
            file: file.to_path_buf(),
            line: 0,
            column: 0,
            field: String::new(),
            message: message.into(),
            help,
            warning: false,
            snippet: None,
        }
    }
}

impl Diagnostic {
    /// Drops the quoted source line: for lines that hold something that must not be echoed.
    pub fn without_snippet(mut self) -> Self {
        self.snippet = None;
        self
    }

    pub fn into_warning(mut self) -> Self {
        self.warning = true;
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        let kind = if self.warning { "warning" } else { "error" };
        if self.line == 0 {
            write!(f, "{kind}: {file}: {}", self.message)?;
        } else if self.field.is_empty() {
            write!(
                f,
                "{kind}: {file}:{}:{}: {}",
                self.line, self.column, self.message
            )?;
        } else {
            write!(
                f,
                "{kind}: {file}:{}:{}: {}: {}",
                self.line, self.column, self.field, self.message
            )?;
        }
        if let Some((text, underline)) = &self.snippet {
            let number = self.line.to_string();
            let pad = " ".repeat(number.len());
            let lead = " ".repeat(text[..underline.start].chars().count());
            let marks = "^".repeat(text[underline.clone()].chars().count().max(1));
            write!(f, "\n{pad} |\n{number} | {text}\n{pad} | {lead}{marks}")?;
        }
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// All problems found in one run, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.0.push(diagnostic);
    }

    pub fn extend(&mut self, other: Diagnostics) {
        self.0.extend(other.0);
    }

    /// Sorts by position and drops exact repeats, so output is stable and readable.
    pub fn finish(mut self) -> Self {
        self.0.sort_by(|a, b| {
            (&a.file, a.line, a.column, &a.message).cmp(&(&b.file, b.line, b.column, &b.message))
        });
        self.0.dedup();
        self
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for diagnostic in &self.0 {
            writeln!(f, "{diagnostic}\n")?;
        }
        let n = self.0.len();
        write!(f, "{n} error{} found", if n == 1 { "" } else { "s" })
    }
}

impl std::error::Error for Diagnostics {}

/// Turns byte offsets of one source file into located diagnostics.
pub struct SourceFile<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

impl SourceFile<'_> {
    pub fn error(
        &self,
        span: Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
        help: Option<String>,
    ) -> Diagnostic {
        let start = span.start.min(self.text.len());
        let line_start = self.text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[start..]
            .find('\n')
            .map_or(self.text.len(), |i| start + i);
        let line = self.text[..start].matches('\n').count() + 1;
        let column = self.text[line_start..start].chars().count() + 1;
        let text = self.text[line_start..line_end].trim_end_matches('\r');
        let underline_end = span.end.clamp(start, line_start + text.len());
        Diagnostic {
            file: self.path.to_path_buf(),
            line,
            column,
            field: field.into(),
            message: message.into(),
            help,
            warning: false,
            snippet: Some(window(text, start - line_start..underline_end - line_start)),
        }
    }
}

/// Longest source line a diagnostic echoes whole.
const SNIPPET_CHARS: usize = 160;

/// The part of a long `line` around `underline` (byte offsets), marked `…` where cut, and the
/// underline within it: a 4 MB line is not echoed whole, twice.
fn window(line: &str, underline: Range<usize>) -> (String, Range<usize>) {
    if line.chars().count() <= SNIPPET_CHARS {
        return (line.to_owned(), underline);
    }
    let floor = |mut i: usize| {
        while !line.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    let from = floor(underline.start.saturating_sub(SNIPPET_CHARS / 3));
    let to = floor((underline.start + SNIPPET_CHARS * 2 / 3).min(line.len()));
    let (lead, tail) = (
        if from > 0 { "…" } else { "" },
        if to < line.len() { "…" } else { "" },
    );
    let shown = format!("{lead}{}{tail}", &line[from..to]);
    let start = lead.len() + underline.start - from;
    let end = lead.len() + underline.end.min(to).max(underline.start) - from;
    (shown, start..end)
}

/// "did you mean" for a misspelt name among the known ones.
pub fn did_you_mean<'a>(word: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known
        .into_iter()
        .map(|candidate| (strsim::jaro_winkler(word, candidate), candidate))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn located_error_quotes_the_line_and_underlines_the_span() {
        let text = "a = 1\nmac = \"zz\"\n";
        let source = SourceFile {
            path: Path::new("m.toml"),
            text,
        };
        let span = text.find("\"zz\"").unwrap();
        let d = source.error(span..span + 4, "mac", "bad", Some("write it right".into()));
        assert_eq!(
            d.to_string(),
            "error: m.toml:2:7: mac: bad\n  |\n2 | mac = \"zz\"\n  |       ^^^^\n  help: write it right"
        );
        assert!(
            d.into_warning()
                .to_string()
                .starts_with("warning: m.toml:2:7: mac: bad\n")
        );
    }

    #[test]
    fn a_long_line_is_echoed_around_the_problem_only() {
        let line = format!("name = \"{}\" # é{}", "x".repeat(3000), "y".repeat(50_000));
        let text = format!("a = 1\n{line}\n");
        let source = SourceFile {
            path: Path::new("m.toml"),
            text: &text,
        };
        let span = text.find('é').unwrap();
        let shown = source
            .error(span..span + 2, "name", "bad", None)
            .to_string();
        assert!(shown.len() < 600, "{} bytes echoed", shown.len());
        let lines: Vec<&str> = shown.lines().collect();
        assert!(
            lines[2].starts_with("2 | …xxx") && lines[2].ends_with("yyy…"),
            "{shown}"
        );
        // The underline still sits under the problem.
        let column = lines[2].chars().position(|c| c == 'é').unwrap();
        assert_eq!(
            lines[3].chars().position(|c| c == '^'),
            Some(column),
            "{shown}"
        );
        assert_eq!(lines[3].matches('^').count(), 1);
    }

    #[test]
    fn did_you_mean_finds_close_names_only() {
        assert_eq!(
            did_you_mean("hostnme", ["hostname", "mac"]),
            Some("hostname")
        );
        assert_eq!(did_you_mean("zzz", ["hostname", "mac"]), None);
    }
}
