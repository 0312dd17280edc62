//! `email`: one plain-text message to the job's user, over SMTP (`[email] smtp_url`), or
//! into `<artifacts_dir>/outbox/` when no SMTP server is configured (development).
//! The Message-ID is derived from the job id, so a retry after a crash is the same message
//! to the receiving side.

use super::{Context, JobError, params};
use crate::jobs::store::Claimed;
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message};
use lettre::{SmtpTransport, Transport};
use serde::Deserialize;

pub const SUBJECT_CHARS_MAX: usize = 200;
/// Characters, not bytes: at 6 bytes of JSON escape each, a longest subject and text still
/// fit in `jobs.params_bytes_max`'s default.
pub const TEXT_CHARS_MAX: usize = 2_000;

#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmailParams {
    pub subject: String,
    pub text: String,
}

/// A subject is one line of 1-200 characters; the text at most 2,000 characters.
pub fn check(params: &EmailParams) -> Result<(), String> {
    let subject_chars = params.subject.chars().count();
    if !(1..=SUBJECT_CHARS_MAX).contains(&subject_chars) || params.subject.chars().any(char::is_control) {
        return Err(format!(
            "subject must be 1 to {SUBJECT_CHARS_MAX} characters on one line"
        ));
    }
    if params.text.chars().count() > TEXT_CHARS_MAX || params.text.contains('\0') {
        return Err(format!("text must be at most {TEXT_CHARS_MAX} characters, without NUL"));
    }
    Ok(())
}

pub enum Mailer {
    Smtp(Box<SmtpTransport>),
    /// No SMTP server configured: `<artifacts_dir>/outbox/job-<id>.eml`.
    Outbox,
}

impl Mailer {
    pub fn new(settings: &crate::jobs::config::Email) -> Mailer {
        if settings.smtp_url.is_empty() {
            return Mailer::Outbox;
        }
        let timeout = std::time::Duration::from_millis(settings.timeout_ms);
        match SmtpTransport::from_url(&settings.smtp_url) {
            Ok(builder) => Mailer::Smtp(Box::new(builder.timeout(Some(timeout)).build())),
            // validate() refused such URLs at start-up.
            Err(e) => panic!("email.smtp_url passed validation but does not parse: {e}"),
        }
    }
}

pub fn send(ctx: &Context, job: &Claimed) -> Result<serde_json::Value, JobError> {
    let input: EmailParams = params(job)?;
    let mut db = ctx.db.get()?;
    let Some(user) = db.query_opt("SELECT email::text, name FROM users WHERE id = $1", &[&job.user_id])? else {
        return Err(JobError::Permanent("the user no longer exists".into()));
    };
    let (address, name): (String, String) = (user.get(0), user.get(1));
    drop(db);
    let from: Mailbox = ctx
        .settings
        .email
        .from
        .parse()
        .map_err(|e| JobError::Permanent(format!("email.from: {e}")))?;
    let to = Mailbox::new(
        Some(name),
        address
            .parse()
            .map_err(|e| JobError::Permanent(format!("recipient {address:?}: {e}")))?,
    );
    let message_id = format!("<job-{}@{}>", job.id, from.email.domain());
    let message = Message::builder()
        .message_id(Some(message_id.clone()))
        .from(from)
        .to(to)
        .subject(input.subject)
        .header(ContentType::TEXT_PLAIN)
        .body(input.text)
        .map_err(|e| JobError::Permanent(format!("building the message: {e}")))?;
    match &ctx.mailer {
        Mailer::Smtp(transport) => {
            transport.send(&message).map_err(|e| {
                let text = format!("SMTP: {e}");
                if e.is_permanent() {
                    JobError::Permanent(text)
                } else {
                    JobError::Transient(text)
                }
            })?;
        }
        Mailer::Outbox => {
            let name = format!("outbox/{}", super::artifact::file_name(job.id, "eml"));
            let bytes = message.formatted();
            super::artifact::store(&ctx.settings, &name, bytes.as_slice())?;
        }
    };
    Ok(serde_json::json!({ "message_id": message_id, "to": address }))
}
