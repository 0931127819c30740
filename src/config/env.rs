//! `${env:VAR}` and `${env:VAR:-default}` expansion inside configuration values.
//!
//! As in the OpenTelemetry Collector, a value that is exactly one reference takes
//! the type the expanded text reads as (so `${env:PORT}` can fill an integer field),
//! and `$$` stands for a literal `$`.

use figment::value::{Num, Value};

use super::ConfigErrors;

pub(super) fn expand(value: &mut Value, path: &str, errors: &mut ConfigErrors) {
    match value {
        Value::String(tag, s) => {
            if !s.contains('$') {
                return;
            }
            match expand_str(s) {
                Ok((text, whole)) => {
                    *value = if whole {
                        typed(*tag, text)
                    } else {
                        Value::String(*tag, text)
                    }
                }
                Err(msg) => errors.push(path, msg),
            }
        }
        Value::Dict(_, dict) => {
            for (k, v) in dict.iter_mut() {
                expand(v, &format!("{path}.{k}"), errors);
            }
        }
        Value::Array(_, items) => {
            for (i, v) in items.iter_mut().enumerate() {
                expand(v, &format!("{path}[{i}]"), errors);
            }
        }
        _ => {}
    }
}

/// Reads an expanded whole-value reference as a bool or number where it looks like one.
fn typed(tag: figment::value::Tag, text: String) -> Value {
    match text.as_str() {
        "true" => return Value::Bool(tag, true),
        "false" => return Value::Bool(tag, false),
        _ => {}
    }
    if let Ok(n) = text.parse::<u64>() {
        return Value::Num(tag, Num::U64(n));
    }
    if let Ok(n) = text.parse::<i64>() {
        return Value::Num(tag, Num::I64(n));
    }
    if text.contains('.')
        && let Ok(f) = text.parse::<f64>()
    {
        return Value::Num(tag, Num::F64(f));
    }
    Value::String(tag, text)
}

/// Expands every reference in `s` from the process's environment. Returns the text and
/// whether `s` was exactly one reference.
fn expand_str(s: &str) -> Result<(String, bool), String> {
    expand_with(s, &|name| std::env::var(name).ok())
}

/// [`expand_str`] with the variables `lookup` gives.
fn expand_with(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<(String, bool), String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let mut refs = 0;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
            continue;
        }
        let Some(body) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let Some(end) = body.find('}') else {
            return Err(format!(
                "unterminated `${{` in `{s}`: write `${{env:NAME}}`, or `$$` for a literal `$`"
            ));
        };
        let inner = &body[..end];
        let Some(reference) = inner.strip_prefix("env:") else {
            return Err(format!(
                "unsupported reference `${{{inner}}}` in `{s}`: only `${{env:NAME}}` and `${{env:NAME:-default}}` are supported"
            ));
        };
        let (name, default) = match reference.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (reference, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "invalid environment variable name `{name}` in `{s}`"
            ));
        }
        match (lookup(name), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(format!(
                    "environment variable `{name}` is not set; set it or give a default with `${{env:{name}:-default}}`"
                ));
            }
        }
        refs += 1;
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    let whole =
        refs == 1 && s.starts_with("${") && s.ends_with('}') && s.matches("${").count() == 1;
    Ok((out, whole))
}

#[cfg(test)]
mod tests {
    use super::expand_with;

    /// The environment these tests see: STACKLINE_T_A is set, nothing else is.
    fn expand_str(s: &str) -> Result<(String, bool), String> {
        expand_with(s, &|name| {
            (name == "STACKLINE_T_A").then(|| "alpha".to_owned())
        })
    }

    #[test]
    fn expands_set_unset_default_and_escape() {
        assert_eq!(
            expand_str("${env:STACKLINE_T_A}").unwrap(),
            ("alpha".into(), true)
        );
        assert_eq!(
            expand_str("x-${env:STACKLINE_T_A}-${env:STACKLINE_T_UNSET:-d}").unwrap(),
            ("x-alpha-d".into(), false)
        );
        assert_eq!(
            expand_str("$$5 and $x").unwrap(),
            ("$5 and $x".into(), false)
        );
        let e = expand_str("${env:STACKLINE_T_UNSET}").unwrap_err();
        assert!(e.contains("`STACKLINE_T_UNSET` is not set"), "{e}");
        assert!(
            expand_str("${env:OPEN")
                .unwrap_err()
                .contains("unterminated")
        );
        assert!(
            expand_str("${file:/x}")
                .unwrap_err()
                .contains("unsupported reference")
        );
    }
}
