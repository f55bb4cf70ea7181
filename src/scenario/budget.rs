//! What one scenario run may spend besides time and operations: memory (counted by the
//! allocator, `crate::alloc`), log bytes, events emitted and their bytes, websocket
//! pushes and their bytes, outgoing calls. A run that breaks a budget fails with
//! [`super::ScenarioError::Budget`] naming it; each kind is counted for `/metrics`.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::alloc::{self, MemoryBreach, NodeMemory};

/// One kind of budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetKind {
    Memory,
    NodeMemory,
    LogBytes,
    Events,
    EventBytes,
    Pushes,
    PushBytes,
    OutgoingCalls,
}

impl BudgetKind {
    pub const ALL: [BudgetKind; 8] = [
        BudgetKind::Memory,
        BudgetKind::NodeMemory,
        BudgetKind::LogBytes,
        BudgetKind::Events,
        BudgetKind::EventBytes,
        BudgetKind::Pushes,
        BudgetKind::PushBytes,
        BudgetKind::OutgoingCalls,
    ];

    /// The name in error messages and the `budget` label of the metric.
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetKind::Memory => "memory",
            BudgetKind::NodeMemory => "node_memory",
            BudgetKind::LogBytes => "log_bytes",
            BudgetKind::Events => "events",
            BudgetKind::EventBytes => "event_bytes",
            BudgetKind::Pushes => "pushes",
            BudgetKind::PushBytes => "push_bytes",
            BudgetKind::OutgoingCalls => "outgoing_calls",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for BudgetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Runs failed per budget kind, since the process started (`/metrics`).
static EXCEEDED: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];

pub fn exceeded_total(kind: BudgetKind) -> u64 {
    EXCEEDED[kind.index()].load(Ordering::Relaxed)
}

/// Counts a run that failed on `kind`.
pub fn count_exceeded(kind: BudgetKind) {
    EXCEEDED[kind.index()].fetch_add(1, Ordering::Relaxed);
}

/// The limits of one run (settings `scenario_max_*`; see config.default.toml), and the
/// node budget its memory also counts against.
#[derive(Debug, Clone)]
pub struct Budgets {
    pub node: Arc<NodeMemory>,
    pub memory_bytes: u64,
    pub log_bytes: u64,
    pub events: u64,
    pub event_bytes: u64,
    pub pushes: u64,
    pub push_bytes: u64,
    pub outgoing_calls: u64,
}

impl Default for Budgets {
    fn default() -> Self {
        let config = crate::config::Config::default();
        Budgets::from(&config)
    }
}

impl From<&crate::config::Config> for Budgets {
    /// The settings' budgets, with a node budget of their own.
    fn from(c: &crate::config::Config) -> Self {
        Budgets::of_node(c, NodeMemory::new(c.scenario_node_memory_bytes))
    }
}

impl Budgets {
    /// The settings' budgets, counting memory against a node's budget.
    pub fn of_node(c: &crate::config::Config, node: Arc<NodeMemory>) -> Budgets {
        Budgets {
            node,
            memory_bytes: c.scenario_max_memory_bytes,
            log_bytes: c.scenario_max_log_bytes,
            events: c.scenario_max_events,
            event_bytes: c.scenario_max_event_bytes,
            pushes: c.scenario_max_pushes,
            push_bytes: c.scenario_max_push_bytes,
            outgoing_calls: c.scenario_max_outgoing_calls,
        }
    }
}

thread_local! {
    /// A budget the run on this thread broke where it could not fail at once (a
    /// `print`), for the runtime's next check.
    static BROKEN: Cell<Option<BudgetKind>> = const { Cell::new(None) };
}

/// What one run has spent so far. Lives on the run's thread.
#[derive(Debug)]
pub struct Spent<'a> {
    /// Holds the node budget alive while the allocator counts against it.
    limits: &'a Budgets,
    log_bytes: Cell<u64>,
    events: Cell<u64>,
    event_bytes: Cell<u64>,
    pushes: Cell<u64>,
    push_bytes: Cell<u64>,
    outgoing_calls: Cell<u64>,
}

