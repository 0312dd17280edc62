//! One's own account: `/v1/me`, profile, prefs. Reads come from the shard's cache where it
//! can; every write evicts what it changed on every shard before it answers.

use super::auth::{self, Principal};
use super::identity::timestamp;
use super::session::{self, Checked, SessionColumns, SessionRead};
use super::{Answer, Ctx, extract, write_json};
use crate::http::error::FieldError;
use crate::http::{ApiError, Reply};
use crate::store::Stmt;
use crate::store::cache::{Cached, Key, bus};
use crate::store::typed_row::typed_row;
use serde::{Deserialize, Serialize};
use std::time::SystemTime;

pub const DISPLAY_NAME_CHARS_MAX: usize = 100;
pub const BIO_CHARS_MAX: usize = 2000;
pub const AVATAR_URL_BYTES_MAX: usize = 2048;
pub const THEMES: [&str; 3] = ["light", "dark", "system"];

#[derive(Serialize)]
struct Profile {
    display_name: Option<String>,
    bio: Option<String>,
    avatar_url: Option<String>,
    updated_at: String,
}

#[derive(Serialize)]
struct Prefs {
    locale: String,
    timezone: String,
    theme: String,
    email_opt_in: bool,
    updated_at: String,
}

typed_row! {
    /// A `Me` or `MeById` row (a `Me` row then ends with the session's user and expiry).
    struct MeRow {
        id: i64,
        email: String,
        name: String,
        created_at: SystemTime,
        updated_at: SystemTime,
        display_name: Option<String>,
        bio: Option<String>,
        avatar_url: Option<String>,
        profile_updated_at: SystemTime,
        locale: String,
        timezone: String,
        theme: String,
        email_opt_in: bool,
        prefs_updated_at: SystemTime,
    }
}

typed_row! {
    /// What `ProfileUpdate` returns.
    struct ProfileRow {
        display_name: Option<String>,
        bio: Option<String>,
        avatar_url: Option<String>,
        updated_at: SystemTime,
        user_id: i64,
    }
}

typed_row! {
    /// What `PrefsUpdate` returns.
    struct PrefsRow {
        locale: String,
        timezone: String,
        theme: String,
        email_opt_in: bool,
        updated_at: SystemTime,
        user_id: i64,
    }
}

/// From the shard's memory when it knows the session and the user's view; else one
/// statement (by user id when only the session is known, with the session check otherwise).
pub async fn me(ctx: &Ctx<'_>, principal: &Principal, body: &mut Vec<u8>) -> Answer {
    let by_id = |user_id: i64| async move {
        let rows = (ctx.sql)
            .query_replica(&[Key::Me(user_id)], Stmt::MeById, &[&user_id])
            .await?;
        Ok(rows
            .first()
            .map(|row| Cached::Json(me_json(MeRow::from_row(row)).into())))
    };
    let checked = Checked {
        stmt: Stmt::Me,
        params: &[&principal.token_hash()],
        fills: &[],
        // The user the document is about: the session's.
        shown: |rows| {
            rows.iter()
                .map(|row| Key::Me(SessionColumns::of(row).user_id))
                .collect()
        },
    };
    match session::cached_or_checked(ctx, principal, Key::Me, by_id, checked).await? {
        SessionRead::Cached(Some(Cached::Json(json))) => body.extend_from_slice(&json),
        // The user is gone though the session was cached a moment ago.
        SessionRead::Cached(_) => return Err(auth::invalid_token()),
        SessionRead::Checked(read) => {
            let row = read.rows.first().expect("a checked read has a row");
            body.extend_from_slice(&me_json(MeRow::from_row(row)));
        }
    }
    Ok(Reply::json(200))
}

/// `{user, profile, prefs}`.
fn me_json(row: MeRow) -> Vec<u8> {
    #[derive(Serialize)]
    struct Me {
        user: super::identity::User,
        profile: Profile,
        prefs: Prefs,
    }
    let me = Me {
        user: super::identity::User {
            id: row.id,
            email: row.email,
            name: row.name,
            created_at: timestamp(row.created_at),
            updated_at: timestamp(row.updated_at),
        },
        profile: Profile {
            display_name: row.display_name,
            bio: row.bio,
            avatar_url: row.avatar_url,
            updated_at: timestamp(row.profile_updated_at),
        },
        prefs: Prefs {
            locale: row.locale,
            timezone: row.timezone,
            theme: row.theme,
            email_opt_in: row.email_opt_in,
            updated_at: timestamp(row.prefs_updated_at),
        },
    };
    let mut json = Vec::with_capacity(512);
    write_json(&mut json, &me);
    json
}

/// PATCH: an absent field is left alone, `null` clears it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProfilePatch {
    #[serde(default, deserialize_with = "extract::present")]
    display_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "extract::present")]
    bio: Option<Option<String>>,
    #[serde(default, deserialize_with = "extract::present")]
    avatar_url: Option<Option<String>>,
}

