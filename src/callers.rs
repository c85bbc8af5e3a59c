//! The callers an engine knows: `--client-token NAME=TOKEN`, from flags, the environment or
//! a file. With any configured, every reservation and cart route needs
//! `Authorization: Bearer <token>`; the token names the caller, which each hold records, so
//! that only it may confirm, cancel or read the hold.
//!
//! Checked when the engine starts, so that a typo stops it with a message rather than
//! locking every caller out during a sale.

use std::path::Path;

use subtle::ConstantTimeEq;

use crate::ids::{CallerName, IdError};

/// The shortest token accepted: 16 characters of the token alphabet carry at least 96
/// bits when drawn at random, and refuse the short words a person types.
pub const MIN_TOKEN_LEN: usize = 16;

/// The longest token accepted.
pub const MAX_TOKEN_LEN: usize = 256;

/// Why the client tokens given cannot be used. Each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum ClientTokenError {
    /// An entry without `=`.
    #[error("client token entry {entry:?} is not NAME=TOKEN (from {origin})")]
    Malformed {
        /// The entry, its token hidden.
        entry: String,
        /// Where it came from.
        origin: String,
    },
    /// A name that is no caller name.
    #[error("client name {name:?} (from {origin}) is not valid: {reason}")]
    BadName {
        /// The name.
        name: String,
        /// Where it came from.
        origin: String,
        /// Why.
        reason: IdError,
    },
    /// A token of the wrong length or with a character outside the alphabet.
    #[error(
        "the token of client {name:?} (from {origin}) must be {MIN_TOKEN_LEN} to \
         {MAX_TOKEN_LEN} characters of A-Z, a-z, 0-9 and -._~+/ (optionally ending in =); \
         `openssl rand -hex 24` makes one"
    )]
    BadToken {
        /// The client.
        name: String,
        /// Where it came from.
        origin: String,
    },
    /// A name given twice.
    #[error("client {name:?} is given twice: give each client one token")]
    DuplicateName {
        /// The client.
        name: String,
    },
    /// One token for two clients: it could not tell them apart.
    #[error("clients {first:?} and {second:?} have the same token: give each its own")]
    SharedToken {
        /// One client.
        first: String,
        /// The other.
        second: String,
    },
    /// A client token equal to the admin token.
    #[error("the token of client {name:?} is the admin token: give clients tokens of their own")]
    AdminToken {
        /// The client.
        name: String,
    },
    /// The tokens file cannot be read.
    #[error("cannot read the client tokens file {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Whether `token` is an RFC 6750 `b64token` of an accepted length.
fn well_formed(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    (MIN_TOKEN_LEN..=MAX_TOKEN_LEN).contains(&token.len())
        && !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

/// One configured client.
#[derive(Clone)]
struct Client {
    name: CallerName,
    token: Box<[u8]>,
}

/// The configured clients. Never printed with their tokens.
#[derive(Clone)]
pub struct ClientTokens {
    clients: Vec<Client>,
}

impl std::fmt::Debug for ClientTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.clients.iter().map(|c| c.name.as_str()))
            .finish()
    }
}

/// `NAME=TOKEN` entries and where each came from.
#[derive(Debug, Default)]
pub struct TokenEntries(Vec<(String, String)>);

impl TokenEntries {
    /// Adds `entries` (from flags or the environment), described as `origin`.
    pub fn add(&mut self, origin: &str, entries: &[String]) {
        self.0.extend(
            entries
                .iter()
                .filter(|e| !e.trim().is_empty())
                .map(|e| (origin.to_owned(), e.trim().to_owned())),
        );
    }

    /// Adds the lines of the file at `path`: one `NAME=TOKEN` per line; blank lines and
    /// lines starting with `#` are skipped.
    pub fn add_file(&mut self, path: &Path) -> Result<(), ClientTokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| ClientTokenError::File {
            path: path.display().to_string(),
            source,
        })?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            self.0
                .push((format!("{}:{}", path.display(), n + 1), line.to_owned()));
        }
        Ok(())
    }

    /// The clients, checked: `None` when there are none (the routes are then open to
    /// anyone, as an engine behind a shop's own order service is).
    pub fn into_tokens(
        self,
        admin_token: Option<&str>,
    ) -> Result<Option<ClientTokens>, ClientTokenError> {
        let mut clients: Vec<Client> = Vec::with_capacity(self.0.len());
        for (origin, entry) in self.0 {
            let Some((name, token)) = entry.split_once('=') else {
                return Err(ClientTokenError::Malformed {
                    entry: format!("{}…", entry.chars().take(4).collect::<String>()),
                    origin,
                });
            };
            let (name, token) = (name.trim(), token.trim());
            let name = CallerName::new(name).map_err(|reason| ClientTokenError::BadName {
                name: name.to_owned(),
                origin: origin.clone(),
                reason,
            })?;
            if !well_formed(token) {
                return Err(ClientTokenError::BadToken {
                    name: name.to_string(),
                    origin,
                });
            }
            if admin_token == Some(token) {
                return Err(ClientTokenError::AdminToken {
                    name: name.to_string(),
                });
            }
            if let Some(other) = clients.iter().find(|c| c.name == name) {
                return Err(ClientTokenError::DuplicateName {
                    name: other.name.to_string(),
                });
            }
            if let Some(other) = clients.iter().find(|c| *c.token == *token.as_bytes()) {
                return Err(ClientTokenError::SharedToken {
                    first: other.name.to_string(),
                    second: name.to_string(),
                });
            }
            clients.push(Client {
                name,
                token: token.as_bytes().into(),
            });
        }
        Ok((!clients.is_empty()).then_some(ClientTokens { clients }))
    }
}

