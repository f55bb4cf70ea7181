//! EventBroker: pushes the domain's events to websocket subscribers, in id order.
//!
//! The database is the truth: a publish only wakes the broker, which then reads the log
//! after the last id it pushed and fans that out. Ids are handed out under a row lock and
//! committed in order, so reading "after the last pushed id" never skips one, and every
//! subscriber sees the log in order without gaps, whoever published (admin API, a
//! scenario, later another node). A subscriber that falls `max_pending` events behind is
//! dropped (its session closes with 1013) instead of slowing the others.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use actix::prelude::*;

use crate::db::models::Event;
use crate::db::{Database, events as log};
use crate::events::Published;

/// Events read per round from the log.
const PAGE: i64 = 1000;

/// An event for one subscriber.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Deliver {
    /// The subscription it is for (a session that re-subscribed ignores older ones).
    pub subscription: u64,
    pub event: Arc<Event>,
    /// The event's websocket frame, rendered by the first subscriber that sends it and
    /// shared (not copied) by all the others.
    pub frame: Arc<std::sync::OnceLock<super::ws_backlog::Frame>>,
}

/// The subscriber fell too far behind: close it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Overflowed;

struct Subscriber {
    deliver: Recipient<Deliver>,
    overflow: Recipient<Overflowed>,
    /// Events sent to the subscriber's mailbox and not yet written to its socket.
    pending: Arc<AtomicUsize>,
    filter: Arc<dyn Fn(&str) -> bool + Send + Sync>,
}

pub struct EventBroker {
    db: Database,
    domain: String,
    /// The last id pushed to subscribers.
    last_id: i64,
    reading: bool,
    dirty: bool,
    next_subscriber: u64,
    subscribers: HashMap<u64, Subscriber>,
    max_pending: usize,
    stats: Arc<crate::events::EventStats>,
    logger: slog::Logger,
}

impl EventBroker {
    pub fn new(
        db: Database,
        domain: &str,
        last_id: i64,
        max_pending: usize,
        stats: Arc<crate::events::EventStats>,
        logger: &slog::Logger,
    ) -> EventBroker {
        EventBroker {
            db,
            domain: domain.to_string(),
            last_id,
            reading: false,
            dirty: false,
            next_subscriber: 1,
            subscribers: HashMap::new(),
            max_pending,
            stats,
            logger: logger.new(slog::o!("actor" => "event_broker")),
        }
    }

    fn read_more(&mut self, ctx: &mut Context<Self>) {
        if self.reading {
            self.dirty = true;
            return;
        }
        self.reading = true;
        self.dirty = false;
        let (db, domain, after) = (self.db.clone(), self.domain.clone(), self.last_id);
        let read = async move {
            db.run(move |c| log::list_after(c, &domain, after, PAGE))
                .await
        };
        ctx.spawn(read.into_actor(self).map(|result, act, ctx| {
            act.reading = false;
            match result {
                Ok(events) => {
                    let full = events.len() as i64 == PAGE;
                    for event in events {
                        act.last_id = act.last_id.max(event.id);
                        act.fan_out(Arc::new(event));
                    }
                    if full || act.dirty {
                        act.read_more(ctx);
                    }
                }
                Err(e) => {
                    slog::warn!(act.logger, "reading the event log failed; retrying"; "error" => %e);
                    ctx.run_later(std::time::Duration::from_millis(500), |act, ctx| act.read_more(ctx));
                }
            }
        }));
    }

    fn fan_out(&mut self, event: Arc<Event>) {
        let max = self.max_pending;
        let stats = self.stats.clone();
        let frame = Arc::new(std::sync::OnceLock::new());
        self.subscribers.retain(|id, s| {
            if !(s.filter)(&event.event_type) {
                return true;
            }
            if s.pending.fetch_add(1, Ordering::AcqRel) >= max {
                stats.slow_closed.fetch_add(1, Ordering::Relaxed);
                s.overflow.do_send(Overflowed);
                return false;
            }
            stats.pushed.fetch_add(1, Ordering::Relaxed);
            s.deliver.do_send(Deliver {
                subscription: *id,
                event: event.clone(),
                frame: frame.clone(),
            });
            true
        });
        self.stats
            .subscribers
            .store(self.subscribers.len(), Ordering::Relaxed);
    }
}

impl Actor for EventBroker {
    type Context = Context<Self>;
}

impl Handler<Published> for EventBroker {
    type Result = ();
    fn handle(&mut self, _: Published, ctx: &mut Context<Self>) {
        self.read_more(ctx);
    }
}

/// Add a subscriber; the answer is its id and the last id already pushed (the
/// subscriber replays from storage up to that id, then takes the live stream).
#[derive(Message)]
#[rtype(result = "Subscribed")]
pub struct Subscribe {
    pub deliver: Recipient<Deliver>,
    pub overflow: Recipient<Overflowed>,
    pub pending: Arc<AtomicUsize>,
    pub filter: Arc<dyn Fn(&str) -> bool + Send + Sync>,
}

/// A new subscriber's id, and the last id pushed before it joined.
#[derive(Debug, Clone, Copy, MessageResponse)]
pub struct Subscribed {
    pub id: u64,
    pub last_id: i64,
}

impl Handler<Subscribe> for EventBroker {
    type Result = Subscribed;
    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) -> Subscribed {
        let id = self.next_subscriber;
        self.next_subscriber += 1;
        self.subscribers.insert(
            id,
            Subscriber {
                deliver: msg.deliver,
                overflow: msg.overflow,
                pending: msg.pending,
                filter: msg.filter,
            },
        );
        self.stats
            .subscribers
            .store(self.subscribers.len(), Ordering::Relaxed);
        Subscribed {
            id,
            last_id: self.last_id,
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe(pub u64);

impl Handler<Unsubscribe> for EventBroker {
    type Result = ();
    fn handle(&mut self, msg: Unsubscribe, _: &mut Context<Self>) {
        self.subscribers.remove(&msg.0);
        self.stats
            .subscribers
            .store(self.subscribers.len(), Ordering::Relaxed);
    }
}

/// How many subscribers (for metrics and the status page).
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CountSubscribers;

impl Handler<CountSubscribers> for EventBroker {
    type Result = usize;
    fn handle(&mut self, _: CountSubscribers, _: &mut Context<Self>) -> usize {
        self.subscribers.len()
    }
}
