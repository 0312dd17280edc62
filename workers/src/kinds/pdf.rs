//! `pdf`: an account report for the job's user (name, e-mail, member since, event count
//! and the most recent events), built with pdf-writer in Helvetica, one of the PDF
//! standard fonts every reader has, so nothing is embedded. Text is WinAnsi-encoded:
//! characters outside Latin-1 print as `?`.

use super::{Context, JobError, artifact, params};
use crate::jobs::store::Claimed;
use pdf_writer::{Content, Finish, Name, Pdf, Rect, Ref, Str, TextStr};
use serde::Deserialize;
use std::time::SystemTime;

/// The most recent events listed in the report.
const EVENTS_LISTED_MAX: i64 = 200;
const LINES_PER_PAGE: usize = 48;
const PAGE_WIDTH_PT: f32 = 595.0;
const PAGE_HEIGHT_PT: f32 = 842.0;

#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PdfParams {
    /// Only "account" for now.
    pub report: String,
}

pub fn render(ctx: &Context, job: &Claimed) -> Result<serde_json::Value, JobError> {
    let input: PdfParams = params(job)?;
    if input.report != "account" {
        return Err(JobError::Permanent(format!("unknown report {:?}", input.report)));
    }
    let mut db = ctx.db.get()?;
    let Some(user) = db.query_opt(
        "SELECT u.email::text, u.name, u.created_at, p.display_name,
                (SELECT count(*) FROM events e WHERE e.user_id = u.id)
         FROM users u LEFT JOIN profiles p ON p.user_id = u.id WHERE u.id = $1",
        &[&job.user_id],
    )?
    else {
        return Err(JobError::Permanent("the user no longer exists".into()));
    };
    let events = db.query(
        "SELECT kind, created_at FROM events WHERE user_id = $1
         ORDER BY created_at DESC, id DESC LIMIT $2",
        &[&job.user_id, &EVENTS_LISTED_MAX],
    )?;
    drop(db);
    let name: String = user.get(1);
    let display_name: Option<String> = user.get(3);
    let event_count: i64 = user.get(4);
    let mut lines = vec![
        (16.0, "percore account report".to_string()),
        (11.0, String::new()),
        (11.0, format!("Name: {name}")),
        (11.0, format!("Display name: {}", display_name.unwrap_or_default())),
        (11.0, format!("E-mail: {}", user.get::<_, String>(0))),
        (11.0, format!("Member since: {}", rfc3339(user.get(2)))),
        (11.0, format!("Events recorded: {event_count}")),
        (
            11.0,
            format!("Report job: {}, generated {}", job.id, rfc3339(SystemTime::now())),
        ),
        (11.0, String::new()),
        (13.0, format!("Most recent events ({} listed)", events.len())),
    ];
    for row in &events {
        lines.push((10.0, format!("{}   {}", rfc3339(row.get(1)), row.get::<_, String>(0))));
    }
    let bytes = build(&format!("Account report: {name}"), &lines);
    let file = artifact::file_name(job.id, "pdf");
    let size = artifact::store(&ctx.settings, &file, bytes.as_slice())?;
    Ok(artifact::result(&file, "application/pdf", size))
}

fn rfc3339(time: SystemTime) -> String {
    jiff::Timestamp::try_from(time).map_or_else(|_| "?".into(), |t| format!("{t:.0}"))
}

/// Lays `lines` (font size, text) out top to bottom over as many A4 pages as they need.
fn build(title: &str, lines: &[(f32, String)]) -> Vec<u8> {
    let mut pdf = Pdf::new();
    let catalog_id = Ref::new(1);
    let tree_id = Ref::new(2);
    let font_id = Ref::new(3);
    let info_id = Ref::new(4);
    let font = Name(b"F1");
    let pages: Vec<&[(f32, String)]> = lines.chunks(LINES_PER_PAGE).collect();
    // Per page: the page object and its content stream.
    let page_ids: Vec<(Ref, Ref)> = (0..pages.len() as i32)
        .map(|i| (Ref::new(10 + 2 * i), Ref::new(11 + 2 * i)))
        .collect();
    pdf.catalog(catalog_id).pages(tree_id);
    pdf.pages(tree_id)
        .kids(page_ids.iter().map(|(page, _)| *page))
        .count(pages.len() as i32);
    pdf.document_info(info_id)
        .title(TextStr(title))
        .creator(TextStr("percore"));
    pdf.type1_font(font_id)
        .base_font(Name(b"Helvetica"))
        .encoding_predefined(Name(b"WinAnsiEncoding"));
    for (page_lines, (page_id, content_id)) in pages.iter().zip(&page_ids) {
        let mut page = pdf.page(*page_id);
        page.media_box(Rect::new(0.0, 0.0, PAGE_WIDTH_PT, PAGE_HEIGHT_PT));
        page.parent(tree_id);
        page.contents(*content_id);
        page.resources().fonts().pair(font, font_id);
        page.finish();
        let mut content = Content::new();
        let mut y = PAGE_HEIGHT_PT - 60.0;
        for (size, text) in page_lines.iter() {
            content.begin_text();
            content.set_font(font, *size);
            content.next_line(56.0, y);
            content.show(Str(&winansi(text)));
            content.end_text();
            y -= size * 1.45;
        }
        pdf.stream(*content_id, &content.finish());
    }
    pdf.finish()
}

/// WinAnsiEncoding agrees with Latin-1 on ASCII and U+00A0-U+00FF; anything else is `?`.
fn winansi(text: &str) -> Vec<u8> {
    text.chars()
        .map(|c| match c as u32 {
            code @ (0x20..=0x7e | 0xa0..=0xff) => code as u8,
            _ => b'?',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_reports_span_pages_and_latin1_survives() {
        let lines: Vec<(f32, String)> = (0..120).map(|i| (10.0, format!("line {i} café ☃"))).collect();
        let bytes = build("t", &lines);
        assert!(bytes.starts_with(b"%PDF-"));
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("/Count 3"), "120 lines at 48 per page are 3 pages");
        assert_eq!(winansi("é☃"), vec![0xe9, b'?']);
    }
}
