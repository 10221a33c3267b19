//! The accounts side of one request's turn: the account of a failed attempt is blamed, and
//! the turn stays, tries again with a renewed token, or moves to a fresh chat elsewhere.

use crate::accounts::signin::Renewal;
use crate::accounts::{Blame, Used};
use crate::app::AppState;
use crate::error::ProxyError;

/// The accounts side of one request: which accounts it has left, and the one renewal of
/// an expired token it may do on each.
#[derive(Debug, Default)]
pub(super) struct AccountTrail {
    /// Accounts this request left (quota, challenge, ban): not tried again.
    pub left: Vec<String>,
    /// The next chat is for a turn moved off an account taken out of rotation: not counted
    /// against the request's chats (such moves are bounded by the pool).
    pub moving: bool,
    /// Accounts whose token this request renewed (once each).
    renewed: Vec<String>,
    /// A challenge moved the request once; a second one is not the account's doing.
    moved_on_challenge: bool,
    /// The account and token of the last attempt.
    pub last: Option<Used>,
}

/// What to do after an attempt failed on an account.
pub(super) enum AccountMove {
    /// The failure says nothing about the account: the usual fallbacks decide.
    Stay,
    /// Same chat, same account, new token.
    Again,
    /// A fresh chat on another account.
    Elsewhere,
    /// Give up with this error.
    Fail(ProxyError),
}

/// Blame the account of the failed attempt and decide whether the turn moves.
pub(super) async fn account_move(
    state: &AppState,
    trail: &mut AccountTrail,
    e: &ProxyError,
) -> AccountMove {
    let Some(used) = trail.last.take() else {
        return AccountMove::Stay;
    };
    let pool = &state.accounts;
    let name = used.account.name().to_owned();
    let blame = pool.blame(&used.account, e);
    let moved = |trail: &mut AccountTrail| {
        trail.left.push(name.clone());
        if pool.can_move(&trail.left) {
            state
                .metrics
                .account_turns
                .with_label_values(&[&name, "true"])
                .inc();
            tracing::info!(
                account = %crate::untrusted::Untrusted(&name),
                error = e.metric_label(),
                "moving the turn to another account"
            );
            AccountMove::Elsewhere
        } else {
            AccountMove::Stay
        }
    };
    match blame {
        // The account's uploads are paused (its parse step refused it for now): another
        // account can upload the turn's documents.
        Blame::None if matches!(e, ProxyError::UploadsPaused { .. }) => moved(trail),
        Blame::None | Blame::ChatChallenge => AccountMove::Stay,
        Blame::Quota => match moved(trail) {
            // Every account is cooling: the earliest return, not this one's.
            AccountMove::Stay => AccountMove::Fail(pool.unavailable()),
            m => m,
        },
        Blame::Forbidden => moved(trail),
        Blame::Challenged if !trail.moved_on_challenge => {
            trail.moved_on_challenge = true;
            moved(trail)
        }
        Blame::Challenged => AccountMove::Stay,
        Blame::Expired if !trail.renewed.contains(&name) => {
            trail.renewed.push(name.clone());
            match pool
                .renew(&used.account, Renewal::Expired(used.caller.clone()))
                .await
            {
                Ok(()) => AccountMove::Again,
                Err(_) => moved(trail),
            }
        }
        // Refused again right after a renewal: the account itself is refused. The request
        // does not walk on through the pool — if the request is the cause (a refusal that is
        // not the account's), one request must not take every account out.
        Blame::Expired => {
            pool.invalidate(
                &used.account,
                "the upstream refused the token again right after renewing it",
            );
            AccountMove::Stay
        }
    }
}
