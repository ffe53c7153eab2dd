//! The master-file reference in Markdown, generated from the JSON Schema so the README cannot
//! drift from the code (a test compares them; `imgbuild schema --markdown` regenerates it).

use serde_json::Value;

/// Markdown: one table per TOML table of the master file, in file order.
pub fn markdown() -> String {
    let schema = crate::schema();
    let mut out = String::new();
    section(&schema, &schema, "", false, &mut out);
    out
}

fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => resolve(root, &root["$defs"][r.trim_start_matches("#/$defs/")]),
        None => schema,
    }
}

/// The object schema behind a field, if the field is a table or a list of tables.
fn table_of<'a>(root: &'a Value, field: &'a Value) -> Option<(&'a Value, bool)> {
    let field = resolve(root, field);
    let field = match field.get("anyOf").and_then(Value::as_array) {
        Some(alts) => alts
            .iter()
            .map(|a| resolve(root, a))
            .find(|a| a["type"] != "null")?,
        None => field,
    };
    if field.get("properties").is_some() {
        return Some((field, false));
    }
    if field["type"] == "array" {
        let items = resolve(root, &field["items"]);
        if items.get("properties").is_some() {
            return Some((items, true));
        }
    }
    None
}

fn section(root: &Value, schema: &Value, path: &str, array: bool, out: &mut String) {
    let schema = resolve(root, schema);
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    let required: Vec<&str> = schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let heading = match (path.is_empty(), array) {
        (true, _) => "top level".to_string(),
        (false, true) => format!("`[[{path}]]`"),
        (false, false) => format!("`[{path}]`"),
    };
    out.push_str(&format!("#### {heading}\n\n"));
    if let Some(description) = schema.get("description").and_then(Value::as_str) {
        out.push_str(&format!("{}\n\n", one_line(description)));
    }
    out.push_str("| key | type | required / default | description |\n|---|---|---|---|\n");
    let mut nested = Vec::new();
    for (name, field) in properties {
        let full = if path.is_empty() {
            name.clone()
        } else {
            format!("{path}.{name}")
        };
        let table = table_of(root, field);
        if let Some((table, is_array)) = table {
            nested.push((full.clone(), table, is_array));
        }
        let description = field
            .get("description")
            .or_else(|| resolve(root, field).get("description"))
            .and_then(Value::as_str)
            .map(one_line)
            .unwrap_or_default();
        let presence = match field.get("default") {
            _ if required.contains(&name.as_str()) => "required".to_string(),
            Some(Value::Array(a)) if a.is_empty() => "none".to_string(),
            Some(value @ (Value::String(_) | Value::Number(_) | Value::Bool(_))) => {
                format!("`{value}`")
            }
            _ => "optional".to_string(),
        };
        out.push_str(&format!(
            "| `{name}` | {} | {presence} | {description} |\n",
            type_name(root, field),
        ));
    }
    out.push('\n');
    for (full, table, is_array) in nested {
        section(root, table, &full, is_array, out);
    }
}

fn type_name(root: &Value, field: &Value) -> String {
    let field = resolve(root, field);
    if let Some(alternatives) = field
        .get("oneOf")
        .or(field.get("anyOf"))
        .and_then(Value::as_array)
    {
        let names: Vec<String> = alternatives
            .iter()
            .map(|a| resolve(root, a))
            .filter(|a| a["type"] != "null")
            .map(|a| match (a.get("const"), a.get("enum")) {
                (Some(c), _) => format!("`{}`", c.as_str().unwrap_or_default()),
                (None, Some(Value::Array(e))) => e
                    .iter()
                    .map(|v| format!("`{}`", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(" \\| "),
                _ => type_name(root, a),
            })
            .collect();
        return names.join(" \\| ");
    }
    if let Some(values) = field.get("enum").and_then(Value::as_array) {
        return values
            .iter()
            .map(|v| format!("`{}`", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(" \\| ");
    }
    let types: Vec<&str> = match &field["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect(),
        _ => vec![],
    };
    match types.first().copied() {
        Some("array") => match type_name(root, &field["items"]).as_str() {
            "table" => "list of tables".into(),
            item => format!("list of {item}"),
        },
        Some("object") if field.get("properties").is_some() => "table".into(),
        Some("object") => "table of strings".into(),
        Some("string") if field["format"] == "ipv4" => "IPv4 address".into(),
        Some("integer") => "integer".into(),
        Some(t) => t.to_string(),
        None => "any".into(),
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}
