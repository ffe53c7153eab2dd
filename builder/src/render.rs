//! Jinja2 templating (minijinja), the language the video teams' ansible roles already use.

use anyhow::{Context, Result};
use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;

/// Renders one template. Undefined variables are errors, not empty strings: a typo in an overlay must fail
/// the build, not ship a config file with a hole in it.
pub fn render(name: &str, source: &[u8], context: &Value) -> Result<String> {
    let source = std::str::from_utf8(source).with_context(|| format!("{name} is not UTF-8"))?;
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env.render_str(source, context)
        .with_context(|| format!("rendering {name}"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn renders_loops_and_keeps_trailing_newline() {
        let context = json!({ "sources": [{ "name": "cam" }, { "name": "slides" }] });
        let out = render("t", b"sources={% for s in sources %}{{ s.name }}{% if not loop.last %},{% endif %}{% endfor %}\n", &context)
            .unwrap();
        assert_eq!(out, "sources=cam,slides\n");
    }

    #[test]
    fn undefined_is_an_error() {
        let err = render(
            "voctocore.ini.j2",
            b"{{ mixer.nope }}",
            &json!({ "mixer": {} }),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("voctocore.ini.j2"), "{err:#}");
    }
}
