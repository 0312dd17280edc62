//! Typed rows: a struct whose fields are a statement's columns, in order, read by name
//! instead of by position (`row.get(14)`).

/// Declares a struct and `from_row`, which reads each field from the next column: the
/// fields' order is the statement's SELECT (or RETURNING) order, from its first column. A LEFT JOIN's columns are
/// `Option`s. Struct expressions evaluate their fields in the order written, so the
/// columns are read in the order declared.
macro_rules! typed_row {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $($(#[$field_meta:meta])* $field:ident: $type:ty),* $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $($(#[$field_meta])* $field: $type,)*
        }

        impl $name {
            /// The number of columns the statement must return.
            #[allow(dead_code)]
            pub const COLUMNS: usize = [$(stringify!($field)),*].len();

            pub fn from_row(row: percore_pg::Row<'_>) -> $name {
                // More columns may follow: those a session-checking read ends with.
                debug_assert!(row.len() >= Self::COLUMNS, "{} needs {} columns", stringify!($name), Self::COLUMNS);
                let mut column = 0usize..;
                $name {
                    $($field: row.get(column.next().expect("an unbounded range")),)*
                }
            }
        }
    };
}

pub(crate) use typed_row;
