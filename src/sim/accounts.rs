//! Strict mode of the simulator (`qwen-proxy sim --accounts FILE`): only known accounts sign
//! in, tokens expire, and each account has a completion quota.
//!
//! The file has one account per line, `email password [quota]` (`#` comments allowed); the
//! password is the plaintext, and sign-in expects its lowercase hex SHA-256 as the upstream
//! does. Tokens look like the upstream's: a JWT (HS256-style, three base64url parts) whose
//! payload is `{"id","last_password_change","exp","jti"}`, so `qwen-proxy check` can read
//! `exp`. The `jti` makes every token new, even two issued in the same second: a revoked
//! token (`@@sim:expire_token`) must not come back with the next sign-in.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::common::{base64url_decode, base64url_encode, epoch_secs, sha256_hex};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: String,
    pub email: String,
    password_sha256: String,
    /// Completions allowed before `RateLimited`; `None` = unlimited.
    pub quota: Option<u32>,
}

#[derive(Debug)]
pub struct Accounts {
    by_email: HashMap<String, Account>,
    token_ttl: Duration,
    secret: String,
    used: Mutex<HashMap<String, u32>>,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Invalid,
    Expired,
}

impl Accounts {
    /// Parse the accounts file text.
    pub fn parse(text: &str, token_ttl: Duration) -> Result<Self, String> {
        let mut by_email = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parts: Vec<&str> = line.split_whitespace().collect();
            let (email, password, quota) = match parts.as_slice() {
                [e, p] => (*e, *p, None),
                [e, p, q] => (
                    *e,
                    *p,
                    Some(
                        q.parse::<u32>()
                            .map_err(|_| format!("line {}: quota `{q}` is not a number", n + 1))?,
                    ),
                ),
                _ => return Err(format!("line {}: expected `email password [quota]`", n + 1)),
            };
            let account = Account {
                id: sha256_hex(email.as_bytes())[..24].to_owned(),
                email: email.to_owned(),
                password_sha256: sha256_hex(password.as_bytes()),
                quota,
            };
            by_email.insert(email.to_owned(), account);
        }
        if by_email.is_empty() {
            return Err("the accounts file lists no account".to_owned());
        }
        Ok(Self {
            by_email,
            token_ttl,
            secret: uuid::Uuid::new_v4().to_string(),
            used: Mutex::new(HashMap::new()),
        })
    }

    /// Sign in with the SHA-256 (hex) of the password; `None` for an unknown email or a wrong
    /// (or plaintext) password.
    pub fn sign_in(&self, email: &str, password_sha256: &str) -> Option<(Account, String)> {
        let a = self.by_email.get(email)?;
        (a.password_sha256 == password_sha256).then(|| (a.clone(), self.issue(a)))
    }

    fn issue(&self, a: &Account) -> String {
        let header = base64url_encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = base64url_encode(
            format!(
                r#"{{"id":"{}","last_password_change":0,"exp":{},"jti":"{}"}}"#,
                a.id,
                epoch_secs() + self.token_ttl.as_secs(),
                uuid::Uuid::new_v4().simple()
            )
            .as_bytes(),
        );
        let sig = base64url_encode(&Sha256::digest(
            format!("{}.{header}.{payload}", self.secret).as_bytes(),
        ));
        format!("{header}.{payload}.{sig}")
    }

    /// The account id of a valid token.
    pub fn verify(&self, token: &str) -> Result<String, TokenError> {
        let (id, exp) = self.signed_claims(token).ok_or(TokenError::Invalid)?;
        if exp <= epoch_secs() {
            return Err(TokenError::Expired);
        }
        Ok(id)
    }

    /// The account id a token of ours names, whether or not it has expired (`None` for a
    /// token this simulator did not sign): whose request an expired token was.
    pub fn claimed_id(&self, token: &str) -> Option<String> {
        self.signed_claims(token).map(|(id, _)| id)
    }

    /// `(id, exp)` of a token whose signature is ours.
    fn signed_claims(&self, token: &str) -> Option<(String, u64)> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let expected = base64url_encode(&Sha256::digest(
            format!("{}.{h}.{p}", self.secret).as_bytes(),
        ));
        if expected != s {
            return None;
        }
        let payload: serde_json::Value = serde_json::from_slice(&base64url_decode(p)?).ok()?;
        let exp = payload["exp"].as_u64()?;
        Some((payload["id"].as_str()?.to_owned(), exp))
    }

    /// A fresh token for a known account (a refresh of its session).
    pub fn issue_for(&self, email: &str) -> Option<(Account, String)> {
        let a = self.by_email.get(email)?;
        Some((a.clone(), self.issue(a)))
    }

    /// The email of an account id.
    pub fn email_of(&self, account_id: &str) -> Option<&str> {
        self.by_email
            .values()
            .find(|a| a.id == account_id)
            .map(|a| a.email.as_str())
    }

    /// The account id of an email (`None`: not listed).
    pub fn id_of(&self, email: &str) -> Option<&str> {
        self.by_email.get(email).map(|a| a.id.as_str())
    }

    /// How long issued tokens live (`--token-ttl-secs`).
    pub fn token_ttl(&self) -> Duration {
        self.token_ttl
    }

    /// Count one completion; `false` when the account's quota is used up.
    pub fn take_quota(&self, account_id: &str) -> bool {
        let quota = self
            .by_email
            .values()
            .find(|a| a.id == account_id)
            .and_then(|a| a.quota);
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let n = used.entry(account_id.to_owned()).or_insert(0);
        match quota {
            Some(q) if *n >= q => false,
            _ => {
                *n += 1;
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_in_verify_expire_and_quota() {
        let acc = Accounts::parse(
            "# test\nme@x.io s3cret 1\nyou@x.io pw\n",
            Duration::from_secs(3600),
        )
        .unwrap();
        assert!(
            acc.sign_in("me@x.io", "s3cret").is_none(),
            "plaintext is refused"
        );
        assert!(acc.sign_in("nobody@x.io", &sha256_hex(b"s3cret")).is_none());
        let (a, token) = acc.sign_in("me@x.io", &sha256_hex(b"s3cret")).unwrap();
        assert_eq!(acc.verify(&token), Ok(a.id.clone()));
        assert_eq!(acc.verify(&format!("{token}x")), Err(TokenError::Invalid));
        assert!(acc.take_quota(&a.id));
        assert!(!acc.take_quota(&a.id), "quota of 1");
        let expired = Accounts::parse("me@x.io pw", Duration::ZERO).unwrap();
        let (_, t) = expired.sign_in("me@x.io", &sha256_hex(b"pw")).unwrap();
        assert_eq!(expired.verify(&t), Err(TokenError::Expired));
        // Whose it was is still known (the same email gives the same id).
        assert_eq!(expired.claimed_id(&t), Some(a.id.clone()));
        assert_eq!(acc.claimed_id("a.b.c"), None);
        let (_, again) = acc.issue_for("me@x.io").unwrap();
        assert_eq!(acc.verify(&again), Ok(a.id.clone()));
        assert_ne!(again, token, "every token is new");
        assert_eq!(acc.email_of(&a.id), Some("me@x.io"));
        assert_eq!(acc.id_of("me@x.io"), Some(a.id.as_str()));
        assert_eq!(acc.id_of("nobody@x.io"), None);
        assert!(acc.issue_for("nobody@x.io").is_none());
        assert!(Accounts::parse("bad line here extra", Duration::ZERO).is_err());
    }

    #[test]
    fn base64url_roundtrip() {
        for data in [&b""[..], b"f", b"fo", b"foo", b"foob", b"{\"exp\":1}"] {
            assert_eq!(base64url_decode(&base64url_encode(data)).unwrap(), data);
        }
    }
}
