//! The TechEmpower test types checked the way their verifier checks them: headers, content
//! types, bodies against the database, the row-count clamping cases, fortunes' escaping and
//! order, updates that really change the rows they read, and one statement per row read.

mod common;

use common::{Server, Services, metric_sum};
use serde_json::Value;
use std::collections::HashMap;

/// The TechEmpower fortune rows, as their rules list them.
const FORTUNES: [&str; 12] = [
    "fortune: No such file or directory",
    "A computer scientist is someone who fixes things that aren't broken.",
    "After enough decimal places, nobody gives a damn.",
    "A bad random number generator: 1, 1, 1, 1, 1, 4.33e+67, 1, 1, 1",
    "A computer program does what you tell it to do, not what you want it to do.",
    "Emacs is a nice operating system, but I prefer UNIX. — Tom Christaensen",
    "Any program that runs right is obsolete.",
    "A list is only as strong as its weakest link. — Donald Knuth",
    "Feature: A bug with seniority.",
    "Computers make very fast, very accurate mistakes.",
    "<script>alert(\"This should not be displayed in a browser alert box.\");</script>",
    "フレームワークのベンチマーク",
];

fn seeded() -> (Services, Server, postgres::Client) {
    let services = Services::start();
    let server = Server::start(&services, "");
    let mut db = postgres::Client::connect(&services.postgres.url, postgres::NoTls).unwrap();
    db.batch_execute(
        "INSERT INTO world (id, randomnumber)
         SELECT n, 1 + floor(random() * 10000)::int FROM generate_series(1, 10000) n",
    )
    .unwrap();
    for (index, message) in FORTUNES.iter().enumerate() {
        db.execute(
            "INSERT INTO fortune (id, message) VALUES ($1, $2)",
            &[&(index as i32 + 1), message],
        )
        .unwrap();
    }
    (services, server, db)
}

fn worlds(db: &mut postgres::Client) -> HashMap<i32, i32> {
    db.query("SELECT id, randomnumber FROM world", &[])
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

/// What the verifier requires of every response: Server, Date, a Content-Length that
/// matches, and the exact Content-Type.
fn checked(server: &Server, path: &str, content_type: &str) -> common::Response {
    let response = server.get(path);
    assert_eq!(response.status, 200, "{path}: {}", response.text());
    assert_eq!(response.header("content-type"), Some(content_type), "{path}");
    assert!(response.header("server").is_some(), "{path}: Server");
    assert!(response.header("date").is_some(), "{path}: Date");
    assert_eq!(
        response.header("content-length").map(|l| l.parse::<usize>().unwrap()),
        Some(response.body.len()),
        "{path}"
    );
    response
}

fn rows_of(value: &Value) -> Vec<(i32, i32)> {
    value
        .as_array()
        .expect("an array")
        .iter()
        .map(|w| {
            let object = w.as_object().unwrap();
            assert_eq!(object.len(), 2, "only id and randomNumber: {w}");
            (
                w["id"].as_i64().unwrap() as i32,
                w["randomNumber"].as_i64().unwrap() as i32,
            )
        })
        .collect()
}

fn statements(server: &Server, route: &str) -> u64 {
    metric_sum(
        &server.get("/metrics").text(),
        "percore_db_statements_total",
        &format!("route=\"{route}\""),
    )
}

#[test]
fn json_plaintext_db_and_queries_follow_the_rules() {
    let (_services, server, mut db) = seeded();
    let json = checked(&server, "/json", "application/json");
    assert_eq!(json.text(), r#"{"message":"Hello, World!"}"#);
    let plaintext = checked(&server, "/plaintext", "text/plain");
    assert_eq!(plaintext.text(), "Hello, World!");

    let table = worlds(&mut db);
    let before = statements(&server, "db");
    let one = checked(&server, "/db", "application/json").json();
    let id = one["id"].as_i64().unwrap() as i32;
    assert!((1..=10_000).contains(&id));
    assert_eq!(one["randomNumber"].as_i64().unwrap() as i32, table[&id]);
    assert_eq!(statements(&server, "db") - before, 1);

    for (query, expected) in [
        ("", 1),
        ("?queries=", 1),
        ("?queries=foo", 1),
        ("?queries=0", 1),
        ("?queries=-3", 1),
        ("?queries=1", 1),
        ("?queries=7", 7),
        ("?q=20", 20),
        ("?queries=500", 500),
        ("?queries=501", 500),
        ("?queries=99999999999999999999", 1),
    ] {
        let before = statements(&server, "queries");
        let rows = rows_of(&checked(&server, &format!("/queries{query}"), "application/json").json());
        assert_eq!(rows.len(), expected, "/queries{query}");
        for (id, number) in &rows {
            assert_eq!(table.get(id), Some(number), "/queries{query}: row {id} as stored");
        }
        assert_eq!(
            statements(&server, "queries") - before,
            expected as u64,
            "one statement per row"
        );
    }
}

#[test]
fn updates_change_the_rows_they_read_and_answer_what_they_wrote() {
    let (_services, server, mut db) = seeded();
    for (query, expected) in [
        ("?queries=0", 1),
        ("?queries=foo", 1),
        ("?queries=501", 500),
        ("?q=20", 20),
    ] {
        let before_rows = worlds(&mut db);
        let before = statements(&server, "updates");
        let rows = rows_of(&checked(&server, &format!("/updates{query}"), "application/json").json());
        assert_eq!(rows.len(), expected, "/updates{query}");
        let after_rows = worlds(&mut db);
        let mut distinct: Vec<i32> = rows.iter().map(|(id, _)| *id).collect();
        distinct.sort_unstable();
        distinct.dedup();
        let changed = distinct.iter().filter(|id| before_rows[id] != after_rows[id]).count();
        assert!(
            changed * 100 >= distinct.len() * 95,
            "{changed} of {} rows changed",
            distinct.len()
        );
        for (id, number) in &rows {
            assert_eq!(after_rows[id], *number, "row {id} answers what was written");
        }
        // One read per row, then one batched write.
        assert_eq!(statements(&server, "updates") - before, expected as u64 + 1);
    }
}

#[test]
fn fortunes_are_all_rows_plus_one_sorted_and_escaped() {
    let (_services, server, _db) = seeded();
    let before = statements(&server, "fortunes");
    let page = checked(&server, "/fortunes", "text/html; charset=utf-8").text();
    assert_eq!(statements(&server, "fortunes") - before, 1);
    assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
    assert!(!page.contains("<script>"), "the script fortune is escaped: {page}");
    let unescape = |text: &str| {
        text.replace("&#60;", "<")
            .replace("&lt;", "<")
            .replace("&#62;", ">")
            .replace("&gt;", ">")
            .replace("&#34;", "\"")
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&#38;", "&")
            .replace("&amp;", "&")
    };
    let rows: Vec<(i32, String)> = page
        .split("<tr><td>")
        .skip(1)
        .map(|row| {
            let (id, rest) = row.split_once("</td><td>").unwrap();
            let message = rest.split_once("</td></tr>").unwrap().0;
            (id.parse().unwrap(), unescape(message))
        })
        .collect();
    assert_eq!(rows.len(), FORTUNES.len() + 1);
    let mut expected: Vec<(i32, String)> = FORTUNES
        .iter()
        .enumerate()
        .map(|(i, m)| (i as i32 + 1, m.to_string()))
        .collect();
    expected.push((0, "Additional fortune added at request time.".into()));
    expected.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(rows, expected, "every fortune, the added one too, sorted by message");
}
