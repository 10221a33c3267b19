//! What the operator configured for each account: the accounts file
//! (`QWEN_ACCOUNTS_FILE`, a JSON array — a public contract, README "Accounts") or, without
//! one, the single-account variables (`QWEN_COOKIES`, `QWEN_TOKEN`, `QWEN_BX_UA`,
//! `QWEN_USER_AGENT`) as a pool of one.
//!
//! Parsed once at start-up (and on reload) into typed specs; every problem of the file is
//! reported at once, and no secret ever appears in a message.

use std::path::Path;
use std::time::Duration;

use hyper::Uri;
use serde::Deserialize;

use crate::common::{cookie_from, Secret};

/// Pacing of file accounts unless the entry says otherwise (peers: one in flight and 3 s
/// between requests is the cautious end; these keep a coding agent's turns flowing).
pub(crate) const DEFAULT_MAX_INFLIGHT: u32 = 4;
pub(crate) const DEFAULT_MIN_INTERVAL: Duration = Duration::from_millis(1_000);

/// One account as configured. `Debug` shows no secret (the proxy URL may hold a
/// password).
#[derive(Clone)]
pub struct AccountSpec {
    /// The operator's name for it: in logs, `/health`, metrics and the admin API.
    pub name: String,
    pub login: Login,
    pub bx_ua: Option<Secret>,
    pub bx_umidtoken: Option<Secret>,
    pub user_agent: Option<String>,
    /// Outbound HTTP proxy (CONNECT) for this account's upstream calls.
    pub proxy: Option<Uri>,
    /// Upstream turns in flight at once on this account; `None`: unlimited.
    pub max_inflight: Option<u32>,
    /// Least time between two turns started on this account (jittered up to +25 %).
    pub min_interval: Duration,
}

impl std::fmt::Debug for AccountSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountSpec")
            .field("name", &self.name)
            .field("kind", &self.login.kind())
            .field("proxy", &self.proxy.is_some())
            .field("max_inflight", &self.max_inflight)
            .field("min_interval", &self.min_interval)
            .finish_non_exhaustive()
    }
}

/// How the account authenticates.
#[derive(Debug, Clone)]
pub enum Login {
    /// A browser session: its Cookie header and the account JWT (`token=` in it, or given
    /// apart). It cannot sign in again; a `refresh_token=` cookie lets it refresh.
    Cookies { cookies: Secret, token: Secret },
    /// Signs in by itself (and again when its token runs out).
    Password { email: String, password: Secret },
}

impl Login {
    pub fn kind(&self) -> &'static str {
        match self {
            Login::Cookies { .. } => "cookies",
            Login::Password { .. } => "password",
        }
    }
}

/// One entry of the file, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    #[serde(default)]
    cookies: Option<String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    bx_ua: Option<String>,
    #[serde(default)]
    bx_umidtoken: Option<String>,
    #[serde(default)]
    user_agent: Option<String>,
    #[serde(default)]
    proxy: Option<String>,
    #[serde(default)]
    max_inflight: Option<u32>,
    #[serde(default)]
    min_interval_ms: Option<u64>,
}

/// The largest accounts file read (10,000 accounts take about 3 MB).
pub(crate) const MAX_FILE_BYTES: u64 = 32 << 20;

/// Read and check the accounts file: it must exist, be a regular file (a FIFO or a device
/// would block the reader), at most [`MAX_FILE_BYTES`], not readable by everyone (it holds
/// passwords and session cookies), and parse into at least one valid account.
pub(crate) fn load_file(path: &Path) -> Result<Vec<AccountSpec>, Vec<String>> {
    use std::io::Read;
    let shown = path.display();
    let problem = |p: &dyn std::fmt::Display| vec![format!("QWEN_ACCOUNTS_FILE {shown}: {p}")];
    let meta = std::fs::metadata(path).map_err(|e| problem(&e))?;
    if !meta.is_file() {
        return Err(problem(&"is not a regular file"));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(problem(&format_args!(
            "is {} bytes, more than the {MAX_FILE_BYTES} an accounts file may have",
            meta.len()
        )));
    }
    if let Some(p) = permission_problem(&meta) {
        return Err(problem(&p));
    }
    // Bounded even if the file grows between the check and the read.
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE_BYTES).read_to_string(&mut text))
        .map_err(|e| problem(&e))?;
    parse(&text).map_err(|errors| {
        errors
            .into_iter()
            .map(|e| format!("QWEN_ACCOUNTS_FILE {shown}: {e}"))
            .collect()
    })
}

