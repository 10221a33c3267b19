//! One runtime per core, as nginx's workers and pingora's threads: `WORKERS` threads, each
//! a single-threaded tokio runtime with its own listening socket on the port and its own
//! upstream connections ([`Lanes`]). A request lives on one thread from its accept to
//! its last byte, and so does the upstream HTTP/2 connection it streams from: the
//! connection task and the stream reading it take turns on that thread, so everything the
//! upstream sent between two polls leaves in one write (BENCHMARKS §5), and nothing on the
//! hot path crosses cores. Under a work-stealing runtime the connection task runs beside
//! the stream on another core and wakes it for every frame: a write per chunk, and the
//! cache lines of both bouncing between cores.
//!
//! State shared by every worker (accounts, conversations, metrics, the chats made ahead)
//! lives behind `Arc` with locks and channels that work across runtimes. Background work
//! (the session sweep, token renewals) runs on the first worker, the process's main thread,
//! and so do the Redis client's connection tasks (made at start-up there): with `REDIS_URL`
//! each worker's commands cross to worker 0 and back — one hop per command, not per chunk.
//!
//! The trade-off is work stealing: a long burst of CPU on one worker (a multi-megabyte
//! request parsed) delays that worker's other connections while the others idle.
//! `WORK_STEALING=true` runs one multi-threaded runtime instead.
//!
//! On Linux each worker accepts from a socket of its own on the shared port (`SO_REUSEPORT`,
//! `server::bind_each`): the kernel spreads connections over them by their addresses. One
//! socket shared by all workers goes to whichever woke first — a burst of connections all to
//! one worker, which keeps them for their whole keep-alive life; that is what other systems
//! get, where `SO_REUSEPORT` does not spread connections.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    /// This thread's worker number; `None` on threads that are not workers (tests' runtimes,
    /// blocking threads, the work-stealing runtime's threads).
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Marks this thread as worker `index` (the main thread is worker 0).
pub fn enter(index: usize) {
    INDEX.with(|i| i.set(Some(index)));
}

/// This thread's worker number, if it is a worker.
pub(crate) fn current() -> Option<usize> {
    INDEX.with(Cell::get)
}

/// One `T` per worker (an upstream connection pool each), so that a worker's connections are
/// opened, driven and used on that worker alone. Threads that are not workers share the
/// first; more workers than lanes would share lanes (`App::new` makes one per runtime).
#[derive(Debug, Clone)]
pub struct Lanes<T>(Box<[T]>);

impl<T> Lanes<T> {
    /// `count` lanes (at least one), each made by `make`.
    pub(crate) fn new(count: usize, make: impl FnMut() -> T) -> Self {
        Lanes(std::iter::repeat_with(make).take(count.max(1)).collect())
    }

    /// The calling worker's lane.
    pub(crate) fn get(&self) -> &T {
        let index = current().unwrap_or(0) % self.0.len();
        &self.0[index]
    }
}

/// A single-threaded runtime: one worker's.
pub fn current_thread_runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Workers 1.. running on their own threads; worker 0 is the caller's.
pub(crate) struct Spawned {
    /// Every worker's runtime, the caller's first (for the runtime metrics).
    pub(crate) handles: Vec<Handle>,
    /// Resolves, one per thread, when its worker has finished serving and its runtime has
    /// shut down.
    finished: Vec<oneshot::Receiver<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// How long a finished worker's runtime waits for its blocking tasks (a DNS lookup) before
/// its thread ends anyway.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(1);

impl Spawned {
    /// Waits for every worker thread to finish (after shutdown was signalled to them).
    pub(crate) async fn join(self) {
        for done in self.finished {
            // An error means the worker's thread ended without saying so (a panic): it has
            // finished too.
            let _ = done.await;
        }
        // Each has said it is done after its runtime shut down: these return at once.
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// Starts a worker thread per listener in `listeners` (workers 1.., worker 0 being the
/// caller), each with its own single-threaded runtime, running `serve(listener)` to its end.
/// Called on worker 0's runtime. A worker that cannot start is logged and left out (its
/// socket closed, so the kernel sends its connections to the others); the rest serve.
pub(crate) fn spawn<F, Fut>(listeners: Vec<std::net::TcpListener>, serve: F) -> Spawned
where
    F: Fn(TcpListener) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let mut spawned = Spawned {
        handles: vec![Handle::current()],
        finished: Vec::new(),
        threads: Vec::new(),
    };
    for (index, socket) in (1..).zip(listeners) {
        let runtime = match current_thread_runtime() {
            Ok(runtime) => runtime,
            Err(e) => {
                tracing::error!(index, error = %e, "a worker's runtime could not start; serving without it");
                continue;
            }
        };
        let handle = runtime.handle().clone();
        let (done, finished) = oneshot::channel();
        let serve = serve.clone();
        let started = std::thread::Builder::new()
            .name(format!("qwen-worker-{index}"))
            .spawn(move || {
                enter(index);
                runtime.block_on(async move {
                    // Registered with this worker's own reactor.
                    match TcpListener::from_std(socket) {
                        Ok(listener) => serve(listener).await,
                        Err(e) => tracing::error!(index, error = %e, "a worker could not listen"),
                    }
                });
                runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
                let _ = done.send(());
            });
        match started {
            Ok(thread) => {
                spawned.handles.push(handle);
                spawned.finished.push(finished);
                spawned.threads.push(thread);
            }
            Err(e) => {
                tracing::error!(index, error = %e, "a worker thread could not start; serving without it");
            }
        }
    }
    spawned
}

/// Tasks alive over every worker's runtime (`handles`), or the caller's runtime without any.
pub(crate) fn alive_tasks(handles: &[Handle]) -> usize {
    if handles.is_empty() {
        return Handle::current().metrics().num_alive_tasks();
    }
    handles.iter().map(|h| h.metrics().num_alive_tasks()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_gets_its_own_lane_and_others_the_first() {
        let lanes = Lanes::new(3, {
            let mut n = 0;
            move || {
                n += 1;
                n
            }
        });
        std::thread::spawn(move || {
            assert_eq!(*lanes.get(), 1, "a thread that is no worker");
            enter(2);
            assert_eq!(*lanes.get(), 3);
            enter(5);
            assert_eq!(*lanes.get(), 3, "wraps around past the last lane");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn no_lanes_asked_is_one_lane() {
        let lanes = Lanes::new(0, || 7);
        assert_eq!(*lanes.get(), 7);
    }
}
