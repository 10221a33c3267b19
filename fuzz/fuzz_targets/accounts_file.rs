//! The accounts file parser (`QWEN_ACCOUNTS_FILE`, `accounts_file::parse`, reached through
//! the `qwen_proxy::fuzzing` facade).
//!
//! Invariants:
//! * No panic.
//! * Accepted: one account per entry of the array, in order, every entry an object (never
//!   fields filled from an array in order); names unique, 1-64 characters
//!   of `[A-Za-z0-9._-]`; `max_inflight` at least 1; a cookie login has a non-empty token,
//!   and cookies and token are valid header values; a password login has an email address
//!   and a non-empty password; a proxy is an `http://` URL with a host; `bx_ua`,
//!   `bx_umidtoken` and `user_agent` are valid header values.
//! * Refused: at least one problem; either one about the file as a whole or one per bad
//!   entry at most, each naming its entry (`entry N: …`, in order).
//! * No secret leaks: a secret value (cookies, token, password, `bx_ua`, `bx_umidtoken`, a
//!   proxy URL) marked with `SECRET_MARK`/`ASCII_MARK` never appears in an error or in an
//!   account's `Debug` output — unless the file uses the mark in a key or a `name` (an
//!   unknown field's key and a duplicate name are quoted, legitimately).
//!
//! Input: the file's text (invalid UTF-8 replaced); or, after a leading 0 byte, a file
//! generated from the rest (`arbitrary`): entries of every shape, secrets marked.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};

use qwen_proxy::fuzzing::{parse_accounts_file, AccountSpec, Login};

const SECRET_MARK: &str = "\u{1F511}";
const ASCII_MARK: &str = "SeKrIt";
const MARKS: [&str; 2] = [SECRET_MARK, ASCII_MARK];

const FIELDS: [&str; 11] = [
    "name",
    "cookies",
    "token",
    "email",
    "password",
    "bx_ua",
    "bx_umidtoken",
    "user_agent",
    "proxy",
    "max_inflight",
    "min_interval_ms",
];

#[derive(Arbitrary, Debug)]
enum GenName {
    Valid(u8),
    Empty,
    Spaced(u8),
    Other(String),
    Number,
    Missing,
}

#[derive(Arbitrary, Debug)]
enum GenLogin {
    Cookies {
        token_cookie: bool,
        token: Option<bool>,
        rest: String,
    },
    Password {
        email: Option<String>,
        password: Option<bool>,
        token: bool,
    },
    Both,
    Neither,
}

#[derive(Arbitrary, Debug)]
enum GenProxy {
    Http { userinfo: bool, port: u16 },
    Socks,
    Garbage(String),
}

#[derive(Arbitrary, Debug)]
struct GenEntry {
    name: GenName,
    login: GenLogin,
    bx_ua: Option<bool>,
    bx_umidtoken: Option<bool>,
    user_agent: Option<String>,
    proxy: Option<GenProxy>,
    max_inflight: Option<i64>,
    min_interval_ms: Option<i64>,
    extra: Option<String>,
    /// A field given a value of the wrong type (its index in `FIELDS`).
    wrong_type: Option<u8>,
    secret_tail: String,
}

fn unmarked(s: String) -> String {
    MARKS.iter().fold(s, |s, m| s.replace(m, ""))
}

