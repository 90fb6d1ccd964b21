//! A step's future, shared by the plan's top level and by the steps that
//! wait for it, that is polled again only when something woke it.
//!
//! `futures::Shared` polls its inner future whenever any of its clones is
//! polled. A plan polls every step on each pass, and a step awaiting its
//! dependency polls that dependency's future, which polls its own, down
//! the chain: one pass over a chain of n steps cost O(n²) polls, and a
//! plan at the step limit spent nearly all its time there. A [`Node`]
//! polls its inner future only when the future woke it (or was never
//! polled), so a pass costs a look at each step and the work of the steps
//! that can move.
//!
//! The order in which commands are issued is the same as with `Shared`:
//! the workflow's futures make progress only when woken (a poll without a
//! wake returns `Pending` and issues nothing), a wake reaches every step
//! waiting on the woken one (each registers with the dependency it
//! awaits), so a pass reaches each step that can move at the same point of
//! the same walk.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use futures::future::BoxFuture;

use super::StepResult;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A step's future shared by every step waiting for it.
pub(crate) trait DagNode:
    Future<Output = StepResult> + Clone + Send + Unpin + 'static
{
    fn new(fut: BoxFuture<'static, StepResult>) -> Self;
}

impl DagNode for Node {
    fn new(fut: BoxFuture<'static, StepResult>) -> Self {
        Node::new(fut)
    }
}

/// What plans used before [`Node`]; kept for the tests that compare them.
#[cfg(test)]
impl DagNode for futures::future::Shared<BoxFuture<'static, StepResult>> {
    fn new(fut: BoxFuture<'static, StepResult>) -> Self {
        futures::FutureExt::shared(fut)
    }
}

/// One step's future; clones share it.
#[derive(Clone)]
pub(crate) struct Node(Arc<Inner>);

struct Inner {
    state: Mutex<State>,
    wake: Arc<NodeWake>,
}

struct State {
    /// `None` once finished, or while it is being polled.
    fut: Option<BoxFuture<'static, StepResult>>,
    result: Option<StepResult>,
    polled: bool,
}

/// The waker the inner future is polled with: it marks the node woken and
/// wakes whoever waits on the node.
struct NodeWake {
    woken: AtomicBool,
    waiters: Mutex<Vec<Waker>>,
}

impl NodeWake {
    fn register(&self, waker: &Waker) {
        let mut waiters = lock(&self.waiters);
        if !waiters.iter().any(|w| w.will_wake(waker)) {
            waiters.push(waker.clone());
        }
    }

    fn wake_waiters(&self) {
        let waiters = std::mem::take(&mut *lock(&self.waiters));
        for w in waiters {
            w.wake();
        }
    }
}

impl Wake for NodeWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        self.wake_waiters();
    }
}

impl Node {
    pub(crate) fn new(fut: BoxFuture<'static, StepResult>) -> Self {
        Node(Arc::new(Inner {
            state: Mutex::new(State {
                fut: Some(fut),
                result: None,
                polled: false,
            }),
            wake: Arc::new(NodeWake {
                woken: AtomicBool::new(false),
                waiters: Mutex::new(Vec::new()),
            }),
        }))
    }
}

impl Future for Node {
    type Output = StepResult;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<StepResult> {
        let inner = &self.0;
        let mut state = lock(&inner.state);
        if let Some(r) = &state.result {
            return Poll::Ready(r.clone());
        }
        inner.wake.register(cx.waker());
        let woken = inner.wake.woken.swap(false, Ordering::SeqCst);
        if state.polled && !woken {
            return Poll::Pending;
        }
        // Taken out while it runs: a wake during the poll (a future that
        // wakes itself) marks the node for the next pass.
        let Some(mut fut) = state.fut.take() else {
            return Poll::Pending;
        };
        state.polled = true;
        drop(state);
        let waker = Waker::from(inner.wake.clone());
        let polled = fut.as_mut().poll(&mut Context::from_waker(&waker));
        let mut state = lock(&inner.state);
        match polled {
            Poll::Ready(r) => {
                state.result = Some(r.clone());
                drop(state);
                inner.wake.wake_waiters();
                Poll::Ready(r)
            }
            Poll::Pending => {
                state.fut = Some(fut);
                Poll::Pending
            }
        }
    }
}
