//! Reading a config: file → YAML syntax → `${VAR}` substitution → typed structs that refuse
//! unknown fields → [`Config::validate`], every problem with its field path and, where it can
//! be found, its line.

use std::path::Path;

use super::env::substitute_env;
use super::{Config, ConfigError, Problem};

impl Config {
    /// Reads and parses a file, substituting `${VAR}` from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source_name: name.clone(),
            problems: vec![Problem {
                path: String::new(),
                line: None,
                message: format!("cannot read file: {e}"),
            }],
        })?;
        Config::parse(&name, &text, |var| std::env::var(var).ok())
    }

    /// Parses YAML text; `env` resolves `${VAR}` references. Every problem comes back at once:
    /// type errors of every section (and of every route, upstream and workspace apart), then,
    /// when the types are right, every semantic one.
    pub fn parse(
        source_name: &str,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let fail = |problems| ConfigError {
            source_name: source_name.to_owned(),
            problems,
        };
        let mut value: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|e| fail(vec![syntax_problem(text, &e)]))?;
        let mut problems = Vec::new();
        substitute_env(&mut value, &mut String::new(), &env, &mut problems);
        if !problems.is_empty() {
            return Err(fail(problems));
        }
        let config: Config = match serde_path_to_error::deserialize(value.clone()) {
            Ok(c) => c,
            Err(first) => {
                let mut found = super::types::problems(&value);
                if found.is_empty() {
                    // The section checks miss nothing the whole does; should they, the first.
                    let path = first.path().to_string();
                    found.push(Problem {
                        path: if path == "." { String::new() } else { path },
                        line: None,
                        message: first.into_inner().to_string(),
                    });
                }
                for p in &mut found {
                    p.message = plain_words(&p.message);
                }
                return Err(fail(located(text, found)));
            }
        };
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(fail(located(text, problems)))
        }
    }

    /// [`Config::warnings`] with the lines they are at in `text` (the file this config came
    /// from).
    pub fn warnings_in(&self, text: &str) -> Vec<Problem> {
        located(text, self.warnings())
    }
}

/// `problems` with their lines in `text`.
fn located(text: &str, problems: Vec<Problem>) -> Vec<Problem> {
    problems
        .into_iter()
        .map(|mut p| {
            p.line = p.line.or_else(|| find_line(text, &p.path));
            p
        })
        .collect()
}

/// A YAML syntax error. A duplicated key is reported at the duplicate (the parser points at the
/// start of its mapping).
fn syntax_problem(text: &str, e: &serde_yaml::Error) -> Problem {
    let message = e.to_string();
    let line = e.location().map(|l| l.line());
    if let (Some(key), Some(start)) = (duplicated_key(&message), line)
        && let Some(at) = second_occurrence(text, start, &key)
    {
        return Problem {
            path: String::new(),
            line: Some(at),
            message: format!("`{key}` is given twice in the same mapping; keep one"),
        };
    }
    // The parser's message ends with its own position; the problem carries the line.
    let message = message
        .split(" at line ")
        .next()
        .unwrap_or(&message)
        .to_owned();
    Problem {
        path: String::new(),
        line,
        message,
    }
}

fn duplicated_key(message: &str) -> Option<String> {
    let rest = message.split("duplicate entry with key \"").nth(1)?;
    Some(rest.split('"').next()?.to_owned())
}

/// The 1-based line of the second `key:` at the indentation of the mapping that starts at line
/// `start` (1-based), before the mapping ends.
fn second_occurrence(text: &str, start: usize, key: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let first = lines.get(start.checked_sub(1)?)?;
    let indent = first.len() - first.trim_start().len();
    let is_key = |l: &str| {
        let t = l.trim_start();
        l.len() - t.len() == indent
            && (t.starts_with(&format!("{key}:")) || t.starts_with(&format!("\"{key}\":")))
    };
    let mut seen = 0;
    for (i, l) in lines.iter().enumerate().skip(start - 1) {
        let t = l.trim_start();
        if !t.is_empty() && !t.starts_with('#') && l.len() - t.len() < indent {
            break;
        }
        if is_key(l) {
            seen += 1;
            if seen == 2 {
                return Some(i + 1);
            }
        }
    }
    None
}

/// A serde message in the words of the file's reader: `invalid type: string "x", expected u64`
/// becomes `expected a whole number, found the text "x"`.
pub(super) fn plain_words(message: &str) -> String {
    let Some(rest) = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
    else {
        return message.to_owned();
    };
    let Some((found, expected)) = rest.rsplit_once(", expected ") else {
        return message.to_owned();
    };
    let expected = match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number (0 or more)".to_owned(),
        "a nonzero u32" | "a nonzero usize" | "a nonzero u64" => {
            "a whole number of 1 or more".to_owned()
        }
        "a boolean" => "true or false".to_owned(),
        "a sequence" => "a list".to_owned(),
        "a map" => "a mapping (name: value)".to_owned(),
        "a string" => "text".to_owned(),
        other => other.to_owned(),
    };
    let found = if let Some(s) = found.strip_prefix("string ") {
        format!("the text {s}")
    } else if let Some(n) = found.strip_prefix("integer ") {
        n.trim_matches('`').to_owned()
    } else if let Some(n) = found.strip_prefix("floating point ") {
        n.trim_matches('`').to_owned()
    } else if let Some(b) = found.strip_prefix("boolean ") {
        b.trim_matches('`').to_owned()
    } else {
        match found {
            "sequence" => "a list".to_owned(),
            "map" => "a mapping".to_owned(),
            "unit value" => "nothing (null)".to_owned(),
            other => other.to_owned(),
        }
    };
    format!("expected {expected}, found {found}")
}

/// Best-effort line of a dotted path's last mapping key (`routes[1].upstream` → the `upstream:`
/// line that follows the second item of `routes`). Good enough to point a reader at the spot.
fn find_line(text: &str, path: &str) -> Option<usize> {
    if path.is_empty() {
        return None;
    }
    let mut line_no = 0;
    let lines: Vec<&str> = text.lines().collect();
    for segment in path.split('.') {
        let (key, index) = match segment.split_once('[') {
            Some((k, i)) => (k, i.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        let needle = format!("{key}:");
        // A block key starts its line; a flow one (`cache: { ttl: 5 }`) follows `{` or `,`.
        let flow = [
            format!("{{ {needle}"),
            format!(", {needle}"),
            format!("{{{needle}"),
        ];
        let found = lines[line_no..].iter().position(|l| {
            let t = l.trim_start().trim_start_matches("- ");
            t.starts_with(&needle)
                || t.starts_with(&format!("\"{key}\":"))
                || flow.iter().any(|f| l.contains(f.as_str()))
        })?;
        line_no += found;
        if let Some(index) = index {
            // Count list items below the key.
            let mut seen = 0;
            let mut at = None;
            for (off, l) in lines[line_no + 1..].iter().enumerate() {
                if l.trim_start().starts_with('-') {
                    if seen == index {
                        at = Some(line_no + 1 + off);
                        break;
                    }
                    seen += 1;
                }
            }
            line_no = at?;
        }
    }
    Some(line_no + 1)
}
