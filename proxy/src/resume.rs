//! Waking suspended sandboxes (SPEC 6 "Suspended sandboxes"): the first
//! request for a suspended sandbox with `auto_resume` asks the control plane
//! to resume it; every request that arrives meanwhile waits on that same
//! call, and all of them go on as soon as the registry says `running`.
//!
//! One flight per sandbox: a task that makes the hook call once and then
//! watches the registry (every [`WATCH_INTERVAL`], a map lookup) until the
//! sandbox runs or the deadline passes. Waiters only hold a receiver, so a
//! thousand waiting requests cost one call and one lookup per tick, and a
//! client that goes away drops its receiver and its slot and leaves nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::error::{Code, ProxyError};
use crate::registry::{Registry, Sandbox, Status};
use crate::webhook::Webhook;

/// How often a flight looks at the registry. Half of it is the mean delay a
/// waiter adds to the control plane's own.
const WATCH_INTERVAL: Duration = Duration::from_millis(5);
/// What a 503 at the deadline tells the client to wait before trying again.
const RETRY_AFTER_SECS: u64 = 5;

/// What the lifecycle hook receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Resume,
    Suspend,
}

#[derive(Serialize)]
struct HookCall<'a> {
    sandbox_id: &'a str,
    action: Action,
}

#[derive(Clone)]
enum FlightState {
    Waiting,
    Running(Arc<Sandbox>),
    Failed(String),
    Expired,
}

struct Flight {
    state: watch::Receiver<FlightState>,
    /// Requests waiting on this sandbox.
    waiters: Arc<Semaphore>,
}

pub struct ResumeConfig {
    pub deadline: Duration,
    pub max_waiters_per_sandbox: usize,
    pub max_waiters: usize,
}

pub struct Resumer {
    hook: Option<Arc<Webhook>>,
    registry: Arc<dyn Registry>,
    config: ResumeConfig,
    waiters: Arc<Semaphore>,
    flights: Arc<Mutex<HashMap<String, Arc<Flight>>>>,
}

impl Resumer {
    pub fn new(hook: Option<Webhook>, registry: Arc<dyn Registry>, config: ResumeConfig) -> Self {
        Self {
            hook: hook.map(Arc::new),
            registry,
            waiters: Arc::new(Semaphore::new(config.max_waiters)),
            config,
            flights: Arc::default(),
        }
    }

    /// Resumes `sandbox` (one call however many ask) and waits until it is
    /// running; the answer is its entry then (the agent may have moved).
    pub async fn wait_running(&self, sandbox: &Sandbox) -> Result<Arc<Sandbox>, ProxyError> {
        let not_running = |why: String| {
            ProxyError::new(Code::SandboxNotRunning, why).retry_after(RETRY_AFTER_SECS)
        };
        let _total: OwnedSemaphorePermit =
            self.waiters.clone().try_acquire_owned().map_err(|_| {
                not_running("too many requests are waiting for sandboxes to resume".into())
            })?;
        let flight = self.flight(&sandbox.id)?;
        let _mine = flight.waiters.clone().try_acquire_owned().map_err(|_| {
            not_running("too many requests are waiting for this sandbox to resume".into())
        })?;
        let mut state = flight.state.clone();
        let settled = state
            .wait_for(|s| !matches!(s, FlightState::Waiting))
            .await
            .map(|s| s.clone())
            .unwrap_or(FlightState::Expired);
        match settled {
            FlightState::Running(sandbox) => Ok(sandbox),
            FlightState::Failed(why) => Err(not_running(format!(
                "the sandbox could not be resumed: {why}"
            ))),
            FlightState::Expired | FlightState::Waiting => Err(not_running(format!(
                "the sandbox did not resume within {} s",
                self.config.deadline.as_secs()
            ))),
        }
    }

    /// Starts a resume without waiting for it (the API's POST .../resume).
    pub fn start(&self, id: &str) -> Result<(), ProxyError> {
        self.flight(id).map(|_| ())
    }

    /// Asks the control plane to suspend a sandbox.
    pub async fn suspend(&self, id: &str) -> Result<(), String> {
        let hook = self
            .hook
            .as_ref()
            .ok_or("no lifecycle hook is configured")?;
        call(hook, id, Action::Suspend).await
    }

    fn flight(&self, id: &str) -> Result<Arc<Flight>, ProxyError> {
        let hook = self.hook.clone().ok_or_else(|| {
            ProxyError::new(
                Code::SandboxNotRunning,
                "the sandbox is suspended and this proxy has no lifecycle hook to resume it",
            )
            .retry_after(RETRY_AFTER_SECS)
        })?;
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(flight) = flights.get(id) {
            return Ok(flight.clone());
        }
        let (tx, rx) = watch::channel(FlightState::Waiting);
        let flight = Arc::new(Flight {
            state: rx,
            waiters: Arc::new(Semaphore::new(self.config.max_waiters_per_sandbox)),
        });
        flights.insert(id.to_owned(), flight.clone());
        tokio::spawn(fly(
            id.to_owned(),
            hook,
            self.registry.clone(),
            self.config.deadline,
            tx,
            self.flights.clone(),
        ));
        Ok(flight)
    }
}

/// One resume: the hook call, then the watch, then the flight is gone so a
/// later suspension gets a fresh call.
async fn fly(
    id: String,
    hook: Arc<Webhook>,
    registry: Arc<dyn Registry>,
    deadline: Duration,
    state: watch::Sender<FlightState>,
    flights: Arc<Mutex<HashMap<String, Arc<Flight>>>>,
) {
    let outcome = tokio::time::timeout(deadline, async {
        tracing::info!(sandbox = %id, "resuming on demand");
        let called = call(&hook, &id, Action::Resume);
        tokio::pin!(called);
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        let mut call_done = false;
        loop {
            tokio::select! {
                result = &mut called, if !call_done => {
                    call_done = true;
                    if let Err(why) = result {
                        return FlightState::Failed(why);
                    }
                }
                _ = tick.tick() => {
                    match registry.resolve(&id).await {
                        Ok(Some(s)) if s.spec.status == Status::Running => return FlightState::Running(s),
                        Ok(Some(s)) if s.spec.status == Status::Terminated => {
                            return FlightState::Failed("it was terminated".into())
                        }
                        Ok(None) => return FlightState::Failed("it was removed".into()),
                        _ => {}
                    }
                }
            }
        }
    })
    .await
    .unwrap_or(FlightState::Expired);
    match &outcome {
        FlightState::Running(_) => tracing::info!(sandbox = %id, "resumed"),
        FlightState::Failed(why) => tracing::warn!(sandbox = %id, error = %why, "resume failed"),
        _ => {
            tracing::warn!(sandbox = %id, deadline_secs = deadline.as_secs(), "resume did not finish in time")
        }
    }
    // Gone from the map before the waiters hear, so a request that comes
    // after a failure starts a new attempt rather than joining a dead one.
    flights
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    let _ = state.send(outcome);
}

async fn call(hook: &Webhook, id: &str, action: Action) -> Result<(), String> {
    let (status, _) = hook
        .post(&HookCall {
            sandbox_id: id,
            action,
        })
        .await?;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the lifecycle hook answered {status}"))
    }
}
