//! Per-subtask state that a function reaches only through `&mut self` (a Kafka consumer, a
//! database connection, a split reader). Job graphs share functions between threads, so they
//! must be `Sync`; such state often is not. `Exclusive` is `Sync` for any `Send` value without
//! locking: `&Exclusive<T>` gives no access to the value at all, `&mut` gives it directly.

use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct Exclusive<T>(Mutex<T>);

impl<T> Exclusive<T> {
    pub fn new(value: T) -> Self {
        Exclusive(Mutex::new(value))
    }

    /// The value (a `&mut` reaches it without locking; a panic elsewhere cannot poison it).
    pub fn get_mut(&mut self) -> &mut T {
        self.0.get_mut().unwrap_or_else(|e| e.into_inner())
    }
}
