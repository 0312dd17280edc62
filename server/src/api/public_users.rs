//! Other users' public view: `GET /v1/users/{id}` and `GET /v1/users?ids=`. Each user's
//! view is cached as its JSON, so a batch is the cached pieces joined, plus one statement
//! for the ids the shard's memory does not hold.

use super::auth::{self, Principal};
use super::session::{self, Checked, SessionRead};
use super::{Answer, Ctx, extract, write_json};
use crate::http::error::FieldError;
use crate::http::{ApiError, Reply};
use crate::store::Stmt;
use crate::store::cache::l2::Lookup;
use crate::store::cache::{Cached, Epoch, Key};
use crate::store::typed_row::typed_row;
use percore_pg::Row;
use serde::Serialize;
use std::rc::Rc;

#[derive(Serialize)]
struct PublicUser {
    id: i64,
    name: String,
    display_name: Option<String>,
    avatar_url: Option<String>,
}

typed_row! {
    /// A `UserPublic(ById)` or `UsersPublic(ByIds)` row; the id is NULL in the row a LEFT
    /// JOIN yields when no user matched (the session-checking ones end with the session).
    struct PublicUserRow {
        id: Option<i64>,
        name: Option<String>,
        display_name: Option<String>,
        avatar_url: Option<String>,
    }
}

/// The user's id and view as JSON; `None` for the row with a NULL id.
fn view(row: Row<'_>) -> Option<(i64, Rc<[u8]>)> {
    let row = PublicUserRow::from_row(row);
    let user = PublicUser {
        id: row.id?,
        name: row.name.unwrap_or_default(),
        display_name: row.display_name,
        avatar_url: row.avatar_url,
    };
    let mut json = Vec::with_capacity(128);
    write_json(&mut json, &user);
    Some((user.id, json.into()))
}

fn not_found() -> ApiError {
    ApiError::new(404, "user_not_found", "no such user")
}

pub async fn user_by_id(ctx: &Ctx<'_>, principal: &Principal, body: &mut Vec<u8>) -> Answer {
    let id = extract::user_id(ctx.param)?;
    let by_id = |_caller: i64| async move {
        let rows = (ctx.sql)
            .query_replica(&[Key::User(id)], Stmt::UserPublicById, &[&id])
            .await?;
        Ok(rows.first().and_then(view).map(|(_, json)| Cached::Json(json)))
    };
    let checked = Checked {
        stmt: Stmt::UserPublic,
        params: &[&principal.token_hash(), &id],
        fills: &[Key::User(id)],
        shown: |_| Vec::new(),
    };
    let json = match session::cached_or_checked(ctx, principal, |_| Key::User(id), by_id, checked).await? {
        SessionRead::Cached(Some(Cached::Json(json))) => json,
        SessionRead::Cached(_) => return Err(not_found()),
        SessionRead::Checked(read) => {
            let row = read.rows.first().expect("a checked read has a row");
            let (id, json) = view(row).ok_or_else(not_found)?;
            let cache = &ctx.shard.store.cache;
            cache.insert_unless_invalidated(read.epoch, Key::User(id), Cached::Json(json.clone()));
            json
        }
    };
    body.extend_from_slice(&json);
    Ok(Reply::json(200))
}

