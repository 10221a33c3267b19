//! The accounts side of one request's turn: the account of a failed attempt is blamed, and
//! the turn stays, tries again with a renewed token, or moves to a fresh chat elsewhere.

use crate::accounts::signin::Renewal;
use crate::accounts::{quota_wait, Blame, Used};
use crate::app::AppState;
use crate::common::epoch_millis;
use crate::error::{ProxyError, UpstreamClass, UpstreamError};

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

/// An image turn avoids the accounts out of images; when that is every account, it fails at
/// once with the earliest return (429, `Retry-After`), without an upstream call.
pub(super) fn avoid_spent_images(
    state: &AppState,
    trail: &mut AccountTrail,
) -> Result<(), ProxyError> {
    let spent = state.image_quota.spent_now();
    if spent.is_empty() {
        return Ok(());
    }
    let accounts = state.accounts.list();
    let all_spent = accounts
        .iter()
        .all(|a| spent.iter().any(|(name, _)| name == a.name()));
    if all_spent {
        let earliest = spent.iter().map(|(_, at)| *at).min().unwrap_or(0);
        let mut e = UpstreamError::new(
            UpstreamClass::RateLimited,
            "every account has used up its daily image generations",
        );
        e.retry_after = Some(std::time::Duration::from_millis(
            earliest.saturating_sub(epoch_millis()),
        ));
        return Err(e.into());
    }
    trail.left.extend(spent.into_iter().map(|(name, _)| name));
    Ok(())
}

/// Blame the account of the failed attempt and decide whether the turn moves. `image`: the
/// turn draws an image (its quota is not the account's chat quota).
pub(super) async fn account_move(
    state: &AppState,
    trail: &mut AccountTrail,
    e: &ProxyError,
    image: bool,
) -> AccountMove {
    let Some(used) = trail.last.take() else {
        return AccountMove::Stay;
    };
    let pool = &state.accounts;
    let name = used.account.name().to_owned();
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
    if image && e.upstream_class() == Some(UpstreamClass::RateLimited) {
        // Out of images: the account rests from drawing only.
        state
            .image_quota
            .spent(&name, epoch_millis().saturating_add(quota_wait(e)));
        return moved(trail);
    }
    let blame = pool.blame(&used.account, e);
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
