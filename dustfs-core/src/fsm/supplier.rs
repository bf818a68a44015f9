//! The life of a supplier, as one customer sees it: candidate → contracted → active ↔ suspect
//! → offline → replaced.
//!
//! Sans-IO: the driver feeds events with the current time (milliseconds, from its own clock)
//! and asks [`Supplier::poll_timeout`] when to call [`Supplier::handle`] with `Tick` next.
//! A supplier that misses liveness checks becomes suspect, and only counts as gone when it
//! stays suspect for the whole grace period: a flapping supplier is not replaced on the first
//! missed check. A failed audit is proof of loss and takes it offline at once.

/// States of a supplier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SupplierState {
    /// Found in the DHT, nothing agreed yet.
    Candidate,
    /// A quota was granted; nothing stored yet.
    Contracted,
    /// Holds shards and answers.
    Active,
    /// Missed liveness checks; the grace period runs.
    Suspect,
    /// Gone (grace period over, or an audit failed): its shards must be rebuilt elsewhere.
    Offline,
    /// Its shards have been placed on other suppliers.
    Replaced,
}

impl SupplierState {
    /// Every state.
    pub const ALL: [SupplierState; 6] = [
        Self::Candidate,
        Self::Contracted,
        Self::Active,
        Self::Suspect,
        Self::Offline,
        Self::Replaced,
    ];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Candidate => "candidate",
            Self::Contracted => "contracted",
            Self::Active => "active",
            Self::Suspect => "suspect",
            Self::Offline => "offline",
            Self::Replaced => "replaced",
        }
    }
}

/// What happens to a supplier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SupplierEvent {
    /// It granted a quota.
    Contracted,
    /// It acknowledged a stored shard.
    Stored,
    /// It answered a liveness check.
    CheckOk,
    /// It did not answer a liveness check.
    CheckMissed,
    /// It failed an audit (returned wrong bytes or no proof).
    AuditFailed,
    /// Time passed (the driver calls this at `poll_timeout`).
    Tick,
    /// Its shards now live elsewhere.
    Replaced,
}

/// What the driver must do after a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SupplierAction {
    /// The supplier is gone: mark its blocks degraded and queue their repair.
    RepairBlocks,
}

/// Tunables.
#[derive(Debug, Clone, Copy)]
pub struct SupplierConfig {
    /// Missed checks in a row that make an active supplier suspect.
    pub suspect_after: u32,
    /// How long a supplier may stay suspect before it counts as offline, in ms.
    pub grace_ms: u64,
}

impl Default for SupplierConfig {
    fn default() -> Self {
        Self {
            suspect_after: 2,
            grace_ms: 10 * 60 * 1000,
        }
    }
}

/// One supplier's machine.
#[derive(Debug, Clone)]
pub struct Supplier {
    state: SupplierState,
    missed: u32,
    suspect_since: Option<u64>,
}

impl Default for Supplier {
    fn default() -> Self {
        Self {
            state: SupplierState::Candidate,
            missed: 0,
            suspect_since: None,
        }
    }
}

impl Supplier {
    /// The current state.
    pub fn state(&self) -> SupplierState {
        self.state
    }

    /// When the driver must send `Tick` next (the end of the grace period), if ever.
    pub fn poll_timeout(&self, cfg: &SupplierConfig) -> Option<u64> {
        self.suspect_since.map(|t| t.saturating_add(cfg.grace_ms))
    }

    /// Feeds an event at time `now_ms`.
    pub fn handle(
        &mut self,
        now_ms: u64,
        ev: SupplierEvent,
        cfg: &SupplierConfig,
    ) -> Option<SupplierAction> {
        use SupplierEvent as E;
        use SupplierState as S;
        let before = self.state;
        match (self.state, ev) {
            (S::Candidate, E::Contracted) => self.state = S::Contracted,
            (S::Contracted, E::Stored | E::CheckOk) => self.state = S::Active,
            (S::Active, E::CheckOk | E::Stored) => self.missed = 0,
            (S::Active, E::CheckMissed) => {
                self.missed += 1;
                if self.missed >= cfg.suspect_after {
                    self.state = S::Suspect;
                    self.suspect_since = Some(now_ms);
                }
            }
            (S::Suspect, E::CheckOk | E::Stored) => {
                self.state = S::Active;
                self.missed = 0;
                self.suspect_since = None;
            }
            (S::Suspect, E::Tick)
                if self
                    .suspect_since
                    .is_some_and(|t| now_ms >= t.saturating_add(cfg.grace_ms)) =>
            {
                self.state = S::Offline;
                self.suspect_since = None;
            }
            (S::Contracted | S::Active | S::Suspect, E::AuditFailed) => {
                self.state = S::Offline;
                self.suspect_since = None;
            }
            (S::Offline, E::Replaced) => self.state = S::Replaced,
            _ => {}
        }
        (before != S::Offline && self.state == S::Offline).then_some(SupplierAction::RepairBlocks)
    }
}

/// The printable machine.
pub struct SupplierMachine;