pub async fn users_by_ids(ctx: &Ctx<'_>, principal: &Principal, body: &mut Vec<u8>) -> Answer {
    let ids = parse_ids(ctx)?;
    let cache = &ctx.shard.store.cache;
    let epoch = cache.epoch();
    let mut found: Vec<(i64, Rc<[u8]>)> = Vec::with_capacity(ids.len());
    // Generations read from Redis for the ids it did not have: their loads are stored.
    let mut generations: Vec<(i64, Vec<u8>)> = Vec::new();
    let rows = if auth::cached_user(ctx, principal).is_some() {
        known_users(ctx, &ids, epoch, &mut found, &mut generations).await?
    } else {
        let fills: Vec<Key> = ids.iter().map(|id| Key::User(*id)).collect();
        let checked = Checked {
            stmt: Stmt::UsersPublic,
            params: &[&principal.token_hash(), &ids],
            fills: &fills,
            shown: |_| Vec::new(),
        };
        Some(session::checked_read(ctx, principal, checked).await?.rows)
    };
    let mut stores = Vec::new();
    for (id, json) in rows.iter().flatten().filter_map(view) {
        cache.insert_unless_invalidated(epoch, Key::User(id), Cached::Json(json.clone()));
        if let Some((_, generation)) = generations.iter().find(|(asked, _)| *asked == id) {
            stores.push((Key::User(id), generation.clone(), Cached::Json(json.clone())));
        }
        found.push((id, json));
    }
    crate::store::cache::l2::L2::put_later(&cache.l2, stores);
    // In the order asked; `ids` has no duplicates, so each position is unique.
    found.sort_by_key(|(id, _)| ids.iter().position(|asked| asked == id));
    body.extend_from_slice(b"{\"users\":[");
    for (i, (_, json)) in found.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(json);
    }
    body.extend_from_slice(b"]}");
    Ok(Reply::json(200))
}

/// For a caller whose session the cache knows: each user's view from L1, else L2 (noting
/// the generation a miss read, so the load may be stored), and one statement by id for
/// the rest (`None` when there is no rest).
async fn known_users(
    ctx: &Ctx<'_>,
    ids: &[i64],
    epoch: Epoch,
    found: &mut Vec<(i64, Rc<[u8]>)>,
    generations: &mut Vec<(i64, Vec<u8>)>,
) -> Result<Option<percore_pg::Rows>, ApiError> {
    let cache = &ctx.shard.store.cache;
    let mut missing: Vec<Key> = Vec::new();
    for id in ids {
        match cache.get(&Key::User(*id)) {
            Some(Cached::Json(json)) => found.push((*id, json)),
            _ => missing.push(Key::User(*id)),
        }
    }
    let mut from_db = Vec::new();
    if !missing.is_empty() {
        for (key, lookup) in missing.iter().zip(cache.l2.get_many(&missing).await) {
            let Key::User(id) = *key else {
                unreachable!("only user keys are looked up")
            };
            match lookup {
                Lookup::Hit(value @ Cached::Json(_)) => {
                    if let Cached::Json(json) = &value {
                        found.push((id, json.clone()));
                    }
                    cache.insert_unless_invalidated(epoch, key.clone(), value);
                }
                Lookup::Miss(generation) => {
                    generations.push((id, generation));
                    from_db.push(id);
                }
                Lookup::Hit(_) | Lookup::Unavailable => from_db.push(id),
            }
        }
    }
    if from_db.is_empty() {
        return Ok(None);
    }
    let fills: Vec<Key> = from_db.iter().map(|id| Key::User(*id)).collect();
    Ok(Some(
        (ctx.sql)
            .query_replica(&fills, Stmt::UsersPublicByIds, &[&from_db])
            .await?,
    ))
}

/// `?ids=1,2,3`: 1 to `api.user_ids_max` positive ids, duplicates dropped.
fn parse_ids(ctx: &Ctx<'_>) -> Result<Vec<i64>, ApiError> {
    let max = ctx.shard.config().api.user_ids_max;
    let Some(list) = ctx.request.query_param("ids").filter(|l| !l.is_empty()) else {
        return Err(ApiError::invalid_fields(vec![FieldError::new(
            "ids",
            "required",
            "pass ?ids=1,2,3",
        )]));
    };
    // Counted before parsing, so a huge list costs no more than this check.
    if list.split(',').nth(max).is_some() {
        return Err(ApiError::invalid_fields(vec![FieldError::new(
            "ids",
            "too_many",
            format!("at most {max} ids"),
        )]));
    }
    let mut ids: Vec<i64> = Vec::with_capacity(max);
    for text in list.split(',') {
        let id = extract::user_id(text)?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}
