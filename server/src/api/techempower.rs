//! The TechEmpower test types, served only with `[bench] routes = true`, by the rules of
//! their "Framework Tests Overview": plaintext, JSON (serialized per request), single and
//! multiple queries (each row its own statement, pipelined on the shard's connections, no
//! `IN (...)`), fortunes (all rows plus one added, sorted in code, HTML-escaped by a
//! template), updates (each row read by its own statement, then one batched UPDATE), and
//! cached queries (through the two-level cache).

use super::{Answer, Ctx};
use crate::http::{ApiError, Reply, response};
use crate::store::Stmt;
use crate::store::cache::{Cached, Key};
use crate::store::typed_row::typed_row;
use askama::Template;
use futures::future::try_join_all;

pub fn plaintext(body: &mut Vec<u8>) -> Answer {
    body.extend_from_slice(b"Hello, World!");
    Ok(Reply::new(200, response::TEXT))
}

#[derive(serde::Serialize)]
struct Message {
    message: &'static str,
}

/// Serialized on every request, as the TechEmpower rules ask.
pub fn json(body: &mut Vec<u8>) -> Answer {
    serde_json::to_writer(
        &mut *body,
        &Message {
            message: "Hello, World!",
        },
    )
    .expect("writing JSON to a Vec cannot fail");
    Ok(Reply::json(200))
}

/// TechEmpower's `world` table has ids 1 to 10,000.
const WORLD_ROWS: u64 = 10_000;
/// TechEmpower clamps the row count to 1..=500; anything missing or not a number is 1.
const QUERIES_MAX: u64 = 500;

/// The row count of `/queries`, `/updates` and `/cached-queries` from the first of `names`
/// present: clamped to 1..=500, 1 when missing, empty or not a number.
fn row_count(ctx: &Ctx<'_>, names: &[&str]) -> usize {
    names
        .iter()
        .find_map(|name| ctx.request.query_param(name))
        .and_then(|c| c.parse::<i64>().ok())
        .map_or(1, |c| c.clamp(1, QUERIES_MAX as i64)) as usize
}

typed_row! {
    /// A `WorldById` row, serialized as TechEmpower asks.
    #[derive(serde::Serialize, Clone, Copy)]
    struct World {
        id: i32,
        #[serde(rename = "randomNumber")]
        random_number: i32,
    }
}

typed_row! {
    /// A `FortunesAll` row.
    struct Fortune {
        id: i32,
        message: String,
    }
}

/// One random `world` row by its own statement, from a replica when `from_replica` (reads
/// that no update follows) and one is usable.
async fn random_world(ctx: &Ctx<'_>, from_replica: bool) -> Result<World, ApiError> {
    let id = ctx.shard.random_up_to(WORLD_ROWS) as i32;
    let rows = if from_replica {
        ctx.sql.query_replica(&[], Stmt::WorldById, &[&id]).await?
    } else {
        ctx.sql.query(Stmt::WorldById, &[&id]).await?
    };
    rows.first().map(World::from_row).ok_or_else(unseeded)
}

fn unseeded() -> ApiError {
    ApiError::new(
        404,
        "not_found",
        "the TechEmpower tables are empty; run percore-bench seed",
    )
}

/// `/db`: one random row, as an object.
pub async fn db(ctx: &Ctx<'_>, body: &mut Vec<u8>) -> Answer {
    let world = random_world(ctx, true).await?;
    serde_json::to_writer(&mut *body, &world).expect("writing JSON to a Vec cannot fail");
    Ok(Reply::json(200))
}

/// `/queries?queries=N` (or `q=N`): N random rows, each its own statement; the statements
/// are issued together and pipelined on the shard's connections.
pub async fn queries(ctx: &Ctx<'_>, body: &mut Vec<u8>) -> Answer {
    let count = row_count(ctx, &["queries", "q"]);
    let worlds = try_join_all((0..count).map(|_| random_world(ctx, true))).await?;
    serde_json::to_writer(&mut *body, &worlds).expect("writing JSON to a Vec cannot fail");
    Ok(Reply::json(200))
}

