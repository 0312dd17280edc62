//! The pipeline: callers encode Bind/Execute/Sync straight into the connection's write
//! buffer and wait on a reusable slot; one driver future per connection owns the socket,
//! sends everything encoded since its last send in one write, and cuts what comes back
//! into each statement's answer at its ReadyForQuery.
//!
//! Single-threaded by design (`Rc`, `RefCell`): a connection belongs to one shard.

use crate::error::{DbError, Error};
use crate::rows::{Buffers, Rows, Span, Spares};
use bytes::{Buf, BytesMut};
use futures_io::{AsyncRead, AsyncWrite};
use postgres_protocol::message::{backend, frontend};
use postgres_types::{ToSql, Type};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// The largest backend message accepted; a larger length means a broken stream.
const MESSAGE_BYTES_MAX: usize = 64 << 20;
/// The read buffer's starting size: many answers per receive.
const READ_BUFFER_BYTES: usize = 32 << 10;

/// A statement prepared on one connection. Its generation names that connection: a
/// statement is never sent on a connection that did not prepare it.
#[derive(Debug)]
pub struct Statement {
    pub(crate) name: String,
    pub(crate) params: Vec<Type>,
    pub(crate) columns: Rc<[Type]>,
    pub(crate) generation: u64,
}

impl Statement {
    pub fn params(&self) -> &[Type] {
        &self.params
    }

