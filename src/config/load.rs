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

    /// Parses YAML text; `env` resolves `${VAR}` references.
    pub fn parse(
        source_name: &str,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let fail = |problems| ConfigError {
            source_name: source_name.to_owned(),
            problems,
        };
        let mut value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| {
            fail(vec![Problem {
                path: String::new(),
                line: e.location().map(|l| l.line()),
                message: e.to_string(),
            }])
        })?;
        let mut problems = Vec::new();
        substitute_env(&mut value, &mut String::new(), &env, &mut problems);
        if !problems.is_empty() {
            return Err(fail(problems));
        }
        let config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            let line = find_line(text, &path);
            fail(vec![Problem {
                path,
                line,
                message: e.into_inner().to_string(),
            }])
        })?;
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(fail(
                problems
                    .into_iter()
                    .map(|mut p| {
                        p.line = find_line(text, &p.path);
                        p
                    })
                    .collect(),
            ))
        }
    }
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
        let found = lines[line_no..].iter().position(|l| {
            let t = l.trim_start().trim_start_matches("- ");
            t.starts_with(&needle) || t.starts_with(&format!("\"{key}\":"))
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
