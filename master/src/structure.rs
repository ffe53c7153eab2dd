//! Structural checks of a TOML file against the JSON Schema generated from the model: unknown
//! keys (with "did you mean"), wrong types, missing fields and invalid choices, all reported at
//! once with their positions. It also records where every field sits, so the semantic checks
//! that run later can point at the right line and column.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::ops::Range;

use serde_json::Value as Schema;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diagnostics::{Diagnostic, Diagnostics, SourceFile, did_you_mean};

/// Where a field sits in the file, and the name it is shown under in messages.
#[derive(Debug, Clone)]
struct Place {
    span: Range<usize>,
    label: String,
}

/// Positions of every field of a parsed file, addressed by paths like `machines[3].mac`.
pub struct Locator<'a> {
    source: SourceFile<'a>,
    places: HashMap<String, Place>,
}

impl<'a> Locator<'a> {
    /// A diagnostic for the field at `path`. A path that is not in the file (a missing field)
    /// points at the nearest enclosing table that is.
    pub fn error(
        &self,
        path: &str,
        message: impl Into<String>,
        help: Option<String>,
    ) -> Diagnostic {
        let mut probe = path;
        let place = loop {
            if let Some(place) = self.places.get(probe) {
                break Some(place);
            }
            match probe.rfind(['.', '[']) {
                Some(cut) => probe = &probe[..cut],
                None => break None,
            }
        };
        let span = place.map_or(0..0, |p| p.span.clone());
        let label = match place {
            Some(p) if probe.len() < path.len() => format!("{}{}", p.label, &path[probe.len()..]),
            Some(p) => p.label.clone(),
            None => path.to_string(),
        };
        self.source.error(span, label, message, help)
    }

    pub fn file(&self) -> &SourceFile<'a> {
        &self.source
    }
}

/// The outcome of a structural check of a file that is valid TOML.
pub struct Checked<'a> {
    pub locator: Locator<'a>,
    pub problems: Diagnostics,
    /// Paths of the values behind `problems` (unknown keys, wrong types…).
    pub offending: Vec<Vec<Segment>>,
}

/// Parses `text` and checks it against `schema`; fails only on a TOML syntax error.
pub fn check<'a>(source: SourceFile<'a>, schema: &Schema) -> Result<Checked<'a>, Diagnostics> {
    let root = match DeTable::parse(source.text) {
        Ok(root) => root,
        Err(err) => {
            let span = err.span().unwrap_or(0..0);
            let message = err.message().trim_end().to_string();
            let diagnostic = source.error(
                span,
                "",
                format!("this is not valid TOML: {message}"),
                Some("check quotes, brackets and `=` on this line".into()),
            );
            return Err(Diagnostics(vec![diagnostic]));
        }
    };
    let mut walker = Walker {
        source: &source,
        root_schema: schema,
        places: HashMap::new(),
        problems: Diagnostics::default(),
        at: Vec::new(),
        offending: Vec::new(),
    };
    let root_value = Spanned::new(root.span(), DeValue::Table(root.into_inner()));
    walker.value(&root_value, schema, "", "");
    let Walker {
        places,
        problems,
        offending,
        ..
    } = walker;
    Ok(Checked {
        locator: Locator { source, places },
        problems: problems.finish(),
        offending,
    })
}

struct Walker<'s, 'a> {
    source: &'s SourceFile<'a>,
    root_schema: &'s Schema,
    places: HashMap<String, Place>,
    problems: Diagnostics,
    /// Where the walk is, as keys and indexes.
    at: Vec<Segment>,
    /// Values that caused a problem; dropping them may leave a file that can still be checked.
    offending: Vec<Vec<Segment>>,
}

/// One step of a path into the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

