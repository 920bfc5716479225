//! One invocation of an admin API command: the client, whether to print JSON or tables, and the
//! lists of the API (keys, workspaces, audit entries) followed page by page.

use http::Method;
use serde_json::Value;

use super::client::{self, AdminClient};
use super::{Failure, render, write_stdout};

/// Who to talk to, and how to print.
pub(super) struct Session {
    /// The admin API, authenticated.
    pub(super) client: AdminClient,
    /// `--json`: print the API's JSON instead of tables.
    pub(super) json: bool,
}

/// A list of the API: which array its pages hold, and what it is called in messages.
#[derive(Debug, Clone, Copy)]
pub(super) struct ListKind {
    /// The array of each page (`keys`, `workspaces`, `entries`).
    pub(super) field: &'static str,
    /// For "More …: run again with --all": `keys`, `entries`.
    pub(super) noun: &'static str,
}

/// What a list command got: the document to print (`--json` prints it as it is) and, when only
/// one page was asked for, the cursor of the next.
#[derive(Debug)]
pub(super) struct Listing {
    /// One page as the API sent it, or `{field: [every item]}` when all pages were followed.
    pub(super) document: Value,
    /// The page after the one shown, if there is one and it was not followed.
    pub(super) next_cursor: Option<String>,
}

impl Listing {
    /// The items of the document.
    pub(super) fn items(&self, kind: ListKind) -> Result<&[Value], Failure> {
        match self.document.get(kind.field) {
            Some(Value::Array(items)) => Ok(items),
            _ => Err(Failure::Unexpected(format!(
                "a list answer without a `{}` array",
                kind.field
            ))),
        }
    }
}

impl Session {
    pub(super) fn new(client: AdminClient, json: bool) -> Session {
        Session { client, json }
    }

    /// `GET path`, whose answer must have a body.
    pub(super) async fn get(&self, path: &str) -> Result<Value, Failure> {
        client::expect_body(self.client.call(Method::GET, path, None).await?)
    }

    /// Prints `value` as JSON with `--json`, else as `human` renders it.
    pub(super) fn print(
        &self,
        value: &Value,
        human: impl FnOnce(&Value) -> Result<String, Failure>,
    ) -> Result<(), Failure> {
        if self.json {
            return write_stdout(&render::json(value));
        }
        write_stdout(&human(value)?)
    }

    /// Fetches a list from `cursor` on: the one page, or with `all` every page, following
    /// `next_cursor` to the last. `page` makes a page's path from its cursor.
    pub(super) async fn list(
        &self,
        kind: ListKind,
        page: impl Fn(Option<&str>) -> String,
        mut cursor: Option<String>,
        all: bool,
    ) -> Result<Listing, Failure> {
        let mut items = Vec::new();
        loop {
            let document = self.get(&page(cursor.as_deref())).await?;
            let next = match document.get("next_cursor") {
                Some(Value::String(c)) => Some(c.clone()),
                Some(Value::Null) | None => None,
                Some(_) => {
                    return Err(Failure::Unexpected(
                        "`next_cursor` is neither a string nor null".into(),
                    ));
                }
            };
            if !all {
                return Ok(Listing {
                    document,
                    next_cursor: next,
                });
            }
            match document {
                Value::Object(mut document) => match document.remove(kind.field) {
                    Some(Value::Array(page_items)) => items.extend(page_items),
                    _ => {
                        return Err(Failure::Unexpected(format!(
                            "a page without `{}`",
                            kind.field
                        )));
                    }
                },
                _ => return Err(Failure::Unexpected("a page that is not an object".into())),
            }
            match next {
                // A server that hands back the cursor it was given would loop forever.
                Some(next) if cursor.as_deref() == Some(next.as_str()) => {
                    return Err(Failure::Unexpected(
                        "the API returned the same page cursor twice".into(),
                    ));
                }
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let mut document = serde_json::Map::new();
        document.insert(kind.field.into(), Value::Array(items));
        Ok(Listing {
            document: Value::Object(document),
            next_cursor: None,
        })
    }

    /// Prints a list: its JSON with `--json`, else `human`'s table of its items, and on stderr
    /// how to see the next page when there is one.
    pub(super) fn print_list(
        &self,
        kind: ListKind,
        listing: &Listing,
        human: impl FnOnce(&[Value]) -> Result<String, Failure>,
    ) -> Result<(), Failure> {
        if self.json {
            return write_stdout(&render::json(&listing.document));
        }
        let text = human(listing.items(kind)?)?;
        if let Some(next) = &listing.next_cursor {
            eprintln!(
                "More {}: run again with --all, or with --cursor {}",
                kind.noun,
                render::sanitize(next)
            );
        }
        write_stdout(&text)
    }
}
