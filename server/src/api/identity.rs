//! Identity: register, login, logout.
//!
//! Password hashing and verification run on the worker pool, never on the shard. A login
//! for an unknown email still verifies one Argon2 hash (a dummy made at start-up with the
//! configured cost), so the answer's timing and body do not tell unknown emails from wrong
//! passwords.

use super::auth::{self, Principal};
use super::{Answer, Ctx, extract, workers_busy, write_json};
use crate::api::state::Shard;
use crate::http::error::FieldError;
use crate::http::{ApiError, Reply};
use crate::limits::throttle::Key;
use crate::store::Stmt;
use crate::store::typed_row::typed_row;
use percore_workers::password::{self, Argon2Params};
use serde::{Deserialize, Serialize};
use std::time::{Instant, SystemTime};

/// A password has at least this many characters (not bytes: "ééé" is not a long password)…
pub const PASSWORD_CHARS_MIN: usize = 8;
/// …and at most this many bytes of UTF-8, which bounds the hashing work one request buys.
pub const PASSWORD_BYTES_MAX: usize = 1024;
pub const NAME_CHARS_MAX: usize = 200;
/// RFC 5321's limits on a forward path and on its local part.
pub const EMAIL_BYTES_MAX: usize = 254;
const EMAIL_LOCAL_BYTES_MAX: usize = 64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Registration {
    email: String,
    password: String,
    name: String,
}

#[derive(Serialize)]
pub struct User {
    pub id: i64,
    pub email: String,
    pub name: String,
    pub created_at: String,
    pub updated_at: String,
}

typed_row! {
    /// What `Register` returns.
    struct UserRow {
        id: i64,
        email: String,
        name: String,
        created_at: SystemTime,
        updated_at: SystemTime,
    }
}

typed_row! {
    /// What `LoginLookup` returns: the user and the PHC string of their password hash.
    struct LoginRow {
        user_id: i64,
        phc: String,
    }
}

typed_row! {
    /// What `SessionInsert` returns.
    struct SessionRow {
        expires_at: SystemTime,
    }
}

/// RFC 3339 in UTC with microseconds, Postgres's precision: `2026-11-25T13:00:00.123456Z`.
pub fn timestamp(time: SystemTime) -> String {
    match jiff::Timestamp::try_from(time) {
        Ok(t) => format!("{t:.6}"),
        Err(_) => String::from("1970-01-01T00:00:00.000000Z"),
    }
}

pub async fn register(ctx: &Ctx<'_>, body: &mut Vec<u8>) -> Answer {
    let input: Registration = extract::json(ctx.request)?;
    check_registration(&input)?;
    let params = argon2_params(ctx.shard);
    let secret = input.password.into_bytes();
    let hashing = ctx
        .shard
        .shared
        .workers
        .submit(move || password::hash(params, &secret))
        .map_err(|_| workers_busy(ctx.shard))?;
    let phc = hashing.await.map_err(|e| super::task_failed(ctx.shard, e))?;
    // The welcome e-mail is a job committed with the user (the write-up's send_email.delay).
    let queue = super::job_queue(ctx.shard, "email");
    let welcome = serde_json::json!({
        "subject": "Welcome to percore",
        "text": format!("Hello {},\n\nyour percore account is ready.\n", input.name),
    })
    .to_string();
    let max_attempts = queue.max_attempts() as i32;
    let rows = ctx
        .sql
        .query(
            Stmt::Register,
            &[&input.email, &phc, &input.name, &queue.name, &welcome, &max_attempts],
        )
        .await?;
    let Some(row) = rows.first().map(UserRow::from_row) else {
        return Err(ApiError::new(409, "email_taken", "an account with this email exists"));
    };
    queue.wake();
    let id = row.id;
    // A new user is news to every replica: heard by every shard (of every instance) before
    // this answers, so no shard asks a replica that has not replayed it for this user
    // (`store/replicas.rs`); a 404 for a user who exists would follow otherwise.
    if !ctx.shard.store.replicas.is_empty() {
        crate::store::cache::bus::invalidate(&ctx.shard.store, &[crate::store::cache::Key::User(id)]).await;
    }
    let user = User {
        id,
        email: row.email,
        name: row.name,
        created_at: timestamp(row.created_at),
        updated_at: timestamp(row.updated_at),
    };
    write_json(body, &user);
    Ok(Reply::json(201).with_header("Location", format!("/v1/users/{}", user.id)))
}