fn entry(e: GenEntry, i: usize) -> Value {
    let secret = |what: &str| format!("{SECRET_MARK}{ASCII_MARK}{what}{i}{}", e.secret_tail);
    let mut o = Map::new();
    match e.name {
        GenName::Valid(n) => drop(o.insert("name".into(), json!(format!("acct-{}", n % 8)))),
        GenName::Empty => drop(o.insert("name".into(), json!(""))),
        GenName::Spaced(n) => drop(o.insert("name".into(), json!(format!(" a.{n} ")))),
        GenName::Other(s) => drop(o.insert("name".into(), json!(unmarked(s)))),
        GenName::Number => drop(o.insert("name".into(), json!(7))),
        GenName::Missing => {}
    }
    match e.login {
        GenLogin::Cookies {
            token_cookie,
            token,
            rest,
        } => {
            let cookies = if token_cookie {
                format!("a=1; token={}; {}", secret("tok"), unmarked(rest))
            } else {
                format!("a={}; {}", secret("ck"), unmarked(rest))
            };
            o.insert("cookies".into(), json!(cookies));
            match token {
                Some(true) => drop(o.insert("token".into(), json!(secret("jwt")))),
                Some(false) => drop(o.insert("token".into(), json!("  "))),
                None => {}
            }
        }
        GenLogin::Password {
            email,
            password,
            token,
        } => {
            if let Some(email) = email {
                o.insert("email".into(), json!(unmarked(email)));
            }
            match password {
                Some(true) => drop(o.insert("password".into(), json!(secret("pw")))),
                Some(false) => drop(o.insert("password".into(), json!(""))),
                None => {}
            }
            if token {
                o.insert("token".into(), json!(secret("jwt")));
            }
        }
        GenLogin::Both => {
            o.insert("cookies".into(), json!(format!("token={}", secret("tok"))));
            o.insert("email".into(), json!("a@b.c"));
            o.insert("password".into(), json!(secret("pw")));
        }
        GenLogin::Neither => {}
    }
    if let Some(valid) = e.bx_ua {
        o.insert(
            "bx_ua".into(),
            json!(if valid {
                secret("ua")
            } else {
                format!("{}\n", secret("ua"))
            }),
        );
    }
    if let Some(valid) = e.bx_umidtoken {
        o.insert(
            "bx_umidtoken".into(),
            json!(if valid {
                secret("umid")
            } else {
                format!("\u{7f}{}", secret("umid"))
            }),
        );
    }
    if let Some(ua) = e.user_agent {
        o.insert("user_agent".into(), json!(unmarked(ua)));
    }
    match e.proxy {
        Some(GenProxy::Http {
            userinfo: true,
            port,
        }) => drop(o.insert(
            "proxy".into(),
            json!(format!("http://u:{ASCII_MARK}{i}@127.0.0.1:{port}")),
        )),
        Some(GenProxy::Http {
            userinfo: false,
            port,
        }) => drop(o.insert("proxy".into(), json!(format!("http://proxy.local:{port}")))),
        Some(GenProxy::Socks) => drop(o.insert(
            "proxy".into(),
            json!(format!("socks5://u:{ASCII_MARK}{i}@h:1")),
        )),
        Some(GenProxy::Garbage(s)) => {
            drop(o.insert("proxy".into(), json!(format!("{ASCII_MARK}{s}"))))
        }
        None => {}
    }
    if let Some(n) = e.max_inflight {
        o.insert("max_inflight".into(), json!(n));
    }
    if let Some(n) = e.min_interval_ms {
        o.insert("min_interval_ms".into(), json!(n));
    }
    if let Some(k) = e.extra {
        o.insert(unmarked(k), json!(secret("extra")));
    }
    if let Some(f) = e.wrong_type {
        let f = FIELDS[usize::from(f) % FIELDS.len()];
        o.insert(
            f.into(),
            if f == "max_inflight" {
                json!(secret("n"))
            } else {
                json!([1])
            },
        );
    }
    Value::Object(o)
}

fn generated(data: &[u8]) -> Option<String> {
    let mut u = Unstructured::new(data);
    let n = u.int_in_range(0..=5).ok()?;
    let mut entries = Vec::new();
    for i in 0..n {
        entries.push(entry(GenEntry::arbitrary(&mut u).ok()?, i));
    }
    let value = if u.ratio(1u8, 16u8).unwrap_or(false) {
        json!({"accounts": entries})
    } else {
        Value::Array(entries)
    };
    serde_json::to_string_pretty(&value).ok()
}

fn header_safe(v: &str) -> bool {
    v.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

fn keys_of(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                out.push(k.clone());
                keys_of(v, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| keys_of(v, out)),
        _ => {}
    }
}