impl super::Machine for SupplierMachine {
    const NAME: &'static str = "supplier";
    fn edges() -> Vec<(&'static str, &'static str, &'static str)> {
        // Derived by driving the real machine from each state with each event, so the drawing
        // cannot drift from the code. `check_missed(xN)` is N misses in a row, `tick(grace)` a
        // tick after the grace period.
        let cfg = SupplierConfig {
            suspect_after: 2,
            grace_ms: 100,
        };
        let reach = |target: SupplierState| -> Supplier {
            let mut m = Supplier::default();
            let path: &[SupplierEvent] = match target {
                SupplierState::Candidate => &[],
                SupplierState::Contracted => &[SupplierEvent::Contracted],
                SupplierState::Active => &[SupplierEvent::Contracted, SupplierEvent::Stored],
                SupplierState::Suspect => &[
                    SupplierEvent::Contracted,
                    SupplierEvent::Stored,
                    SupplierEvent::CheckMissed,
                    SupplierEvent::CheckMissed,
                ],
                SupplierState::Offline => &[SupplierEvent::Contracted, SupplierEvent::AuditFailed],
                SupplierState::Replaced => &[
                    SupplierEvent::Contracted,
                    SupplierEvent::AuditFailed,
                    SupplierEvent::Replaced,
                ],
            };
            for e in path {
                m.handle(0, *e, &cfg);
            }
            m
        };
        let events: [(&'static str, &[SupplierEvent], u64); 7] = [
            ("contracted", &[SupplierEvent::Contracted], 0),
            ("stored", &[SupplierEvent::Stored], 0),
            ("check_ok", &[SupplierEvent::CheckOk], 0),
            (
                "check_missed(x2)",
                &[SupplierEvent::CheckMissed, SupplierEvent::CheckMissed],
                0,
            ),
            ("audit_failed", &[SupplierEvent::AuditFailed], 0),
            ("tick(grace)", &[SupplierEvent::Tick], 1000),
            ("replaced", &[SupplierEvent::Replaced], 0),
        ];
        let mut edges = Vec::new();
        for s in SupplierState::ALL {
            for (name, evs, now) in events {
                let mut m = reach(s);
                for e in evs {
                    m.handle(now, *e, &cfg);
                }
                if m.state() != s {
                    edges.push((s.name(), name, m.state().name()));
                }
            }
        }
        edges
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event() -> impl Strategy<Value = SupplierEvent> {
        prop_oneof![
            Just(SupplierEvent::Contracted),
            Just(SupplierEvent::Stored),
            Just(SupplierEvent::CheckOk),
            Just(SupplierEvent::CheckMissed),
            Just(SupplierEvent::AuditFailed),
            Just(SupplierEvent::Tick),
            Just(SupplierEvent::Replaced),
        ]
    }

    proptest! {
        #[test]
        fn invariants_hold_under_random_events(events in proptest::collection::vec((event(), 0u64..5000), 0..200)) {
            let cfg = SupplierConfig { suspect_after: 2, grace_ms: 1000 };
            let mut m = Supplier::default();
            let mut now = 0;
            let mut repairs = 0;
            for (e, dt) in events {
                now += dt;
                let before = m.state();
                let action = m.handle(now, e, &cfg);
                repairs += usize::from(action.is_some());
                // Offline is reached only by a failed audit or a full grace period, and says so once.
                if m.state() == SupplierState::Offline && before != SupplierState::Offline {
                    prop_assert!(matches!(e, SupplierEvent::AuditFailed | SupplierEvent::Tick));
                    prop_assert_eq!(action, Some(SupplierAction::RepairBlocks));
                }
                // Replaced is final.
                if before == SupplierState::Replaced { prop_assert_eq!(m.state(), SupplierState::Replaced); }
                // A timeout is pending exactly while suspect.
                prop_assert_eq!(m.poll_timeout(&cfg).is_some(), m.state() == SupplierState::Suspect);
            }
            prop_assert!(repairs <= 1);
        }
    }

    #[test]
    fn a_flapping_supplier_is_not_replaced_but_a_silent_one_is_after_the_grace_period() {
        let cfg = SupplierConfig {
            suspect_after: 2,
            grace_ms: 1000,
        };
        let mut m = Supplier::default();
        m.handle(0, SupplierEvent::Contracted, &cfg);
        m.handle(0, SupplierEvent::Stored, &cfg);
        assert_eq!(m.handle(10, SupplierEvent::CheckMissed, &cfg), None);
        assert_eq!(m.state(), SupplierState::Active);
        m.handle(20, SupplierEvent::CheckMissed, &cfg);
        assert_eq!(m.state(), SupplierState::Suspect);
        assert_eq!(m.poll_timeout(&cfg), Some(1020));
        m.handle(500, SupplierEvent::CheckOk, &cfg);
        assert_eq!(m.state(), SupplierState::Active);
        m.handle(600, SupplierEvent::CheckMissed, &cfg);
        m.handle(700, SupplierEvent::CheckMissed, &cfg);
        assert_eq!(m.handle(1699, SupplierEvent::Tick, &cfg), None);
        assert_eq!(
            m.handle(1700, SupplierEvent::Tick, &cfg),
            Some(SupplierAction::RepairBlocks)
        );
        assert_eq!(m.state(), SupplierState::Offline);
    }
}
