//! Job artifacts on disk: `<jobs.artifacts_dir>/job-<id>.<ext>`, written to a temporary
//! name and renamed into place, so a reader never sees half a file and a retried job
//! replaces its earlier artifact whole.

use super::JobError;
use crate::jobs::Settings;
use std::io::{Read, Write};
use std::path::PathBuf;

/// What a job's `result` records about its artifact; the server serves it from there.
pub fn result(file: &str, content_type: &str, bytes: u64) -> serde_json::Value {
    serde_json::json!({ "artifact": file, "content_type": content_type, "bytes": bytes })
}

pub fn file_name(job_id: i64, extension: &str) -> String {
    format!("job-{job_id}.{extension}")
}

/// Copies `source` into the artifact `name`, failing the job past `artifact_bytes_max`.
/// Memory stays bounded by the copy buffer, whatever the size.
pub fn store(settings: &Settings, name: &str, source: impl Read) -> Result<u64, JobError> {
    let final_path = settings.jobs.artifacts_dir.join(name);
    let dir = final_path.parent().unwrap_or(&settings.jobs.artifacts_dir);
    std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    let file_name = final_path.file_name().unwrap_or_default().to_string_lossy();
    let temp_path = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let limit = settings.jobs.artifact_bytes_max;
    let written = (|| -> std::io::Result<u64> {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&temp_path)?);
        let written = std::io::copy(&mut source.take(limit + 1), &mut file)?;
        file.flush()?;
        file.get_ref().sync_all()?;
        Ok(written)
    })()
    .map_err(|e| {
        let _ = std::fs::remove_file(&temp_path);
        io_error(&temp_path, e)
    })?;
    if written > limit {
        let _ = std::fs::remove_file(&temp_path);
        return Err(JobError::Permanent(format!(
            "the artifact is over jobs.artifact_bytes_max ({limit} bytes)"
        )));
    }
    std::fs::rename(&temp_path, &final_path).map_err(|e| io_error(&final_path, e))?;
    Ok(written)
}

fn io_error(path: &std::path::Path, error: std::io::Error) -> JobError {
    JobError::Transient(format!("{}: {error}", PathBuf::from(path).display()))
}