fn check_spec(spec: &AccountSpec) {
    let name = &spec.name;
    assert!(
        (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
        "a bad name {name:?}"
    );
    assert!(spec.max_inflight.is_some_and(|n| n >= 1), "{spec:?}");
    match &spec.login {
        Login::Cookies { cookies, token } => {
            assert!(
                !token.expose().is_empty() && token.expose() == token.expose().trim(),
                "{spec:?}"
            );
            assert!(
                header_safe(cookies.expose()) && header_safe(token.expose()),
                "{spec:?}"
            );
        }
        Login::Password { email, password } => {
            assert!(
                email.contains('@') && !email.chars().any(char::is_control),
                "{spec:?}"
            );
            assert!(!password.expose().is_empty(), "{spec:?}");
        }
    }
    for v in [&spec.bx_ua, &spec.bx_umidtoken].into_iter().flatten() {
        assert!(header_safe(v.expose()), "{spec:?}");
    }
    if let Some(ua) = &spec.user_agent {
        assert!(header_safe(ua), "{spec:?}");
    }
    if let Some(p) = &spec.proxy {
        assert_eq!(p.scheme_str(), Some("http"), "{spec:?}");
        assert!(p.host().is_some(), "{spec:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let text = match data.split_first() {
        Some((0, rest)) => match generated(rest) {
            Some(t) => t,
            None => return,
        },
        _ => String::from_utf8_lossy(data).into_owned(),
    };
    let parsed: Option<Value> = serde_json::from_str(&text).ok();
    // Keys and names are quoted in errors legitimately (`unknown field`, `used twice`).
    let mut keys = Vec::new();
    if let Some(v) = &parsed {
        keys_of(v, &mut keys);
        if let Value::Array(entries) = v {
            keys.extend(
                entries
                    .iter()
                    .filter_map(|e| e.get("name")?.as_str().map(str::to_owned)),
            );
        }
    }
    let marked_key = |m: &str| keys.iter().any(|k| k.contains(m));
    match parse_accounts_file(&text) {
        Ok(specs) => {
            let entries = match &parsed {
                Some(Value::Array(a)) => a,
                other => panic!("accepted a file that is not a JSON array: {other:?}"),
            };
            assert!(
                entries.iter().all(Value::is_object),
                "accepted an entry that is not an object: {entries:?}"
            );
            assert_eq!(specs.len(), entries.len(), "one account per entry");
            for (i, spec) in specs.iter().enumerate() {
                check_spec(spec);
                assert!(
                    specs[..i].iter().all(|s| s.name != spec.name),
                    "the name {:?} twice",
                    spec.name
                );
                let shown = format!("{spec:?}");
                for m in MARKS {
                    assert!(
                        !shown.contains(m) || spec.name.contains(m),
                        "a secret in Debug: {shown}"
                    );
                }
            }
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "refused without a reason");
            let entries = match &parsed {
                Some(Value::Array(a)) => Some(a.len()),
                _ => None,
            };
            match entries {
                Some(n) if n > 0 => {
                    assert!(
                        errors.len() <= n,
                        "{} errors for {n} entries: {errors:?}",
                        errors.len()
                    );
                    let mut last = 0;
                    for e in &errors {
                        let at: usize = e
                            .strip_prefix("entry ")
                            .and_then(|r| r.split_once(": "))
                            .and_then(|(n, _)| n.parse().ok())
                            .unwrap_or_else(|| panic!("an error that names no entry: {e:?}"));
                        assert!(
                            (1..=n).contains(&at) && at > last,
                            "entry numbers out of order: {errors:?}"
                        );
                        last = at;
                    }
                }
                _ => assert_eq!(errors.len(), 1, "{errors:?}"),
            }
            let all = errors.join("\n");
            for e in &errors {
                assert!(!e.trim().is_empty(), "an empty error: {errors:?}");
            }
            for m in MARKS {
                assert!(
                    !all.contains(m) || marked_key(m),
                    "a secret in the errors: {all}"
                );
            }
        }
    }
});