    pub fn columns(&self) -> &[Type] {
        &self.columns
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// Where a statement's answer stands.
enum Progress {
    /// No statement: on the free list.
    Free,
    /// Sent (or encoded), its answer not complete.
    Waiting,
    Done(Result<(), Error>),
}

struct Slot {
    progress: Progress,
    waker: Option<Waker>,
    /// Its caller gave up (dropped the future): the answer is read and thrown away.
    abandoned: bool,
    columns: Rc<[Type]>,
    buffers: Buffers,
    affected: u64,
    error: Option<DbError>,
}

struct State {
    write: BytesMut,
    /// The driver's waker: woken when `write` goes from empty to non-empty, or on abort.
    driver: Option<Waker>,
    /// Slots in the order their statements were sent: answers come back in that order.
    pending: VecDeque<usize>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Why the connection is unusable, once it is.
    closed: Option<String>,
    abort: bool,
    /// When the oldest pending statement began to wait for its own answer: when it was
    /// sent, or when the one before it was answered, whichever is later.
    front_since: Instant,
}

pub(crate) struct Inner {
    state: RefCell<State>,
    spares: Rc<Spares>,
    generation: u64,
}

/// A handle to send statements on one connection; cheap to share on its shard.
#[derive(Clone)]
pub struct Client {
    inner: Rc<Inner>,
    statements: Rc<[Statement]>,
}

impl Client {
    pub(crate) fn new(generation: u64, statements: Vec<Statement>) -> Client {
        Client {
            inner: Rc::new(Inner {
                state: RefCell::new(State {
                    write: BytesMut::with_capacity(8 << 10),
                    driver: None,
                    pending: VecDeque::new(),
                    slots: Vec::new(),
                    free: Vec::new(),
                    closed: None,
                    abort: false,
                    front_since: Instant::now(),
                }),
                spares: Rc::new(Spares::default()),
                generation,
            }),
            statements: statements.into(),
        }
    }

    /// The statements prepared at connect, in the order they were given.
    pub fn statement(&self, index: usize) -> &Statement {
        &self.statements[index]
    }

    pub fn generation(&self) -> u64 {
        self.inner.generation
    }

    pub fn is_closed(&self) -> bool {
        self.inner.state.borrow().closed.is_some()
    }

    /// Statements sent and not yet answered.
    pub fn pending(&self) -> usize {
        self.inner.state.borrow().pending.len()
    }

    /// Since when the oldest pending statement has waited for its own answer; `None` when
    /// nothing is pending. A caller that finds this older than its deadline `abort`s.
    pub fn waiting_since(&self) -> Option<Instant> {
        let state = self.inner.state.borrow();
        (!state.pending.is_empty()).then_some(state.front_since)
    }

    /// Gives up on the connection: every pending statement fails with `Error::Timeout`,
    /// and the driver ends with it.
    pub fn abort(&self) {
        let mut state = self.inner.state.borrow_mut();
        state.abort = true;
        if let Some(driver) = &state.driver {
            driver.wake_by_ref();
        }
    }

    /// Runs `statement` and returns its rows.
    pub async fn query(&self, statement: &Statement, params: &[&(dyn ToSql + Sync)]) -> Result<Rows, Error> {
        let (buffers, _) = self.run(statement, params).await?;
        Ok(Rows {
            buffers,
            columns: statement.columns.clone(),
            spares: self.inner.spares.clone(),
        })
    }

    /// Runs `statement` and returns how many rows it affected.
    pub async fn execute(&self, statement: &Statement, params: &[&(dyn ToSql + Sync)]) -> Result<u64, Error> {
        let (buffers, affected) = self.run(statement, params).await?;
        self.inner.spares.give(buffers);
        Ok(affected)
    }

    async fn run(&self, statement: &Statement, params: &[&(dyn ToSql + Sync)]) -> Result<(Buffers, u64), Error> {
        let slot = self.send(statement, params)?;
        let waiting = Waiting {
            inner: &self.inner,
            slot,
        };
        waiting.await
    }

    /// Encodes the statement into the write buffer and queues a slot for its answer.
    fn send(&self, statement: &Statement, params: &[&(dyn ToSql + Sync)]) -> Result<usize, Error> {
        if statement.generation != self.inner.generation {
            debug_assert!(
                false,
                "statement {} sent on a connection that did not prepare it",
                statement.name
            );
            return Err(Error::Encode("statement prepared on another connection".into()));
        }
        if params.len() != statement.params.len() {
            return Err(Error::Encode(format!(
                "{} parameters given, {} expected",
                params.len(),
                statement.params.len()
            )));
        }
        let mut state = self.inner.state.borrow_mut();
        if let Some(why) = &state.closed {
            return Err(Error::Closed(why.clone()));
        }
        let was_empty = state.write.is_empty();
        encode(&mut state.write, statement, params)?;
        let slot = state.take_slot(statement.columns.clone(), &self.inner.spares);
        if state.pending.is_empty() {
            state.front_since = Instant::now();
        }
        state.pending.push_back(slot);
        if was_empty && let Some(driver) = &state.driver {
            driver.wake_by_ref();
        }
        Ok(slot)
    }
}

/// Bind (binary parameters and results), Execute, Sync. On a parameter that does not
/// encode, the buffer is put back as it was: nothing half-written is ever sent.
fn encode(write: &mut BytesMut, statement: &Statement, params: &[&(dyn ToSql + Sync)]) -> Result<(), Error> {
    let before = write.len();
    let values = params.iter().zip(&statement.params);
    let bound = frontend::bind(
        "",
        &statement.name,
        [1i16],
        values,
        |(value, ty), out| match value.to_sql_checked(ty, out) {
            Ok(postgres_types::IsNull::No) => Ok(postgres_protocol::IsNull::No),
            Ok(postgres_types::IsNull::Yes) => Ok(postgres_protocol::IsNull::Yes),
            Err(e) => Err(e),
        },
        [1i16],
        write,
    );
    if let Err(e) = bound {
        write.truncate(before);
        return Err(Error::Encode(match e {
            frontend::BindError::Conversion(e) => e.to_string(),
            frontend::BindError::Serialization(e) => e.to_string(),
        }));
    }
    frontend::execute("", 0, write).map_err(|e| Error::Encode(e.to_string()))?;
    frontend::sync(write);
    Ok(())
}

impl State {
    fn take_slot(&mut self, columns: Rc<[Type]>, spares: &Spares) -> usize {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.slots.push(Slot {
                    progress: Progress::Free,
                    waker: None,
                    abandoned: false,
                    columns: columns.clone(),
                    buffers: Buffers::default(),
                    affected: 0,
                    error: None,
                });
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[index];
        debug_assert!(matches!(slot.progress, Progress::Free));
        slot.progress = Progress::Waiting;
        slot.abandoned = false;
        slot.columns = columns;
        slot.buffers = spares.take();
        slot.affected = 0;
        slot.error = None;
        index
    }

    fn free_slot(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        slot.progress = Progress::Free;
        slot.waker = None;
        self.free.push(index);
    }

    /// The front statement's answer is complete (its ReadyForQuery came).
    fn complete_front(&mut self) -> Result<(), Error> {
        let index = self
            .pending
            .pop_front()
            .ok_or_else(|| protocol("ReadyForQuery with nothing pending"))?;
        if !self.pending.is_empty() {
            self.front_since = Instant::now();
        }
        let slot = &mut self.slots[index];
        if slot.abandoned {
            self.free_slot(index);
            return Ok(());
        }
        slot.progress = Progress::Done(match slot.error.take() {
            Some(db) => Err(Error::Db(db)),
            None => Ok(()),
        });
        if let Some(waker) = slot.waker.take() {
            waker.wake();
        }
        Ok(())
    }

    /// Fails every pending statement with `error()` and marks the connection closed.
    fn fail_all(&mut self, why: &str, error: impl Fn() -> Error) {
        if self.closed.is_none() {
            self.closed = Some(why.to_string());
        }
        self.write.clear();
        while let Some(index) = self.pending.pop_front() {
            let slot = &mut self.slots[index];
            if slot.abandoned {
                self.free_slot(index);
                continue;
            }
            slot.progress = Progress::Done(Err(error()));
            if let Some(waker) = slot.waker.take() {
                waker.wake();
            }
        }
    }

    fn front(&mut self) -> Result<&mut Slot, Error> {
        let index = *self
            .pending
            .front()
            .ok_or_else(|| protocol("an answer with nothing pending"))?;
        Ok(&mut self.slots[index])
    }
}

fn protocol(what: &str) -> Error {
    Error::Closed(format!("protocol error: {what}"))
}

/// A caller waiting on its slot. Dropped early (a timeout above it), the slot is marked
/// abandoned and freed when its answer has been read past.
struct Waiting<'a> {
    inner: &'a Inner,
    slot: usize,
}

impl Future for Waiting<'_> {
    type Output = Result<(Buffers, u64), Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.inner.state.borrow_mut();
        let slot = &mut state.slots[self.slot];
        match std::mem::replace(&mut slot.progress, Progress::Waiting) {
            Progress::Done(result) => {
                let buffers = std::mem::take(&mut slot.buffers);
                let affected = slot.affected;
                state.free_slot(self.slot);
                Poll::Ready(result.map(|()| (buffers, affected)))
            }
            Progress::Waiting => {
                if !slot.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    slot.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Progress::Free => unreachable!("a waiting slot is never free"),
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut state = self.inner.state.borrow_mut();
        let slot = &mut state.slots[self.slot];
        match slot.progress {
            Progress::Waiting => {
                slot.abandoned = true;
                slot.waker = None;
            }
            Progress::Done(_) => {
                slot.buffers = Buffers::default();
                state.free_slot(self.slot);
            }
            Progress::Free => {}
        }
    }
}

/// Drives one connection: sends what callers encoded and reads their answers. Resolves
/// when the connection ends (its error says why); every statement still pending then
/// fails, and so does every later one.
pub struct Connection<S> {
    stream: S,
    client: Client,
    read: Vec<u8>,
    start: usize,
    end: usize,
}

impl<S> Connection<S> {
    pub(crate) fn new(stream: S, client: Client, leftover: &[u8]) -> Connection<S> {
        let mut read = vec![0; READ_BUFFER_BYTES.max(leftover.len())];
        read[..leftover.len()].copy_from_slice(leftover);
        Connection {
            stream,
            client,
            read,
            start: 0,
            end: leftover.len(),
        }
    }

