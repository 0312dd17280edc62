//! `export`: the user's events as CSV (id, kind, created_at, payload), oldest first,
//! streamed from Postgres with COPY straight into the artifact file: memory stays bounded
//! however many events there are.

use super::{Context, JobError, artifact, params};
use crate::jobs::store::Claimed;
use serde::Deserialize;

#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    #[serde(default = "csv")]
    pub format: String,
}

fn csv() -> String {
    "csv".into()
}

pub fn events_csv(ctx: &Context, job: &Claimed) -> Result<serde_json::Value, JobError> {
    let input: ExportParams = params(job)?;
    if input.format != "csv" {
        return Err(JobError::Permanent(format!("unsupported format {:?}", input.format)));
    }
    let mut db = ctx.db.get()?;
    // COPY takes no bind parameters; the user id is an integer from our own row.
    let copy = format!(
        "COPY (SELECT id, kind, created_at, payload FROM events WHERE user_id = {}
               ORDER BY created_at, id) TO STDOUT WITH (FORMAT csv, HEADER)",
        job.user_id
    );
    let reader = db.copy_out(copy.as_str())?;
    let name = artifact::file_name(job.id, "csv");
    let bytes = artifact::store(&ctx.settings, &name, reader)?;
    Ok(artifact::result(&name, "text/csv; charset=utf-8", bytes))
}
