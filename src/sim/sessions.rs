//! Sessions of the newer auth (auth.qwen.ai): opaque refresh tokens, rotated on every use,
//! and access tokens the server revoked before their time (`@@sim:expire_token`).

use std::collections::{HashMap, HashSet};

#[derive(Debug, Default)]
pub struct Sessions {
    /// Live refresh token → the email of its account. An account may hold several sessions
    /// (browsers, proxy instances); each refresh token is good for one use.
    refresh: HashMap<String, String>,
    /// Access tokens answered with "Token has expired" from now on, whatever their `exp`.
    revoked: HashSet<String>,
}

fn new_refresh_token() -> String {
    format!("rt-{}", uuid::Uuid::new_v4().simple())
}

impl Sessions {
    /// A new session for `email` (at sign-in): its refresh token.
    pub fn open(&mut self, email: &str) -> String {
        let token = new_refresh_token();
        self.refresh.insert(token.clone(), email.to_owned());
        token
    }

    /// Use a refresh token: `(email, its successor)`, the used one invalid from now on;
    /// `None` for an unknown or already used token.
    pub fn rotate(&mut self, refresh_token: &str) -> Option<(String, String)> {
        let email = self.refresh.remove(refresh_token)?;
        let next = self.open(&email);
        Some((email, next))
    }

    pub fn revoke(&mut self, access_token: &str) {
        self.revoked.insert(access_token.to_owned());
    }

    pub fn is_revoked(&self, access_token: &str) -> bool {
        self.revoked.contains(access_token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_rotate_and_are_good_for_one_use() {
        let mut s = Sessions::default();
        let first = s.open("me@x.io");
        let other = s.open("me@x.io");
        assert!(first.starts_with("rt-") && first.len() == 35, "{first}");
        let (email, second) = s.rotate(&first).unwrap();
        assert_eq!(email, "me@x.io");
        assert_ne!(second, first);
        assert_eq!(s.rotate(&first), None, "the used token is refused");
        assert_eq!(s.rotate("rt-unknown"), None);
        // Other sessions of the account are untouched; the successor works once.
        assert!(s.rotate(&other).is_some());
        assert!(s.rotate(&second).is_some());
        assert_eq!(s.rotate(&second), None);
    }

    #[test]
    fn revoked_tokens_stay_revoked() {
        let mut s = Sessions::default();
        assert!(!s.is_revoked("t"));
        s.revoke("t");
        assert!(s.is_revoked("t") && !s.is_revoked("u"));
    }
}
