//! The agent's two liveness signals: the heartbeat the kernel programs read (a stale one makes
//! connects follow their fail mode), and systemd's notify protocol with its watchdog.
//!
//! The systemd watchdog is fed here, after a heartbeat written, and nowhere else: a keep-alive
//! then proves that the runtime schedules tasks and that the kernel still sees the agent as
//! up. A thread of its own would keep feeding an agent whose runtime is wedged (and whose
//! connects fail over); a task of its own would keep feeding one whose heartbeat fails.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tracing::warn;

use crate::{
    notify::{self, Notifier},
    redirect::{self, Redirect},
};

/// The watchdog's keep-alive interval, with the notifier to feed it through.
pub(super) type Watchdog = Option<(Arc<Notifier>, Duration)>;

/// The service manager's notifier (`NOTIFY_SOCKET`), and the watchdog (`WATCHDOG_USEC`,
/// `WATCHDOG_PID`); both `None` outside systemd's `Type=notify`.
pub(super) fn from_env() -> Result<(Option<Arc<Notifier>>, Watchdog), notify::Error> {
    let var = |name| std::env::var(name).ok();
    let socket = std::env::var_os("NOTIFY_SOCKET");
    let notifier = Notifier::new(socket.as_deref())?.map(Arc::new);
    let every = notify::watchdog_interval(
        var("WATCHDOG_USEC").as_deref(),
        var("WATCHDOG_PID").as_deref(),
        std::process::id(),
    )?;
    let watchdog = notifier.clone().zip(every);
    Ok((notifier, watchdog))
}

/// Refresh the heartbeat. Runs on the same runtime as the accept loops, so an agent too stuck
/// to run it is also too stuck to serve, and counts as down. Returns the pid of an agent that
/// took over the pin path.
pub(super) async fn heartbeat(redirect: Arc<Redirect>, watchdog: Watchdog) -> u32 {
    let mut tick =
        tokio::time::interval(Duration::from_nanos(enforcer_common::HEARTBEAT_INTERVAL_NS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fed: Option<Instant> = None;
    loop {
        tick.tick().await;
        match redirect.beat() {
            Ok(()) => {
                if let Some((notifier, every)) = &watchdog
                    && fed.is_none_or(|at| at.elapsed() >= *every)
                {
                    notifier.watchdog();
                    fed = Some(Instant::now());
                }
            }
            Err(redirect::Error::TakenOver { pid }) => return pid,
            Err(e) => {
                warn!(error = %e, "heartbeat not written: connects fail over to their fail mode")
            }
        }
    }
}
