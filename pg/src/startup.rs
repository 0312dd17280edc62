//! Opening a connection: the startup message, authentication (trust, cleartext, md5,
//! SCRAM-SHA-256), the read-write check a multi-host URL may ask for, and preparing every
//! statement in one round trip. Runs before the driver exists, on the bare socket.

use crate::config::{Config, TargetSessionAttrs};
use crate::conn::{Client, Connection, Statement};
use crate::error::Error;
use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use futures_io::{AsyncRead, AsyncWrite};
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use postgres_types::{Kind, Type};
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};

/// Tells one connection's statements from another's, process-wide.
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// The socket during start-up: what was read and not yet parsed.
struct Handshake<S> {
    stream: S,
    read: BytesMut,
    write: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Handshake<S> {
    async fn send(&mut self) -> Result<(), Error> {
        while !self.write.is_empty() {
            let (stream, write) = (&mut self.stream, &self.write);
            let n = poll_fn(|cx| Pin::new(&mut *stream).poll_write(cx, write))
                .await
                .map_err(Error::io)?;
            if n == 0 {
                return Err(Error::Closed("the server stopped reading".into()));
            }
            let _ = self.write.split_to(n);
        }
        Ok(())
    }

    async fn receive(&mut self) -> Result<Message, Error> {
        loop {
            if let Some(message) = Message::parse(&mut self.read).map_err(Error::io)? {
                if let Message::ErrorResponse(body) = message {
                    return Err(Error::Db(crate::error::DbError::parse(body.fields())));
                }
                return Ok(message);
            }
            let mut chunk = [0u8; 8192];
            let stream = &mut self.stream;
            let n = poll_fn(|cx| Pin::new(&mut *stream).poll_read(cx, &mut chunk))
                .await
                .map_err(Error::io)?;
            if n == 0 {
                return Err(Error::Closed("the server closed the connection during start-up".into()));
            }
            self.read.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Logs in on `stream` and prepares `statements` (in order: `Client::statement(i)` is
/// `statements[i]`). The returned `Connection` must be polled (spawned) for the client's
/// statements to be sent and answered.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    config: &Config,
    statements: &[&str],
) -> Result<(Client, Connection<S>), Error> {
    let mut io = Handshake {
        stream,
        read: BytesMut::with_capacity(8192),
        write: BytesMut::with_capacity(1024),
    };
    let mut params: Vec<(&str, &str)> = vec![("user", &config.user), ("client_encoding", "UTF8")];
    if let Some(dbname) = &config.dbname {
        params.push(("database", dbname));
    }
    params.extend(config.params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    frontend::startup_message(params, &mut io.write).map_err(Error::io)?;
    io.send().await?;
    authenticate(&mut io, config).await?;
    let read_write = config.target_session_attrs == TargetSessionAttrs::ReadWrite;
    // Postgres 14 and later report in_hot_standby at login; older servers are asked.
    let mut standby_reported = false;
    loop {
        match io.receive().await? {
            Message::ParameterStatus(status) if status.name().ok() == Some("in_hot_standby") => {
                standby_reported = true;
                if read_write && status.value().ok() == Some("on") {
                    return Err(Error::ReadOnly);
                }
            }
            Message::ReadyForQuery(_) => break,
            _ => {}
        }
    }
    if read_write && !standby_reported {
        let answer = simple_query(&mut io, "SHOW transaction_read_only").await?;
        if answer
            .first()
            .and_then(|row| row.first())
            .is_some_and(|v| v.as_deref() == Some("on"))
        {
            return Err(Error::ReadOnly);
        }
    }
    let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
    let prepared = prepare(&mut io, statements, generation).await?;
    let leftover = io.read.to_vec();
    let client = Client::new(generation, prepared);
    let connection = Connection::new(io.stream, client.clone(), &leftover);
    Ok((client, connection))
}

async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(io: &mut Handshake<S>, config: &Config) -> Result<(), Error> {
    let password = || {
        config
            .password
            .as_deref()
            .map(str::as_bytes)
            .ok_or_else(|| Error::Closed("the server asks for a password and the URL gives none".into()))
    };
    loop {
        match io.receive().await? {
            Message::AuthenticationOk => return Ok(()),
            Message::AuthenticationCleartextPassword => {
                frontend::password_message(password()?, &mut io.write).map_err(Error::io)?;
            }
            Message::AuthenticationMd5Password(body) => {
                let hash = md5_hash(config.user.as_bytes(), password()?, body.salt());
                frontend::password_message(hash.as_bytes(), &mut io.write).map_err(Error::io)?;
            }
            Message::AuthenticationSasl(body) => {
                let mut mechanisms = body.mechanisms();
                let mut scram = false;
                while let Some(mechanism) = mechanisms.next().map_err(Error::io)? {
                    scram |= mechanism == sasl::SCRAM_SHA_256;
                }
                if !scram {
                    return Err(Error::Closed(
                        "the server offers no SASL mechanism but SCRAM-SHA-256-PLUS, which needs TLS".into(),
                    ));
                }
                let mut exchange = sasl::ScramSha256::new(password()?, sasl::ChannelBinding::unsupported());
                frontend::sasl_initial_response(sasl::SCRAM_SHA_256, exchange.message(), &mut io.write)
                    .map_err(Error::io)?;
                io.send().await?;
                let Message::AuthenticationSaslContinue(body) = io.receive().await? else {
                    return Err(Error::Closed("SCRAM: expected the server's first message".into()));
                };
                exchange.update(body.data()).map_err(Error::io)?;
                frontend::sasl_response(exchange.message(), &mut io.write).map_err(Error::io)?;
                io.send().await?;
                let Message::AuthenticationSaslFinal(body) = io.receive().await? else {
                    return Err(Error::Closed("SCRAM: expected the server's final message".into()));
                };
                exchange.finish(body.data()).map_err(Error::io)?;
                continue;
            }
            _ => {
                return Err(Error::Closed(
                    "an authentication method percore does not support (use scram-sha-256, md5, password or trust)"
                        .into(),
                ));
            }
        }
        io.send().await?;
    }
}

/// Parse + Describe of every statement, one Sync: one round trip for them all.
async fn prepare<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Handshake<S>,
    statements: &[&str],
    generation: u64,
) -> Result<Vec<Statement>, Error> {
    for (i, sql) in statements.iter().enumerate() {
        let name = format!("s{i}");
        frontend::parse(&name, sql, std::iter::empty(), &mut io.write).map_err(Error::io)?;
        frontend::describe(b'S', &name, &mut io.write).map_err(Error::io)?;
    }
    frontend::sync(&mut io.write);
    io.send().await?;
    let mut described: Vec<(Vec<u32>, Vec<u32>)> = Vec::with_capacity(statements.len());
    let mut params = Vec::new();
    let mut failed = None;
    loop {
        let message = match io.receive().await {
            Ok(message) => message,
            // The statement that failed is the next undescribed one; the server skips to Sync.
            Err(Error::Db(error)) if failed.is_none() => {
                failed = Some(Error::Prepare {
                    index: described.len(),
                    error,
                });
                continue;
            }
            Err(e) => return Err(e),
        };
        match message {
            Message::ParameterDescription(body) => {
                params = body.parameters().collect().map_err(Error::io)?;
            }
            Message::RowDescription(body) => {
                let columns = body.fields().map(|f| Ok(f.type_oid())).collect().map_err(Error::io)?;
                described.push((std::mem::take(&mut params), columns));
            }
            Message::NoData => described.push((std::mem::take(&mut params), Vec::new())),
            Message::ReadyForQuery(_) => break,
            _ => {}
        }
    }
    if let Some(error) = failed {
        return Err(error);
    }
    if described.len() != statements.len() {
        return Err(Error::Closed(format!(
            "prepared {} of {} statements",
            described.len(),
            statements.len()
        )));
    }
    let types = resolve_types(io, &described).await?;
    let lookup = |oid: &u32| types.iter().find(|t| t.oid() == *oid).cloned().expect("resolved above");
    Ok(described
        .iter()
        .enumerate()
        .map(|(i, (params, columns))| Statement {
            name: format!("s{i}"),
            params: params.iter().map(lookup).collect(),
            columns: columns.iter().map(lookup).collect::<Vec<_>>().into(),
            generation,
        })
        .collect())
}

/// Every type the statements use: built-in ones by OID, others (an extension's, such as
/// citext) by name from pg_type, so ToSql/FromSql can judge them.
async fn resolve_types<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Handshake<S>,
    described: &[(Vec<u32>, Vec<u32>)],
) -> Result<Vec<Type>, Error> {
    let mut oids: Vec<u32> = described.iter().flat_map(|(p, c)| p.iter().chain(c)).copied().collect();
    oids.sort_unstable();
    oids.dedup();
    let mut types: Vec<Type> = oids.iter().filter_map(|oid| Type::from_oid(*oid)).collect();
    let unknown: Vec<String> = oids
        .iter()
        .filter(|oid| Type::from_oid(**oid).is_none())
        .map(u32::to_string)
        .collect();
    if unknown.is_empty() {
        return Ok(types);
    }
    let sql = format!(
        "SELECT t.oid::text, t.typname, n.nspname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.oid IN ({})",
        unknown.join(",")
    );
    for row in simple_query(io, &sql).await? {
        let text = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        let oid = text(0)
            .parse()
            .map_err(|_| Error::Closed("pg_type gave a bad oid".into()))?;
        types.push(Type::new(text(1), oid, Kind::Simple, text(2)));
    }
    if types.len() != oids.len() {
        return Err(Error::Closed("a statement uses a type pg_type does not list".into()));
    }
    Ok(types)
}

/// A simple-protocol query at start-up: its rows as text.
async fn simple_query<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Handshake<S>,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, Error> {
    frontend::query(sql, &mut io.write).map_err(Error::io)?;
    io.send().await?;
    let mut rows = Vec::new();
    loop {
        match io.receive().await? {
            Message::DataRow(body) => {
                let buffer = body.buffer();
                let row = body
                    .ranges()
                    .map(|range| Ok(range.map(|r| String::from_utf8_lossy(&buffer[r]).into_owned())))
                    .collect()
                    .map_err(Error::io)?;
                rows.push(row);
            }
            Message::ReadyForQuery(_) => return Ok(rows),
            _ => {}
        }
    }
}