impl<'s> Walker<'s, '_> {
    fn resolve(&self, schema: &'s Schema) -> &'s Schema {
        let mut schema = schema;
        while let Some(reference) = schema.get("$ref").and_then(Schema::as_str) {
            let name = reference.trim_start_matches("#/$defs/");
            schema = &self.root_schema["$defs"][name];
        }
        schema
    }

    fn report(&mut self, span: Range<usize>, label: &str, message: String, help: Option<String>) {
        let diagnostic = self.source.error(span, label, message, help);
        self.problems.push(diagnostic);
        self.offending.push(self.at.clone());
    }

    fn value(&mut self, value: &Spanned<DeValue>, schema: &'s Schema, path: &str, label: &str) {
        let schema = self.resolve(schema);
        self.places.insert(
            path.to_string(),
            Place {
                span: value.span(),
                label: label.to_string(),
            },
        );
        if let Some(alternatives) = schema.get("oneOf").or(schema.get("anyOf")) {
            self.alternatives(value, alternatives, path, label);
            return;
        }
        if let Some(allowed) = schema.get("enum").and_then(Schema::as_array) {
            self.choice(value, allowed.iter().collect(), label);
            return;
        }
        let types: Vec<&str> = match schema.get("type") {
            Some(Schema::String(t)) => vec![t.as_str()],
            Some(Schema::Array(ts)) => ts.iter().filter_map(Schema::as_str).collect(),
            _ => return, // no constraint
        };
        let found = kind_of(value.get_ref());
        if !types.iter().any(|t| type_matches(t, found)) {
            let wanted: Vec<&str> = types
                .iter()
                .filter(|t| **t != "null")
                .map(|t| article(t))
                .collect();
            self.report(
                value.span(),
                label,
                format!("expected {}, found {}", wanted.join(" or "), article(found)),
                None,
            );
            return;
        }
        match value.get_ref() {
            DeValue::Table(table) => self.table(value.span(), table, schema, path, label),
            DeValue::Array(items) => {
                let item_schema = schema.get("items").unwrap_or(&Schema::Bool(true));
                let (min, max) = (
                    schema.get("minItems").and_then(Schema::as_u64),
                    schema.get("maxItems").and_then(Schema::as_u64),
                );
                let n = items.len() as u64;
                if min.is_some_and(|m| n < m) || max.is_some_and(|m| n > m) {
                    let wanted = match (min, max) {
                        (Some(a), Some(b)) if a == b => format!("exactly {a}"),
                        (Some(a), Some(b)) => format!("{a} to {b}"),
                        (Some(a), None) => format!("at least {a}"),
                        (None, Some(b)) => format!("at most {b}"),
                        (None, None) => unreachable!(),
                    };
                    self.report(
                        value.span(),
                        label,
                        format!("expected a list of {wanted} items, found {n}"),
                        None,
                    );
                }
                for (i, item) in items.iter().enumerate() {
                    let item_label = format!("{label}[{}]", element_name(item.get_ref(), i));
                    self.at.push(Segment::Index(i));
                    self.value(item, item_schema, &format!("{path}[{i}]"), &item_label);
                    self.at.pop();
                }
            }
            DeValue::String(text)
                if schema.get("format").and_then(Schema::as_str) == Some("ipv4")
                    && text.parse::<Ipv4Addr>().is_err() =>
            {
                self.report(
                    value.span(),
                    label,
                    format!("\"{text}\" is not an IPv4 address"),
                    Some("write four numbers from 0 to 255, like 10.42.0.1".into()),
                );
            }
            DeValue::Integer(int) => self.integer_range(value.span(), int, schema, label),
            _ => {}
        }
    }

    fn integer_range(
        &mut self,
        span: Range<usize>,
        int: &toml::de::DeInteger,
        schema: &Schema,
        label: &str,
    ) {
        let number = i128::from_str_radix(int.as_str(), int.radix()).ok();
        let min = schema.get("minimum").and_then(Schema::as_i64);
        let max = schema.get("maximum").and_then(Schema::as_i64).or_else(|| {
            match schema.get("format").and_then(Schema::as_str) {
                Some("uint16") => Some(u16::MAX.into()),
                Some("uint32") => Some(u32::MAX.into()),
                _ => None,
            }
        });
        let out_of_range = match number {
            Some(n) => min.is_some_and(|m| n < m.into()) || max.is_some_and(|m| n > m.into()),
            None => true,
        };
        if out_of_range {
            self.report(
                span,
                label,
                format!(
                    "{} is out of range (allowed: {} to {})",
                    int.as_str(),
                    min.map_or("any".into(), |m| m.to_string()),
                    max.map_or("any".into(), |m| m.to_string())
                ),
                None,
            );
        }
    }

    fn table(
        &mut self,
        span: Range<usize>,
        table: &DeTable,
        schema: &'s Schema,
        path: &str,
        label: &str,
    ) {
        let properties = schema.get("properties").and_then(Schema::as_object);
        let extra = schema.get("additionalProperties");
        let mut keys: Vec<_> = table.iter().collect();
        keys.sort_by_key(|(k, _)| k.span().start);
        for (key, value) in keys {
            let name = key.get_ref().as_ref();
            let child_path = join(path, name);
            let child_label = join(label, name);
            self.at.push(Segment::Key(name.to_string()));
            if let Some(child_schema) = properties.and_then(|p| p.get(name)) {
                self.value(value, child_schema, &child_path, &child_label);
            } else if let Some(extra) = extra.filter(|e| e.is_object()) {
                self.value(value, extra, &child_path, &child_label);
            } else if extra == Some(&Schema::Bool(false)) {
                let known = properties.map(|p| p.keys().map(String::as_str).collect::<Vec<_>>());
                let known = known.unwrap_or_default();
                let help = match did_you_mean(name, known.iter().copied()) {
                    Some(guess) => format!("did you mean `{guess}`?"),
                    None => format!("known keys here: {}", known.join(", ")),
                };
                let where_ = if label.is_empty() {
                    "at the top level".to_string()
                } else {
                    format!("in {label}")
                };
                self.report(
                    key.span(),
                    &child_label,
                    format!("unknown key `{name}` {where_}"),
                    Some(help),
                );
            }
            self.at.pop();
        }
        let required = schema.get("required").and_then(Schema::as_array);
        for name in required.into_iter().flatten().filter_map(Schema::as_str) {
            if !table.contains_key(name) {
                let where_ = if label.is_empty() {
                    "the file".to_string()
                } else {
                    label.to_string()
                };
                let help = properties
                    .and_then(|p| p.get(name))
                    .map(|s| self.resolve(s))
                    .and_then(|s| s.get("description"))
                    .and_then(Schema::as_str)
                    .map(|d| format!("`{name}`: {d}"));
                let span = span.start..span.start;
                self.report(
                    span,
                    label,
                    format!("{where_} is missing the required key `{name}`"),
                    help,
                );
                // Nothing to drop that would make this table whole: mark the file unrepairable.
                if let Some(last) = self.offending.last_mut() {
                    last.clear();
                }
            }
        }
    }

    fn alternatives(
        &mut self,
        value: &Spanned<DeValue>,
        alternatives: &'s Schema,
        path: &str,
        label: &str,
    ) {
        let alternatives: Vec<&'s Schema> = alternatives
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| self.resolve(a))
            .filter(|a| a.get("type").and_then(Schema::as_str) != Some("null"))
            .collect();
        let constants: Option<Vec<&Schema>> = alternatives
            .iter()
            .map(|a| match (a.get("const"), a.get("enum")) {
                (Some(c), _) => Some(vec![c]),
                (None, Some(Schema::Array(e))) => Some(e.iter().collect()),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .map(|lists| lists.into_iter().flatten().collect());
        if let Some(allowed) = constants {
            self.choice(value, allowed, label);
            return;
        }
        // Take the first alternative that fits; otherwise report against the first one.
        let saved = std::mem::take(&mut self.problems);
        let saved_offending = self.offending.len();
        let mut first_failure = None;
        for alternative in &alternatives {
            self.value(value, alternative, path, label);
            let problems = std::mem::take(&mut self.problems);
            let offending = self.offending.split_off(saved_offending);
            if problems.is_empty() {
                self.problems = saved;
                return;
            }
            first_failure.get_or_insert((problems, offending));
        }
        self.problems = saved;
        if let Some((problems, offending)) = first_failure {
            self.problems.extend(problems);
            self.offending.extend(offending);
        }
    }

    fn choice(&mut self, value: &Spanned<DeValue>, allowed: Vec<&'s Schema>, label: &str) {
        let names: Vec<&str> = allowed.iter().filter_map(|a| a.as_str()).collect();
        let given = match value.get_ref() {
            DeValue::String(s) => Some(s.as_ref()),
            _ => None,
        };
        if given.is_some_and(|g| names.contains(&g)) {
            return;
        }
        let list = names
            .iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let (message, help) = match given {
            Some(g) => (
                format!("\"{g}\" is not one of {list}"),
                did_you_mean(g, names.iter().copied()).map(|m| format!("did you mean \"{m}\"?")),
            ),
            None => (
                format!(
                    "expected one of {list}, found {}",
                    article(kind_of(value.get_ref()))
                ),
                None,
            ),
        };
        self.report(value.span(), label, message, help);
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// How an array element is named in messages: by its `hostname` or `slug`, which is what a
/// person searches the file for, else by its 1-based position.
fn element_name(value: &DeValue, index: usize) -> String {
    if let DeValue::Table(table) = value {
        for key in ["hostname", "slug", "name"] {
            if let Some(DeValue::String(s)) = table.get(key).map(|v| v.get_ref()) {
                return s.to_string();
            }
        }
    }
    format!("#{}", index + 1)
}

fn kind_of(value: &DeValue) -> &'static str {
    match value {
        DeValue::String(_) => "string",
        DeValue::Integer(_) => "integer",
        DeValue::Float(_) => "number",
        DeValue::Boolean(_) => "boolean",
        DeValue::Datetime(_) => "datetime",
        DeValue::Array(_) => "array",
        DeValue::Table(_) => "object",
    }
}

fn type_matches(schema_type: &str, found: &str) -> bool {
    schema_type == found || (schema_type == "number" && found == "integer")
}

fn article(kind: &str) -> &'static str {
    match kind {
        "string" => "a string",
        "integer" => "a whole number",
        "number" => "a number",
        "boolean" => "true or false",
        "datetime" => "a date",
        "array" => "a list",
        "object" => "a table",
        _ => "a value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn run(text: &str) -> Vec<String> {
        let schema = serde_json::json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "description": "Display name. More words."},
                "port": {"type": "integer", "format": "uint16", "minimum": 0},
                "ip": {"type": "string", "format": "ipv4"},
                "mode": {"type": "string", "enum": ["a", "b"]},
                "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}}
            },
            "$defs": {
                "Item": {"type": "object", "additionalProperties": false,
                         "properties": {"hostname": {"type": "string"}}}
            }
        });
        let source = SourceFile {
            path: Path::new("t.toml"),
            text,
        };
        match check(source, &schema) {
            Ok(checked) => checked.problems.0.iter().map(|d| d.to_string()).collect(),
            Err(problems) => problems.0.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn reports_every_structural_problem_at_once() {
        let found = run(
            "nmae = \"x\"\nport = 70000\nip = \"1.2.3\"\nmode = \"c\"\n[[items]]\nhostname = \"h1\"\nmac = 1\n",
        );
        let firsts: Vec<&str> = found.iter().map(|d| d.lines().next().unwrap()).collect();
        assert_eq!(
            firsts,
            vec![
                "error: t.toml:1:1: the file is missing the required key `name`",
                "error: t.toml:1:1: nmae: unknown key `nmae` at the top level",
                "error: t.toml:2:8: port: 70000 is out of range (allowed: 0 to 65535)",
                "error: t.toml:3:6: ip: \"1.2.3\" is not an IPv4 address",
                "error: t.toml:4:8: mode: \"c\" is not one of \"a\", \"b\"",
                "error: t.toml:7:1: items[h1].mac: unknown key `mac` in items[h1]",
            ]
        );
        assert!(
            found[1].ends_with("help: did you mean `name`?"),
            "{}",
            found[1]
        );
    }

    #[test]
    fn syntax_errors_are_located() {
        let found = run("name = \"x\n");
        assert!(found[0].starts_with("error: t.toml:1:"), "{}", found[0]);
        assert!(found[0].contains("not valid TOML"), "{}", found[0]);
    }
}
