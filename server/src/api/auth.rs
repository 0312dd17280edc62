//! The auth middleware and session tokens.
//!
//! A token is 32 bytes from the kernel's CSPRNG, sent to the client as unpadded base64url
//! (43 characters) and stored only as its SHA-256. The middleware checks a bearer token's
//! shape and hashes it; whether the session is live is decided by the one statement each
//! authenticated handler runs (see `store/catalogue.rs`), so checking costs no extra round trip.

use super::Ctx;
use crate::http::{ApiError, Request};
use crate::store::cache::{Cached, Epoch, Key};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use std::time::SystemTime;

pub const TOKEN_BYTES: usize = 32;
/// Unpadded base64url of 32 bytes.
const TOKEN_CHARS: usize = 43;

/// Who is calling: the hash of a well-formed bearer token, not yet known to be live.
#[derive(Debug, Clone, Copy)]
pub struct Principal {
    pub token_hash: [u8; 32],
}

impl Principal {
    pub fn token_hash(&self) -> &[u8] {
        &self.token_hash
    }
}

/// Reads `Authorization: Bearer <token>`. 401 when it is missing or malformed.
pub fn authenticate(request: &Request<'_>) -> Result<Principal, ApiError> {
    let Some(value) = request.header("authorization") else {
        return Err(ApiError::new(
            401,
            "missing_token",
            "send Authorization: Bearer <token>",
        ));
    };
    let token = value
        .split_first_chunk::<7>()
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case(b"bearer "))
        .map(|(_, rest)| rest.trim_ascii())
        .ok_or_else(|| ApiError::new(401, "missing_token", "the Authorization scheme must be Bearer"))?;
    Ok(Principal {
        token_hash: hash_token(token).ok_or_else(invalid_token)?,
    })
}

/// The caller's user id, if this shard's cache knows the session is live: then the
/// handler may skip the session check in SQL.
pub fn cached_user(ctx: &Ctx<'_>, who: &Principal) -> Option<i64> {
    match ctx.shard.store.cache.get(&Key::Session(who.token_hash))? {
        Cached::Session { user_id, expires_at } if expires_at > SystemTime::now() => Some(user_id),
        _ => None,
    }
}

/// Keeps the session a token-joined statement checked (begun at `epoch`), so the caller's
/// next request may skip the check in SQL.
pub fn remember_session(ctx: &Ctx<'_>, who: &Principal, epoch: Epoch, user_id: i64, expires_at: SystemTime) {
    ctx.shard.store.cache.insert_unless_invalidated(
        epoch,
        Key::Session(who.token_hash),
        Cached::Session { user_id, expires_at },
    );
}

/// 401 for a token that is malformed, unknown, expired or revoked: one answer for all, so
/// a client learns nothing about which.
pub fn invalid_token() -> ApiError {
    ApiError::new(401, "invalid_token", "the bearer token is invalid, expired or revoked")
}

/// SHA-256 of a token's bytes, if `token` is a well-formed token.
pub fn hash_token(token: &[u8]) -> Option<[u8; 32]> {
    if token.len() != TOKEN_CHARS {
        return None;
    }
    let mut raw = [0u8; TOKEN_BYTES];
    let decoded = URL_SAFE_NO_PAD.decode_slice(token, &mut raw).ok()?;
    (decoded == TOKEN_BYTES).then(|| Sha256::digest(raw).into())
}

/// A fresh token: what the client gets, and what is stored.
pub fn new_token() -> Result<(String, [u8; 32]), ApiError> {
    let mut raw = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut raw).map_err(|e| {
        log::error!("getrandom failed: {e}");
        ApiError::internal()
    })?;
    Ok((URL_SAFE_NO_PAD.encode(raw), Sha256::digest(raw).into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_token_hashes_to_what_is_stored() {
        let (token, stored) = new_token().unwrap();
        assert_eq!(token.len(), TOKEN_CHARS);
        assert_eq!(hash_token(token.as_bytes()), Some(stored));
        let (other, _) = new_token().unwrap();
        assert_ne!(token, other);
    }

    #[test]
    fn malformed_tokens_do_not_hash() {
        assert_eq!(hash_token(b""), None);
        assert_eq!(hash_token(&[b'A'; 42]), None);
        assert_eq!(hash_token(&[b'!'; 43]), None);
        // 43 characters whose last one carries bits past 32 bytes: non-canonical.
        assert_eq!(hash_token(&[b'_'; 43]), None);
    }
}
