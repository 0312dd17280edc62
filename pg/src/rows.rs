//! A statement's rows, decoded only when asked: the reader copies each DataRow's bytes into
//! one buffer and notes where each column starts; `Row::get` decodes one value with
//! postgres-types. The buffers come from, and go back to, the connection's spares.

use crate::error::Error;
use postgres_types::{FromSql, Type};
use std::cell::RefCell;
use std::rc::Rc;

/// Where one column's value lies in `Rows::data`; `len < 0` is NULL.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    pub start: u32,
    pub len: i32,
}

/// Buffers a finished `Rows` gives back for the next statement's rows.
#[derive(Default)]
pub(crate) struct Buffers {
    pub data: Vec<u8>,
    pub spans: Vec<Span>,
}

/// How many spare buffer pairs a connection keeps; more concurrent results allocate.
const SPARES_MAX: usize = 64;

#[derive(Default)]
pub(crate) struct Spares(RefCell<Vec<Buffers>>);

impl Spares {
    pub fn take(&self) -> Buffers {
        self.0.borrow_mut().pop().unwrap_or_default()
    }

    pub(crate) fn give(&self, mut buffers: Buffers) {
        let mut spares = self.0.borrow_mut();
        // A huge result's buffers are not worth keeping.
        if spares.len() < SPARES_MAX && buffers.data.capacity() <= 1 << 20 {
            buffers.data.clear();
            buffers.spans.clear();
            spares.push(buffers);
        }
    }
}

/// The rows one statement returned, in order.
pub struct Rows {
    pub(crate) buffers: Buffers,
    pub(crate) columns: Rc<[Type]>,
    pub(crate) spares: Rc<Spares>,
}

impl Rows {
    pub fn len(&self) -> usize {
        if self.columns.is_empty() {
            return 0;
        }
        self.buffers.spans.len() / self.columns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, index: usize) -> Option<Row<'_>> {
        (index < self.len()).then_some(Row { rows: self, index })
    }

    pub fn first(&self) -> Option<Row<'_>> {
        self.get(0)
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = Row<'_>> + DoubleEndedIterator + '_ {
        (0..self.len()).map(move |index| Row { rows: self, index })
    }

    /// The column types, as the statement's description gave them.
    pub fn columns(&self) -> &[Type] {
        &self.columns
    }
}

impl Drop for Rows {
    fn drop(&mut self) {
        self.spares.give(std::mem::take(&mut self.buffers));
    }
}

impl<'a> IntoIterator for &'a Rows {
    type Item = Row<'a>;
    type IntoIter = Box<dyn Iterator<Item = Row<'a>> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl std::fmt::Debug for Rows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rows({} × {:?})", self.len(), self.columns)
    }
}

/// One row of a `Rows`.
#[derive(Clone, Copy)]
pub struct Row<'a> {
    rows: &'a Rows,
    index: usize,
}

impl<'a> Row<'a> {
    pub fn len(&self) -> usize {
        self.rows.columns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value of column `column` (by position: statements are percore's own, so names
    /// would add only a lookup). Panics when the column does not exist or its type does
    /// not convert to `T`: both are mistakes in the code that wrote the statement.
    pub fn get<T: FromSql<'a>>(&self, column: usize) -> T {
        match self.try_get(column) {
            Ok(value) => value,
            Err(e) => panic!("column {column}: {e}"),
        }
    }

    pub fn try_get<T: FromSql<'a>>(&self, at: usize) -> Result<T, Error> {
        let rows: &'a Rows = self.rows;
        let columns = rows.columns.len();
        let ty = rows
            .columns
            .get(at)
            .ok_or_else(|| Error::Decode(format!("no column {at} of {columns}")))?;
        if !T::accepts(ty) {
            return Err(Error::Decode(format!(
                "{} cannot be read as {}",
                ty.name(),
                std::any::type_name::<T>()
            )));
        }
        let span = rows.buffers.spans[self.index * columns + at];
        let raw = (span.len >= 0).then(|| {
            let start = span.start as usize;
            &rows.buffers.data[start..start + span.len as usize]
        });
        T::from_sql_nullable(ty, raw).map_err(|e| Error::Decode(format!("{}: {e}", ty.name())))
    }
}