impl<'a> Spent<'a> {
    /// A run starts: nothing spent, memory counted from here on this thread.
    pub fn start(limits: &'a Budgets) -> Spent<'a> {
        BROKEN.set(None);
        alloc::start_run(limits.memory_bytes, Some(&limits.node));
        Spent {
            limits,
            log_bytes: Cell::new(0),
            events: Cell::new(0),
            event_bytes: Cell::new(0),
            pushes: Cell::new(0),
            push_bytes: Cell::new(0),
            outgoing_calls: Cell::new(0),
        }
    }

    /// Adds to a spend; `Err` (and remembered for [`broken`]) once over its limit.
    fn charge(
        &self,
        spent: &Cell<u64>,
        by: u64,
        limit: u64,
        kind: BudgetKind,
    ) -> Result<(), BudgetKind> {
        let now = spent.get().saturating_add(by);
        spent.set(now);
        if now > limit {
            BROKEN.set(Some(kind));
            return Err(kind);
        }
        Ok(())
    }

    pub fn log(&self, bytes: usize) -> Result<(), BudgetKind> {
        self.charge(
            &self.log_bytes,
            bytes as u64,
            self.limits.log_bytes,
            BudgetKind::LogBytes,
        )
    }

    pub fn event(&self, bytes: usize) -> Result<(), BudgetKind> {
        self.charge(&self.events, 1, self.limits.events, BudgetKind::Events)?;
        self.charge(
            &self.event_bytes,
            bytes as u64,
            self.limits.event_bytes,
            BudgetKind::EventBytes,
        )
    }

    pub fn push(&self, bytes: usize) -> Result<(), BudgetKind> {
        self.charge(&self.pushes, 1, self.limits.pushes, BudgetKind::Pushes)?;
        self.charge(
            &self.push_bytes,
            bytes as u64,
            self.limits.push_bytes,
            BudgetKind::PushBytes,
        )
    }

    pub fn outgoing_call(&self) -> Result<(), BudgetKind> {
        self.charge(
            &self.outgoing_calls,
            1,
            self.limits.outgoing_calls,
            BudgetKind::OutgoingCalls,
        )
    }
}

impl Drop for Spent<'_> {
    /// The run is over (or unwound): memory is no longer counted, its share of the node
    /// budget is given back.
    fn drop(&mut self) {
        alloc::end_run();
        BROKEN.set(None);
    }
}

/// A budget the run on this thread has broken, memory included. Cheap enough to call
/// between every two operations of a script.
#[inline]
pub fn broken() -> Option<BudgetKind> {
    if let Some(kind) = BROKEN.get() {
        return Some(kind);
    }
    alloc::breach().map(|b| match b {
        MemoryBreach::Run => BudgetKind::Memory,
        MemoryBreach::Node => BudgetKind::NodeMemory,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_spend_has_its_own_limit() {
        let limits = Budgets {
            node: NodeMemory::new(u64::MAX),
            memory_bytes: u64::MAX,
            log_bytes: 10,
            events: 1,
            event_bytes: 100,
            pushes: 2,
            push_bytes: 5,
            outgoing_calls: 1,
        };
        let spent = Spent::start(&limits);
        assert_eq!(spent.log(10), Ok(()));
        assert_eq!(broken(), None);
        assert_eq!(spent.log(1), Err(BudgetKind::LogBytes));
        assert_eq!(broken(), Some(BudgetKind::LogBytes));
        assert_eq!(spent.event(50), Ok(()));
        assert_eq!(spent.event(1), Err(BudgetKind::Events));
        assert_eq!(spent.push(6), Err(BudgetKind::PushBytes));
        assert_eq!(spent.outgoing_call(), Ok(()));
        assert_eq!(spent.outgoing_call(), Err(BudgetKind::OutgoingCalls));
        drop(spent);
        assert_eq!(broken(), None);
    }
}
