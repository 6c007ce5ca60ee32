//! The per-session cap on open WebSockets (`SLUICE_DASHBOARD_WS_PER_SESSION`).
//!
//! A slot is taken before the upgrade is answered and lives in the socket's task, so it is
//! given back however the socket ends: a close, a dropped connection, a client that stopped
//! answering pings, a failed upgrade (the task never starts and drops it), or shutdown. The
//! count is per process: each replica caps the sockets it serves.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

/// Open sockets per session id.
#[derive(Debug, Clone)]
pub(crate) struct SessionSlots {
    limit: usize,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

impl SessionSlots {
    /// Slots for at most `limit` sockets per session.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            open: Arc::default(),
        }
    }

    /// The cap.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// A slot for one more socket of `session`, or `None` when it has `limit` open.
    pub(crate) fn acquire(&self, session: &str) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(session.to_owned()).or_default();
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(Slot {
            slots: self.clone(),
            session: session.to_owned(),
        })
    }
}

/// One open socket's place in its session's count; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct Slot {
    slots: SessionSlots,
    session: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .slots
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.session) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.session);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_gets_limit_slots_and_a_dropped_one_comes_back() {
        let slots = SessionSlots::new(2);
        let a = slots.acquire("s1").expect("first");
        let _b = slots.acquire("s1").expect("second");
        assert!(slots.acquire("s1").is_none(), "third of two");
        assert!(slots.acquire("s2").is_some(), "another session");
        drop(a);
        assert!(slots.acquire("s1").is_some(), "freed by the drop");
    }

    #[test]
    fn sessions_without_sockets_are_forgotten() {
        let slots = SessionSlots::new(1);
        drop(slots.acquire("s1"));
        assert!(slots.open.lock().expect("lock").is_empty());
    }
}