/// Every field of a registration, each problem listed (422).
fn check_registration(input: &Registration) -> Result<(), ApiError> {
    let mut problems = Vec::new();
    if let Err(problem) = check_email(&input.email) {
        problems.push(problem);
    }
    if input.password.len() > PASSWORD_BYTES_MAX || input.password.chars().count() < PASSWORD_CHARS_MIN {
        problems.push(FieldError::new(
            "password",
            "length",
            format!("must be at least {PASSWORD_CHARS_MIN} characters and at most {PASSWORD_BYTES_MAX} bytes"),
        ));
    }
    let name_chars = input.name.chars().count();
    if !(1..=NAME_CHARS_MAX).contains(&name_chars) || input.name.trim().is_empty() {
        problems.push(FieldError::new(
            "name",
            "length",
            format!("must be 1 to {NAME_CHARS_MAX} characters, not all blank"),
        ));
    } else if input.name.chars().any(char::is_control) {
        problems.push(FieldError::new(
            "name",
            "invalid",
            "must not contain control characters",
        ));
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(ApiError::invalid_fields(problems))
}

fn check_email(email: &str) -> Result<(), FieldError> {
    let invalid = |why: &'static str| FieldError::new("email", "invalid", why);
    if email.len() > EMAIL_BYTES_MAX {
        return Err(invalid("must be at most 254 bytes"));
    }
    let Some((local, domain)) = email.rsplit_once('@') else {
        return Err(invalid("must look like name@example.com"));
    };
    if local.is_empty() || local.len() > EMAIL_LOCAL_BYTES_MAX {
        return Err(invalid("the part before @ must be 1 to 64 bytes"));
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) || local.contains('@') {
        return Err(invalid("must not contain spaces, control characters or a second @"));
    }
    let labels_ok = domain.split('.').count() >= 2
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !labels_ok {
        return Err(invalid("the domain must be a dotted host name like example.com"));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Credentials {
    email: String,
    password: String,
}

#[derive(Serialize)]
struct Session {
    token: String,
    token_type: &'static str,
    expires_at: String,
}

pub async fn login(ctx: &Ctx<'_>, body: &mut Vec<u8>) -> Answer {
    let input: Credentials = extract::json(ctx.request)?;
    let email_key = Key::Email(input.email.to_lowercase());
    ctx.shard
        .login_throttle
        .borrow_mut()
        .attempt(&[Key::Ip(ctx.client_ip), email_key], Instant::now())
        .map_err(|wait_s| ApiError::too_many("too many login attempts; retry later", wait_s))?;
    if input.email.len() > EMAIL_BYTES_MAX || input.email.contains('\0') || input.password.len() > PASSWORD_BYTES_MAX {
        // Cannot match any account; still costs the same verification below.
        return Err(spend_verification(ctx.shard, input.password).await);
    }
    let rows = ctx.sql.query(Stmt::LoginLookup, &[&input.email]).await?;
    let Some(LoginRow { user_id, phc }) = rows.first().map(LoginRow::from_row) else {
        return Err(spend_verification(ctx.shard, input.password).await);
    };
    let secret = input.password.into_bytes();
    let verifying = ctx
        .shard
        .shared
        .workers
        .submit(move || password::verify(&phc, &secret))
        .map_err(|_| workers_busy(ctx.shard))?;
    if !verifying.await.map_err(|e| super::task_failed(ctx.shard, e))? {
        return Err(invalid_credentials());
    }
    let (token, token_hash) = auth::new_token()?;
    let ttl_s = ctx.shard.config().identity.token_ttl_s as f64;
    let rows = ctx
        .sql
        .query(Stmt::SessionInsert, &[&token_hash.as_slice(), &user_id, &ttl_s])
        .await?;
    // From here the client is its token, no longer its address: what it wrote as the
    // address (its registration, say) must still be what its first reads see.
    ctx.sql
        .wrote_as(crate::limits::throttle::Key::Token(token_hash).client_id());
    let SessionRow { expires_at } = SessionRow::from_row(rows.first().ok_or_else(ApiError::internal)?);
    write_json(
        body,
        &Session {
            token,
            token_type: "Bearer",
            expires_at: timestamp(expires_at),
        },
    );
    Ok(Reply::json(200).with_header("Cache-Control", "no-store"))
}

/// Verifies against the dummy hash, then answers as for a wrong password.
async fn spend_verification(shard: &Shard, password: String) -> ApiError {
    let dummy = shard.shared.dummy_password_hash.clone();
    match shard
        .shared
        .workers
        .submit(move || password::verify(&dummy, password.as_bytes()))
    {
        // Answered as a real verification would be: shed alike, else a wrong password.
        Ok(verifying) => match verifying.await {
            Err(shed @ percore_workers::TaskFailed::Shed) => super::task_failed(shard, shed),
            _ => invalid_credentials(),
        },
        Err(_) => workers_busy(shard),
    }
}

fn invalid_credentials() -> ApiError {
    ApiError::new(401, "invalid_credentials", "the email or the password is wrong")
}

pub async fn logout(ctx: &Ctx<'_>, principal: &Principal) -> Answer {
    let revoked = ctx.sql.execute(Stmt::Logout, &[&principal.token_hash()]).await?;
    if revoked == 0 {
        return Err(auth::invalid_token());
    }
    // Before the 204: no shard of any process may accept the token after it.
    crate::store::cache::bus::invalidate(
        &ctx.shard.store,
        &[crate::store::cache::Key::Session(principal.token_hash)],
    )
    .await;
    Ok(Reply::new(204, crate::http::response::JSON))
}

pub fn argon2_params(shard: &Shard) -> Argon2Params {
    let w = &shard.config().workers;
    Argon2Params {
        memory_kib: w.argon2_memory_kib,
        iterations: w.argon2_iterations,
        parallelism: w.argon2_parallelism,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_shapes() {
        for good in ["a@b.co", "first.last+tag@sub.example.org", "X@EXAMPLE.COM"] {
            assert!(check_email(good).is_ok(), "{good}");
        }
        for bad in [
            "", "a", "a@", "@b.co", "a@b", "a b@c.de", "a@b..co", "a@-b.co", "a@b.co\n", "a@@b.co",
        ] {
            assert!(check_email(bad).is_err(), "{bad:?}");
        }
        assert!(check_email(&format!("{}@b.co", "a".repeat(65))).is_err());
    }
}