/// The token of an `Authorization` value `Bearer <token>` (the scheme in any case, as RFC
/// 7235 has it), from an HTTP header or gRPC metadata alike.
pub fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"Bearer ")
        .then(|| token.trim_ascii())
}

impl ClientTokens {
    /// The caller whose token `given` is. Every configured token is compared, each in
    /// constant time, so the time taken says nothing of which one came close.
    pub fn caller(&self, given: &[u8]) -> Option<&CallerName> {
        let mut found = None;
        for client in &self.clients {
            if bool::from(client.token.ct_eq(given)) {
                found = Some(&client.name);
            }
        }
        found
    }

    /// The configured callers' names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.clients.iter().map(|c| c.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDERS: &str = "orders=0123456789abcdef0123";

    fn parse(entries: &[&str], admin: Option<&str>) -> Result<Option<ClientTokens>, String> {
        let mut all = TokenEntries::default();
        let entries: Vec<String> = entries.iter().map(|e| (*e).to_owned()).collect();
        all.add("--client-token", &entries);
        all.into_tokens(admin).map_err(|e| e.to_string())
    }

    #[test]
    fn a_token_names_its_caller_and_nothing_else_does() {
        let tokens = parse(&[ORDERS, "app=ZZZZZZZZZZZZZZZZZZZZ=="], None)
            .unwrap()
            .unwrap();
        let name = |t: &str| tokens.caller(t.as_bytes()).map(|n| n.to_string());
        assert_eq!(name("0123456789abcdef0123").as_deref(), Some("orders"));
        assert_eq!(name("ZZZZZZZZZZZZZZZZZZZZ==").as_deref(), Some("app"));
        assert_eq!(name("0123456789abcdef012"), None);
        assert_eq!(name(""), None);
        assert_eq!(tokens.names().collect::<Vec<_>>(), ["orders", "app"]);
    }

    #[test]
    fn none_configured_is_none() {
        assert!(parse(&[], None).unwrap().is_none());
        assert!(parse(&["  "], None).unwrap().is_none());
    }

    #[test]
    fn bad_entries_are_refused_with_what_to_change() {
        for (entries, admin, says) in [
            (vec!["orders"], None, "is not NAME=TOKEN"),
            (vec!["ord ers=0123456789abcdef0123"], None, "is not valid"),
            (vec!["orders=short"], None, "must be 16 to 256"),
            (
                vec!["orders=0123456789abcdef01,3"],
                None,
                "must be 16 to 256",
            ),
            (
                vec![ORDERS, "orders=fedcba9876543210fedc"],
                None,
                "given twice",
            ),
            (vec![ORDERS, "app=0123456789abcdef0123"], None, "same token"),
            (
                vec![ORDERS],
                Some("0123456789abcdef0123"),
                "is the admin token",
            ),
        ] {
            let error = parse(&entries, admin).unwrap_err();
            assert!(error.contains(says), "{entries:?}: {error}");
            assert!(
                !error.contains("0123456789abcdef0123"),
                "a token was printed: {error}"
            );
        }
    }

    #[test]
    fn a_file_gives_one_client_per_line() {
        let dir = std::env::temp_dir().join(format!("fs-tokens-{}", crate::ids::random_token()));
        std::fs::write(
            &dir,
            format!("# the shop\n\n{ORDERS}\napp=ZZZZZZZZZZZZZZZZZZZZ\n"),
        )
        .unwrap();
        let mut entries = TokenEntries::default();
        entries.add_file(&dir).unwrap();
        let tokens = entries.into_tokens(None).unwrap().unwrap();
        assert_eq!(tokens.names().collect::<Vec<_>>(), ["orders", "app"]);
        std::fs::remove_file(&dir).unwrap();
        let error = TokenEntries::default().add_file(&dir).unwrap_err();
        assert!(error.to_string().contains("cannot read"), "{error}");
    }
}