pub async fn patch_profile(ctx: &Ctx<'_>, principal: &Principal, body: &mut Vec<u8>) -> Answer {
    let patch: ProfilePatch = extract::json(ctx.request)?;
    let mut problems = Vec::new();
    // A bio may hold line breaks; no text may hold NUL, which Postgres cannot store.
    let check = |field: &'static str, value: &Option<Option<String>>, max: usize, controls_ok: bool| {
        let value = value.as_ref().and_then(Option::as_ref)?;
        if value.chars().count() > max {
            return Some(FieldError::new(
                field,
                "length",
                format!("must be at most {max} characters"),
            ));
        }
        let bad = |c: char| c == '\0' || (!controls_ok && c.is_control());
        value
            .chars()
            .any(bad)
            .then(|| FieldError::new(field, "invalid", "must not contain control characters"))
    };
    problems.extend(check(
        "display_name",
        &patch.display_name,
        DISPLAY_NAME_CHARS_MAX,
        false,
    ));
    problems.extend(check("bio", &patch.bio, BIO_CHARS_MAX, true));
    if let Some(Some(url)) = &patch.avatar_url {
        let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
        if !scheme_ok || url.len() > AVATAR_URL_BYTES_MAX || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            problems.push(FieldError::new(
                "avatar_url",
                "invalid",
                format!("must be an http(s) URL of at most {AVATAR_URL_BYTES_MAX} bytes"),
            ));
        }
    }
    if !problems.is_empty() {
        return Err(ApiError::invalid_fields(problems));
    }
    let flag = |v: &Option<Option<String>>| v.is_some();
    let value = |v: &Option<Option<String>>| v.clone().flatten();
    let (display_name, bio, avatar_url) = (value(&patch.display_name), value(&patch.bio), value(&patch.avatar_url));
    let rows = ctx
        .sql
        .query(
            Stmt::ProfileUpdate,
            &[
                &principal.token_hash(),
                &flag(&patch.display_name),
                &display_name,
                &flag(&patch.bio),
                &bio,
                &flag(&patch.avatar_url),
                &avatar_url,
            ],
        )
        .await?;
    let row = ProfileRow::from_row(rows.first().ok_or_else(auth::invalid_token)?);
    bus::invalidate(&ctx.shard.store, &[Key::Me(row.user_id), Key::User(row.user_id)]).await;
    let profile = Profile {
        display_name: row.display_name,
        bio: row.bio,
        avatar_url: row.avatar_url,
        updated_at: timestamp(row.updated_at),
    };
    write_json(body, &profile);
    Ok(Reply::json(200))
}

/// PUT replaces all preferences: every field is required.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PrefsInput {
    locale: String,
    timezone: String,
    theme: String,
    email_opt_in: bool,
}

pub async fn put_prefs(ctx: &Ctx<'_>, principal: &Principal, body: &mut Vec<u8>) -> Answer {
    let input: PrefsInput = extract::json(ctx.request)?;
    let mut problems = Vec::new();
    if !is_locale(&input.locale) {
        problems.push(FieldError::new(
            "locale",
            "invalid",
            "must be a BCP 47 language tag like en or pt-BR",
        ));
    }
    if !is_timezone(&input.timezone) {
        problems.push(FieldError::new(
            "timezone",
            "invalid",
            "must be an IANA time zone name like UTC or Europe/Berlin",
        ));
    }
    if !THEMES.contains(&input.theme.as_str()) {
        problems.push(FieldError::new("theme", "invalid", "must be light, dark or system"));
    }
    if !problems.is_empty() {
        return Err(ApiError::invalid_fields(problems));
    }
    let rows = ctx
        .sql
        .query(
            Stmt::PrefsUpdate,
            &[
                &principal.token_hash(),
                &input.locale,
                &input.timezone,
                &input.theme,
                &input.email_opt_in,
            ],
        )
        .await?;
    let row = PrefsRow::from_row(rows.first().ok_or_else(auth::invalid_token)?);
    bus::invalidate(&ctx.shard.store, &[Key::Me(row.user_id)]).await;
    let prefs = Prefs {
        locale: row.locale,
        timezone: row.timezone,
        theme: row.theme,
        email_opt_in: row.email_opt_in,
        updated_at: timestamp(row.updated_at),
    };
    write_json(body, &prefs);
    Ok(Reply::json(200))
}

/// `en`, `pt-BR`, `zh-Hant-TW`: a 2-3 letter language and up to four 2-8 character subtags.
fn is_locale(tag: &str) -> bool {
    let mut parts = tag.split('-');
    let language = parts.next().unwrap_or_default();
    let subtags: Vec<&str> = parts.collect();
    (2..=3).contains(&language.len())
        && language.bytes().all(|b| b.is_ascii_alphabetic())
        && subtags.len() <= 4
        && subtags
            .iter()
            .all(|s| (2..=8).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// `UTC`, `Europe/Berlin`, `America/Argentina/Buenos_Aires`, `Etc/GMT+3`.
fn is_timezone(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.split('/').all(|part| {
            !part.is_empty()
                && part.as_bytes()[0].is_ascii_alphabetic()
                && part.bytes().all(|b| b.is_ascii_alphanumeric() || b"_+-".contains(&b))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locales_and_timezones() {
        for good in ["en", "pt-BR", "zh-Hant-TW", "fil"] {
            assert!(is_locale(good), "{good}");
        }
        for bad in ["", "e", "english", "en_US", "en-", "en-B", "ab-cd-ef-gh-ij-kl"] {
            assert!(!is_locale(bad), "{bad}");
        }
        for good in ["UTC", "Europe/Berlin", "America/Argentina/Buenos_Aires", "Etc/GMT+3"] {
            assert!(is_timezone(good), "{good}");
        }
        for bad in [
            "",
            "/UTC",
            "Europe//Berlin",
            "Europe/Berlin Time",
            "../etc/passwd",
            "1Zone",
        ] {
            assert!(!is_timezone(bad), "{bad}");
        }
    }
}