/// `/updates?queries=N` (or `q=N`): N random rows, each read by its own statement, each
/// given a new random number, written by one batched UPDATE (ids sorted, so concurrent
/// requests lock rows in one order and cannot deadlock) before answering.
pub async fn updates(ctx: &Ctx<'_>, body: &mut Vec<u8>) -> Answer {
    let count = row_count(ctx, &["queries", "q"]);
    let mut worlds = try_join_all((0..count).map(|_| random_world(ctx, false))).await?;
    for world in &mut worlds {
        // A new number that differs from the old one, so every row read really changes.
        let old = world.random_number as u64;
        world.random_number = ((old + ctx.shard.random_up_to(WORLD_ROWS - 1) - 1) % WORLD_ROWS + 1) as i32;
    }
    // An id drawn twice is written once: it answers the value written, wherever it appears.
    let mut written: Vec<(i32, i32)> = worlds.iter().map(|w| (w.id, w.random_number)).collect();
    written.sort_unstable_by_key(|(id, _)| *id);
    written.dedup_by_key(|(id, _)| *id);
    for world in &mut worlds {
        let index = written
            .binary_search_by_key(&world.id, |(id, _)| *id)
            .expect("every id was written");
        world.random_number = written[index].1;
    }
    let (ids, numbers): (Vec<i32>, Vec<i32>) = written.into_iter().unzip();
    ctx.sql.execute(Stmt::WorldUpdate, &[&ids, &numbers]).await?;
    serde_json::to_writer(&mut *body, &worlds).expect("writing JSON to a Vec cannot fail");
    Ok(Reply::json(200))
}

#[derive(Template)]
#[template(
    ext = "html",
    source = "<!DOCTYPE html><html><head><title>Fortunes</title></head><body><table>\
<tr><th>id</th><th>message</th></tr>\
{% for (id, message) in fortunes %}<tr><td>{{ id }}</td><td>{{ message }}</td></tr>{% endfor %}\
</table></body></html>"
)]
struct Fortunes {
    fortunes: Vec<(i32, String)>,
}

/// `/fortunes`: every row plus one added at request time, sorted by message in code,
/// rendered by an HTML-escaping template.
pub async fn fortunes(ctx: &Ctx<'_>, body: &mut Vec<u8>) -> Answer {
    let rows = ctx.sql.query_replica(&[], Stmt::FortunesAll, &[]).await?;
    let mut fortunes: Vec<(i32, String)> = rows
        .iter()
        .map(|row| {
            let Fortune { id, message } = Fortune::from_row(row);
            (id, message)
        })
        .collect();
    fortunes.push((0, "Additional fortune added at request time.".into()));
    fortunes.sort_unstable_by(|a, b| a.1.cmp(&b.1));
    Fortunes { fortunes }
        .write_into(&mut *body)
        .map_err(|_| ApiError::internal())?;
    Ok(Reply::new(200, "text/html; charset=utf-8"))
}

/// TechEmpower cached-queries: `count` random `world` rows through the two-level cache;
/// each miss is its own statement, as the rules ask.
pub async fn cached_queries(ctx: &Ctx<'_>, body: &mut Vec<u8>) -> Answer {
    let count = row_count(ctx, &["count", "queries", "q"]);
    body.push(b'[');
    for i in 0..count {
        let id = ctx.shard.random_up_to(WORLD_ROWS) as i32;
        let loaded = ctx
            .shard
            .store
            .cache
            .get_or_load(Key::World(id), || async move {
                let rows = ctx
                    .sql
                    .query_replica(&[Key::World(id)], Stmt::WorldById, &[&id])
                    .await?;
                Ok(rows.first().map(|row| {
                    let World { id, random_number } = World::from_row(row);
                    Cached::Json(
                        format!("{{\"id\":{id},\"randomNumber\":{random_number}}}")
                            .into_bytes()
                            .into(),
                    )
                }))
            })
            .await?;
        let Some(Cached::Json(json)) = loaded else {
            return Err(ApiError::new(
                404,
                "not_found",
                "the world table lacks a row; run percore-bench seed",
            ));
        };
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&json);
    }
    body.push(b']');
    Ok(Reply::json(200))
}