    fn fail(&self, error: Error) -> Poll<Result<(), Error>> {
        let why = error.to_string();
        let mut state = self.client.inner.state.borrow_mut();
        match &error {
            Error::Timeout => state.fail_all(&why, || Error::Timeout),
            _ => state.fail_all(&why, || Error::Closed(why.clone())),
        }
        Poll::Ready(Err(error))
    }

    /// Cuts complete messages off the read buffer and hands them to their statements.
    fn take_messages(&mut self) -> Result<(), Error> {
        let mut state = self.client.inner.state.borrow_mut();
        while let Some(header) = backend::Header::parse(&self.read[self.start..self.end]).map_err(Error::io)? {
            let total = 1 + header.len() as usize;
            if total > MESSAGE_BYTES_MAX {
                return Err(protocol("a message over 64 MiB"));
            }
            if self.end - self.start < total {
                break;
            }
            let frame = &self.read[self.start..self.start + total];
            handle(&mut state, header.tag(), frame)?;
            self.start += total;
        }
        // Make room at the end: slide what is left to the front, or grow for a big message.
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.read.len() {
            let needed = match backend::Header::parse(&self.read[self.start..self.end]).map_err(Error::io)? {
                Some(header) => 1 + header.len() as usize,
                None => 5,
            };
            self.read.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
            if needed > self.read.len() {
                self.read.resize(needed.next_power_of_two(), 0);
            }
        }
        Ok(())
    }
}

/// One backend message for the front pending statement (or the connection).
fn handle(state: &mut State, tag: u8, frame: &[u8]) -> Result<(), Error> {
    let body = &frame[5..];
    match tag {
        backend::DATA_ROW_TAG => {
            let slot = state.front()?;
            if !slot.abandoned {
                take_row(slot, body)?;
            }
        }
        backend::READY_FOR_QUERY_TAG => state.complete_front()?,
        backend::COMMAND_COMPLETE_TAG => {
            let slot = state.front()?;
            // "UPDATE 3", "INSERT 0 1", "SELECT 7": the count is the last word.
            let tag = body.strip_suffix(&[0]).unwrap_or(body);
            let count = tag.rsplit(|b| *b == b' ').next().unwrap_or_default();
            slot.affected = std::str::from_utf8(count)
                .ok()
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
        }
        backend::BIND_COMPLETE_TAG | backend::EMPTY_QUERY_RESPONSE_TAG => {
            state.front()?;
        }
        backend::ERROR_RESPONSE_TAG => {
            let db = parse_error(frame)?;
            if db.ends_session() || state.pending.is_empty() {
                return Err(Error::Closed(format!("{}: {} ({})", db.severity, db.message, db.code)));
            }
            let slot = state.front()?;
            slot.error.get_or_insert(db);
        }
        backend::NOTICE_RESPONSE_TAG => log::debug!("postgres notice: {}", String::from_utf8_lossy(body)),
        // Asynchronous: a setting changed, a NOTIFY, nothing for a statement.
        backend::PARAMETER_STATUS_TAG | backend::NOTIFICATION_RESPONSE_TAG => {}
        other => return Err(protocol(&format!("unexpected message {:?}", other as char))),
    }
    Ok(())
}

/// Copies a DataRow's columns into the slot's buffer and notes each column's span.
fn take_row(slot: &mut Slot, body: &[u8]) -> Result<(), Error> {
    let bad = || protocol("a malformed DataRow");
    let count = body
        .get(..2)
        .map(|b| i16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(bad)?;
    if count as usize != slot.columns.len() {
        return Err(protocol("a DataRow whose width differs from the statement's"));
    }
    let base = slot.buffers.data.len();
    let values = &body[2..];
    slot.buffers.data.extend_from_slice(values);
    let mut at = 0usize;
    for _ in 0..count {
        let len = values
            .get(at..at + 4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(bad)?;
        at += 4;
        slot.buffers.spans.push(Span {
            start: u32::try_from(base + at).map_err(|_| bad())?,
            len,
        });
        if len > 0 {
            at += len as usize;
        }
        if at > values.len() {
            return Err(bad());
        }
    }
    Ok(())
}

pub(crate) fn parse_error(frame: &[u8]) -> Result<DbError, Error> {
    let mut bytes = BytesMut::from(frame);
    match backend::Message::parse(&mut bytes).map_err(Error::io)? {
        Some(backend::Message::ErrorResponse(body)) => Ok(DbError::parse(body.fields())),
        _ => Err(protocol("a malformed ErrorResponse")),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Future for Connection<S> {
    type Output = Result<(), Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        {
            let mut state = this.client.inner.state.borrow_mut();
            if state.abort {
                drop(state);
                return this.fail(Error::Timeout);
            }
            if !state.driver.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                state.driver = Some(cx.waker().clone());
            }
        }
        // Everything encoded since the last send, in one send.
        loop {
            let mut state = this.client.inner.state.borrow_mut();
            if state.write.is_empty() {
                break;
            }
            match Pin::new(&mut this.stream).poll_write(cx, &state.write) {
                Poll::Ready(Ok(0)) => {
                    drop(state);
                    return this.fail(Error::Closed("the socket accepts no more bytes".into()));
                }
                Poll::Ready(Ok(n)) => state.write.advance(n),
                Poll::Ready(Err(e)) => {
                    drop(state);
                    return this.fail(Error::io(e));
                }
                Poll::Pending => break,
            }
        }
        // Every answer that has arrived, many per receive.
        loop {
            if let Err(e) = this.take_messages() {
                return this.fail(e);
            }
            let end = this.end;
            match Pin::new(&mut this.stream).poll_read(cx, &mut this.read[end..]) {
                Poll::Ready(Ok(0)) => return this.fail(Error::Closed("the server closed the connection".into())),
                Poll::Ready(Ok(n)) => this.end += n,
                Poll::Ready(Err(e)) => return this.fail(Error::io(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S> Drop for Connection<S> {
    fn drop(&mut self) {
        let mut state = self.client.inner.state.borrow_mut();
        state.driver = None;
        if state.closed.is_none() {
            state.fail_all("the connection was dropped", || {
                Error::Closed("the connection was dropped".into())
            });
        }
    }
}