#[cfg(unix)]
fn permission_problem(meta: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    (mode & 0o004 != 0).then(|| {
        format!(
            "is readable by every user (mode {mode:03o}) but holds account secrets; \
             restrict it, e.g. `chmod 600` (or 640 for a group the proxy runs in)"
        )
    })
}

#[cfg(not(unix))]
fn permission_problem(_: &std::fs::Metadata) -> Option<String> {
    None
}

/// Parse the file's text. Errors name the entry (by position and name), never a secret.
pub(crate) fn parse(text: &str) -> Result<Vec<AccountSpec>, Vec<String>> {
    let entries: Vec<serde_json::Value> = match serde_json::from_str(text) {
        Ok(serde_json::Value::Array(a)) => a,
        Ok(_) => return Err(vec!["must be a JSON array of account objects".to_owned()]),
        // serde_json's message has line and column and quotes no input.
        Err(e) => return Err(vec![format!("is not valid JSON: {e}")]),
    };
    if entries.is_empty() {
        return Err(vec!["lists no account".to_owned()]);
    }
    let mut errors = Vec::new();
    let mut specs: Vec<AccountSpec> = Vec::new();
    for (i, value) in entries.into_iter().enumerate() {
        let at = format!("entry {}", i + 1);
        // Only an object: serde would also fill the fields from an array, in order, so
        // `["a", "token=…"]` would be an account whose fields nobody named.
        if !value.is_object() {
            errors.push(format!(
                "{at}: must be a JSON object of the account's fields (`name`, `cookies` …), not {}",
                json_kind(&value)
            ));
            continue;
        }
        let entry: Entry = match serde_json::from_value(value) {
            Ok(e) => e,
            Err(e) => {
                errors.push(format!("{at}: {}", describe_serde(&e)));
                continue;
            }
        };
        match entry.into_spec() {
            Ok(spec) => {
                if specs.iter().any(|s| s.name == spec.name) {
                    errors.push(format!("{at}: the name {:?} is used twice", spec.name));
                }
                specs.push(spec);
            }
            Err(e) => errors.push(format!("{at}: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(specs)
    } else {
        Err(errors)
    }
}

/// What a JSON value is, without any of its content.
fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// serde's messages quote unexpected *values* for some errors (`invalid type: string
/// "…"`): keep only the kind of problem, which never includes a secret.
fn describe_serde(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    if msg.starts_with("unknown field") || msg.starts_with("missing field") {
        // `unknown field `x`, expected one of …`: names only.
        return msg;
    }
    match msg.split_once(':') {
        Some((kind, _)) => format!("{kind} (check the types of the fields)"),
        None => msg,
    }
}

impl Entry {
    fn into_spec(self) -> Result<AccountSpec, String> {
        let name = self.name.trim().to_owned();
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            // Not an email address: names are shown on `/health` and in metrics.
            return Err(
                "`name` must be 1-64 characters of letters, digits, `-`, `_`, `.`".to_owned(),
            );
        }
        let login = match (self.cookies, self.email, self.password) {
            (Some(cookies), None, None) => {
                let token = match self.token.or_else(|| cookie_from(&cookies, "token")) {
                    Some(t) if !t.trim().is_empty() => t.trim().to_owned(),
                    _ => {
                        return Err(format!(
                            "account {name:?}: `cookies` has no `token=` cookie and no `token` is given"
                        ))
                    }
                };
                header_safe(&name, "cookies", &cookies)?;
                header_safe(&name, "token", &token)?;
                Login::Cookies {
                    cookies: Secret::new(cookies),
                    token: Secret::new(token),
                }
            }
            (None, Some(email), Some(password)) => {
                if !email.contains('@') || email.chars().any(char::is_control) {
                    return Err(format!("account {name:?}: `email` is not an address"));
                }
                if password.is_empty() {
                    return Err(format!("account {name:?}: `password` is empty"));
                }
                if self.token.is_some() {
                    return Err(format!(
                        "account {name:?}: `token` goes with `cookies`, not with a password"
                    ));
                }
                Login::Password {
                    email,
                    password: Secret::new(password),
                }
            }
            _ => {
                return Err(format!(
                    "account {name:?}: give either `cookies` or both `email` and `password`"
                ))
            }
        };
        for (field, v) in [
            ("bx_ua", &self.bx_ua),
            ("bx_umidtoken", &self.bx_umidtoken),
            ("user_agent", &self.user_agent),
        ] {
            if let Some(v) = v {
                header_safe(&name, field, v)?;
            }
        }
        let proxy = match self.proxy {
            None => None,
            Some(p) => Some(parse_proxy(&p).map_err(|e| format!("account {name:?}: {e}"))?),
        };
        if self.max_inflight == Some(0) {
            return Err(format!(
                "account {name:?}: `max_inflight` must be at least 1"
            ));
        }
        Ok(AccountSpec {
            name,
            login,
            bx_ua: self.bx_ua.map(Secret::new),
            bx_umidtoken: self.bx_umidtoken.map(Secret::new),
            user_agent: self.user_agent,
            proxy,
            max_inflight: Some(self.max_inflight.unwrap_or(DEFAULT_MAX_INFLIGHT)),
            min_interval: self
                .min_interval_ms
                .map_or(DEFAULT_MIN_INTERVAL, Duration::from_millis),
        })
    }
}

fn header_safe(name: &str, field: &str, v: &str) -> Result<(), String> {
    if hyper::header::HeaderValue::from_str(v).is_err() {
        return Err(format!(
            "account {name:?}: `{field}` is not a valid HTTP header value"
        ));
    }
    Ok(())
}

/// An outbound proxy: `http://[user:pass@]host:port` (HTTP CONNECT). The message never
/// repeats the URL (it may hold a password).
fn parse_proxy(p: &str) -> Result<Uri, String> {
    match p.parse::<Uri>() {
        Ok(u) if u.scheme_str() == Some("http") && u.host().is_some() => Ok(u),
        Ok(u) if u.scheme_str().is_some_and(|s| s != "http") => Err(
            "`proxy` must be an http:// proxy URL (HTTP CONNECT); other schemes are not supported"
                .to_owned(),
        ),
        _ => Err("`proxy` is not a URL like http://host:port".to_owned()),
    }
}

/// The pool of one the single-account variables describe (no pacing: the seed had none).
pub(crate) fn from_env(
    cookies: &Secret,
    token: &Secret,
    bx_ua: Option<&Secret>,
    bx_umidtoken: Option<&Secret>,
    user_agent: Option<&str>,
) -> AccountSpec {
    AccountSpec {
        name: "default".to_owned(),
        login: Login::Cookies {
            cookies: cookies.clone(),
            token: token.clone(),
        },
        bx_ua: bx_ua.cloned(),
        bx_umidtoken: bx_umidtoken.cloned(),
        user_agent: user_agent.map(str::to_owned),
        proxy: None,
        max_inflight: None,
        min_interval: Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_kinds_parse_with_their_defaults() {
        let specs = parse(
            r#"[
              {"name": "a", "cookies": "x=1; token=tok-a"},
              {"name": "b", "email": "b@x.io", "password": "pw", "proxy": "http://u:p@127.0.0.1:8080",
               "max_inflight": 1, "min_interval_ms": 3000, "user_agent": "UA"}
            ]"#,
        )
        .unwrap();
        assert_eq!(specs.len(), 2);
        assert!(
            matches!(&specs[0].login, Login::Cookies { token, .. } if token.expose() == "tok-a")
        );
        assert_eq!(specs[0].max_inflight, Some(DEFAULT_MAX_INFLIGHT));
        assert_eq!(specs[0].min_interval, DEFAULT_MIN_INTERVAL);
        assert!(matches!(&specs[1].login, Login::Password { email, .. } if email == "b@x.io"));
        assert_eq!(specs[1].max_inflight, Some(1));
        assert_eq!(specs[1].min_interval, Duration::from_millis(3000));
        assert_eq!(specs[1].proxy.as_ref().unwrap().port_u16(), Some(8080));
    }

    #[test]
    fn every_problem_is_reported_without_secrets() {
        let errors = parse(
            r#"[
              {"name": "a", "cookies": "nothing-here-SECRET1"},
              {"name": "b", "email": "b@x.io"},
              {"name": "c", "email": "c@x.io", "password": "SECRET2", "cookies": "token=SECRET3"},
              {"name": "d", "cookies": "token=x", "proxy": "socks5://SECRET4@h:1"},
              {"name": "e", "cookies": "token=x", "colour": "blue"},
              {"name": "e", "cookies": "token=y", "max_inflight": 0},
              {"name": "f", "cookies": 7},
              {"name": "bad name", "cookies": "token=z"}
            ]"#,
        )
        .unwrap_err();
        assert_eq!(errors.len(), 8, "{errors:#?}");
        let all = errors.join("\n");
        for secret in ["SECRET1", "SECRET2", "SECRET3", "SECRET4"] {
            assert!(!all.contains(secret), "{secret} leaked: {all}");
        }
        assert!(errors[0].contains("no `token=`"));
        assert!(errors[1].contains("either `cookies` or both"));
        assert!(errors[3].contains("http://"));
        assert!(errors[4].contains("unknown field `colour`"));
        assert!(errors[5].contains("max_inflight"));
        assert!(errors[6].contains("invalid type"));
        assert!(errors[7].contains("`name` must be"));
    }

    #[test]
    fn an_entry_must_be_an_object_never_fields_in_order() {
        // serde fills a struct from an array too, field by field in order: this was an
        // account named `a` with the cookies `token=SECRET1` (fuzz finding, accounts_file).
        let errors = parse(
            r#"[
              ["a", "token=SECRET1"],
              {"name": "b", "cookies": "token=x"},
              "token=SECRET2",
              null
            ]"#,
        )
        .unwrap_err();
        assert_eq!(
            errors,
            [
                "entry 1: must be a JSON object of the account's fields (`name`, `cookies` …), not an array",
                "entry 3: must be a JSON object of the account's fields (`name`, `cookies` …), not a string",
                "entry 4: must be a JSON object of the account's fields (`name`, `cookies` …), not null",
            ]
        );
        assert!(parse(r#"[["a", "token=x"]]"#).is_err());
    }

    #[test]
    fn the_file_must_be_an_array_of_at_least_one() {
        assert!(parse("{}").unwrap_err()[0].contains("JSON array"));
        assert!(parse("[]").unwrap_err()[0].contains("no account"));
        assert!(parse("[").unwrap_err()[0].contains("not valid JSON"));
    }

    #[cfg(unix)]
    #[test]
    fn a_world_readable_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("qp-accounts-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("accounts.json");
        std::fs::write(&path, r#"[{"name":"a","cookies":"token=t"}]"#).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_file(&path).unwrap_err();
        assert!(
            e[0].contains("readable by every user") && e[0].contains("chmod 600"),
            "{e:?}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(load_file(&path).unwrap().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
