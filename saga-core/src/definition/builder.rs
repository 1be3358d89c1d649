//! The typed builder for saga definitions.
//!
//! Each step is configured in a closure of its own, a layout `cargo fmt`
//! keeps:
//!
//! ```
//! # use serde::{Deserialize, Serialize};
//! # use saga_core::{Command, Saga};
//! # #[derive(Serialize, Deserialize)] struct Reserve;
//! # impl Command for Reserve { const NAME: &'static str = "reserve"; const ENDPOINT: &'static str = "inventory"; type Reply = String; }
//! # #[derive(Serialize, Deserialize)] struct Release;
//! # impl Command for Release { const NAME: &'static str = "release"; const ENDPOINT: &'static str = "inventory"; type Reply = (); }
//! # #[derive(Serialize, Deserialize)] struct Order { reservation: Option<String> }
//! let saga = Saga::<Order>::builder("order")
//!     .step("reserve", |step| {
//!         step.invoke(|_: &Order| Reserve)
//!             .on_reply(|order, reservation| order.reservation = Some(reservation))
//!             .compensate(|_: &Order| Release)
//!     })
//!     .step("confirm", |step| step.local(|_: Order, _| async { Ok(()) }).pivot())
//!     .build()?;
//! # Ok::<(), saga_core::Error>(())
//! ```
//!
//! Type states stop the mistakes that would otherwise only show at run time:
//! a saga with no steps has no `build()`, a step without an action does not
//! type-check, a compensation needs an action first, and a step's reply
//! handler must take the reply type of the command it sends.
//!
//! ```compile_fail
//! # use saga_core::Saga;
//! // A saga with no steps cannot be built.
//! let saga = Saga::<()>::builder("empty").build();
//! ```
//!
//! ```compile_fail
//! # use saga_core::Saga;
//! // A step needs an action.
//! let saga = Saga::<()>::builder("s").step("a", |step| step).build();
//! ```
//!
//! ```compile_fail
//! # use saga_core::Saga;
//! // A compensation needs an action first.
//! let saga = Saga::<()>::builder("s").step("a", |step| step.compensate_local(|_, _| async { Ok(()) }));
//! ```
//!
//! ```compile_fail
//! # use serde::{Deserialize, Serialize};
//! # use saga_core::{Command, Saga};
//! # #[derive(Serialize, Deserialize)] struct Ping;
//! # impl Command for Ping { const NAME: &'static str = "ping"; const ENDPOINT: &'static str = "svc"; type Reply = u32; }
//! // The reply handler must take the command's reply type.
//! let saga = Saga::<()>::builder("s").step("a", |step| step.invoke(|_| Ping).on_reply(|_, _: String| ()));
//! ```

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::step::{Action, FoldFn, LocalContext, OnUnknown, StepDefinition, StepKind};
use super::{Command, Saga, SagaData, SagaDefinition};
use crate::error::{Error, StepError};
use crate::retry::RetryPolicy;

/// Default time a step waits for its reply before the attempt counts as timed out.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Type state: the saga has no step yet (it cannot be built).
#[derive(Debug)]
pub struct NoSteps;

/// Type state: the saga has at least one step.
#[derive(Debug)]
pub struct HasSteps;

/// Builds a [`Saga`]; returned by [`Saga::builder`]. Add steps with [`step`](Self::step).
#[must_use = "a builder does nothing until a step is added and `build` is called"]
pub struct SagaBuilder<D, S = NoSteps> {
    name: String,
    version: u32,
    deadline: Option<Duration>,
    default_timeout: Duration,
    default_retry: RetryPolicy,
    default_compensation_retry: RetryPolicy,
    steps: Vec<StepDefinition>,
    /// Mistakes found while adding steps, reported by `build`.
    problems: Vec<String>,
    _state: PhantomData<fn() -> (D, S)>,
}

impl<D: SagaData> SagaBuilder<D> {
    pub(super) fn new(name: String) -> Self {
        Self {
            name,
            version: 1,
            deadline: None,
            default_timeout: DEFAULT_STEP_TIMEOUT,
            default_retry: RetryPolicy::default(),
            default_compensation_retry: default_compensation_retry(),
            steps: Vec::new(),
            problems: Vec::new(),
            _state: PhantomData,
        }
    }
}

impl<D: SagaData, S> SagaBuilder<D, S> {
    /// The definition version (default 1). Running instances keep the version
    /// they started with, so register old versions while instances of them run.
    pub fn version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// An overall deadline: a saga still running this long after it started,
    /// and not yet past its pivot, stops and compensates.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// How long a step waits for a reply when it sets no [`timeout`](StepBuilder::timeout)
    /// of its own (default 30 s). A timed-out attempt is retried, which also
    /// re-sends a command lost in a broker failure.
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.default_timeout = timeout;
        self
    }

    /// How a step's failed or timed-out attempts are retried when the step sets
    /// no [`retry`](StepBuilder::retry) of its own (default: 100 ms doubling to
    /// 10 s, 20% jitter, 5 attempts). The pivot and retriable steps use it
    /// without its attempt limit.
    pub fn default_retry(mut self, policy: RetryPolicy) -> Self {
        self.default_retry = policy;
        self
    }

    /// How a failing compensation is retried when its step sets no
    /// [`compensation_retry`](StepBuilder::compensation_retry) of its own
    /// (default: 200 ms doubling to 30 s, 10 attempts).
    pub fn default_compensation_retry(mut self, policy: RetryPolicy) -> Self {
        self.default_compensation_retry = policy;
        self
    }

    /// Adds a step named `name`, configured by `configure`: give it an action
    /// with [`invoke`](StepBuilder::invoke) or [`local`](StepBuilder::local),
    /// then what else it needs.
    pub fn step<A: HasAction>(
        self,
        name: impl Into<String>,
        configure: impl FnOnce(StepBuilder<D, NoAction>) -> StepBuilder<D, A>,
    ) -> SagaBuilder<D, HasSteps> {
        let step = configure(StepBuilder {
            kind: StepKind::Compensatable,
            action: NoAction,
            on_output: None,
            compensation: None,
            retry: None,
            compensation_retry: None,
            timeout: None,
            on_unknown: OnUnknown::default(),
            read_only: false,
            _data: PhantomData,
        });
        let mut saga = SagaBuilder {
            name: self.name,
            version: self.version,
            deadline: self.deadline,
            default_timeout: self.default_timeout,
            default_retry: self.default_retry,
            default_compensation_retry: self.default_compensation_retry,
            steps: self.steps,
            problems: self.problems,
            _state: PhantomData,
        };
        saga.push(name.into(), step);
        saga
    }

    fn push<A: HasAction>(&mut self, name: String, step: StepBuilder<D, A>) {
        // The pivot and retriable steps cannot be compensated: they retry
        // until they succeed or fail for a business reason.
        let until_success = step.kind != StepKind::Compensatable;
        let retry = match step.retry {
            Some(policy) if until_success && policy.attempt_limit().is_some() => {
                self.problems.push(format!(
                    "step `{name}` is {} and retries until it succeeds or fails for a business \
                     reason, but its retry policy stops after {} attempt(s): give it a policy \
                     without a limit (`RetryPolicy::..().unlimited()`) or leave the retry unset",
                    kind_name(step.kind),
                    policy.attempt_limit().unwrap_or_default()
                ));
                policy
            }
            Some(policy) => policy,
            None if until_success => self.default_retry.unlimited(),
            None => self.default_retry,
        };
        self.steps.push(StepDefinition {
            name,
            kind: step.kind,
            action: step.action.into_action(),
            on_output: step.on_output,
            compensation: step.compensation,
            retry,
            compensation_retry: step
                .compensation_retry
                .unwrap_or(self.default_compensation_retry),
            timeout: step.timeout,
            on_unknown: step.on_unknown,
            read_only: step.read_only,
        });
    }
}

impl<D: SagaData> SagaBuilder<D, HasSteps> {
    /// Finishes the definition and validates it.
    ///
    /// # Errors
    /// [`Error::InvalidDefinition`] naming the problem: an empty or malformed
    /// name, duplicate step names, a zero timeout, more than one pivot, a pivot
    /// with a compensation, a step after the pivot that is not retriable or has
    /// a compensation, a pivot or retriable step with an attempt limit or
    /// [`OnUnknown::Compensate`], or a remote step before the pivot without a
    /// compensation handled at its own endpoint (unless
    /// [`read_only`](StepBuilder::read_only)).
    pub fn build(self) -> Result<Saga<D>, Error> {
        if !self.problems.is_empty() {
            return Err(Error::InvalidDefinition {
                saga: self.name,
                reason: self.problems.join("; "),
            });
        }
        let definition = SagaDefinition {
            pivot: self.steps.iter().position(|s| s.kind == StepKind::Pivot),
            name: self.name,
            version: self.version,
            steps: self.steps,
            deadline: self.deadline,
            default_timeout: self.default_timeout,
        };
        validate(&definition).map_err(|reason| Error::InvalidDefinition {
            saga: definition.name.clone(),
            reason,
        })?;
        Ok(Saga::from_definition(definition))
    }
}

fn default_compensation_retry() -> RetryPolicy {
    RetryPolicy::exponential(Duration::from_millis(200), Duration::from_secs(30)).max_attempts(10)
}

/// Type state: the step has no action yet.
#[derive(Debug)]
pub struct NoAction;

/// Type state: the step sends command `C` to its participant.
pub struct Remote<C> {
    action: Action,
    _command: PhantomData<fn() -> C>,
}

/// Type state: the step runs a local function returning `R`.
pub struct Local<R> {
    action: Action,
    _output: PhantomData<fn() -> R>,
}

/// A step action state that has an action and a typed output.
pub trait HasAction: sealed::Sealed {
    /// What the step's action produces on success.
    type Output: DeserializeOwned;
    /// The erased action.
    #[doc(hidden)]
    fn into_action(self) -> Action;
}

mod sealed {
    pub trait Sealed {}
    impl<C> Sealed for super::Remote<C> {}
    impl<R> Sealed for super::Local<R> {}
}

impl<C: Command> HasAction for Remote<C> {
    type Output = C::Reply;
    fn into_action(self) -> Action {
        self.action
    }
}

impl<R: DeserializeOwned> HasAction for Local<R> {
    type Output = R;
    fn into_action(self) -> Action {
        self.action
    }
}

/// Configures one step, in the closure given to [`SagaBuilder::step`].
#[must_use = "return the step builder from the closure"]
pub struct StepBuilder<D, A> {
    kind: StepKind,
    action: A,
    on_output: Option<FoldFn>,
    compensation: Option<Action>,
    retry: Option<RetryPolicy>,
    compensation_retry: Option<RetryPolicy>,
    timeout: Option<Duration>,
    on_unknown: OnUnknown,
    read_only: bool,
    _data: PhantomData<fn() -> D>,
}

impl<D, A> StepBuilder<D, A> {
    fn with_action<B>(self, action: B) -> StepBuilder<D, B> {
        StepBuilder {
            kind: self.kind,
            action,
            on_output: self.on_output,
            compensation: self.compensation,
            retry: self.retry,
            compensation_retry: self.compensation_retry,
            timeout: self.timeout,
            on_unknown: self.on_unknown,
            read_only: self.read_only,
            _data: PhantomData,
        }
    }
}

fn remote<D: SagaData, C: Command>(build: impl Fn(&D) -> C + Send + Sync + 'static) -> Action {
    Action::Remote {
        endpoint: C::ENDPOINT.to_owned(),
        command: C::NAME.to_owned(),
        payload: Arc::new(move |data: &Value| {
            let data = D::deserialize(data)?;
            serde_json::to_value(build(&data))
        }),
    }
}

fn local_fn<D, R, F, Fut>(run: F) -> super::step::LocalFn
where
    D: SagaData,
    R: Serialize,
    F: Fn(D, LocalContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, StepError>> + Send + 'static,
{
    let run = Arc::new(run);
    Arc::new(move |data: Value, ctx: LocalContext| {
        let run = Arc::clone(&run);
        Box::pin(async move {
            let data = serde_json::from_value::<D>(data)
                .map_err(|e| StepError::unknown(format!("saga data does not decode: {e}")))?;
            let output = run(data, ctx).await?;
            serde_json::to_value(output)
                .map_err(|e| StepError::unknown(format!("step output does not encode: {e}")))
        })
    })
}

impl<D: SagaData> StepBuilder<D, NoAction> {
    /// The step sends command `C`, built from the saga data, to its
    /// participant ([`Command::ENDPOINT`]).
    pub fn invoke<C: Command>(
        self,
        build: impl Fn(&D) -> C + Send + Sync + 'static,
    ) -> StepBuilder<D, Remote<C>> {
        self.with_action(Remote {
            action: remote(build),
            _command: PhantomData,
        })
    }

    /// The step runs `run` in the orchestrator on a copy of the saga data.
    /// Its output goes to [`on_reply`](StepBuilder::on_reply). One attempt
    /// runs at a time; an attempt still running when the step's timeout passes
    /// is dropped, and the [`LocalContext`]'s key lets the function make its
    /// effects idempotent across attempts.
    pub fn local<R, F, Fut>(self, run: F) -> StepBuilder<D, Local<R>>
    where
        R: Serialize + DeserializeOwned + Send + 'static,
        F: Fn(D, LocalContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, StepError>> + Send + 'static,
    {
        self.with_action(Local {
            action: Action::Local { run: local_fn(run) },
            _output: PhantomData,
        })
    }
}

impl<D: SagaData, A: HasAction> StepBuilder<D, A> {
    /// Folds the step's reply (remote) or output (local) into the saga data.
    pub fn on_reply(mut self, fold: impl Fn(&mut D, A::Output) + Send + Sync + 'static) -> Self {
        self.on_output = Some(Arc::new(move |data: &mut Value, output: Value| {
            let mut typed = D::deserialize(&*data)?;
            let output: A::Output = serde_json::from_value(output)?;
            fold(&mut typed, output);
            *data = serde_json::to_value(typed)?;
            Ok(())
        }));
        self
    }

    /// Undoes the step by sending command `C` to its participant. The reply's
    /// content is not used; a success means the step is compensated. The
    /// compensation runs on the saga data as the step left it (the data is
    /// not changed by compensations).
    pub fn compensate<C: Command>(
        mut self,
        build: impl Fn(&D) -> C + Send + Sync + 'static,
    ) -> Self {
        self.compensation = Some(remote(build));
        self
    }

    /// Undoes the step with a local function (not allowed for a remote step
    /// before the pivot: only its participant can refuse a late copy of its
    /// command).
    pub fn compensate_local<F, Fut>(mut self, run: F) -> Self
    where
        F: Fn(D, LocalContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), StepError>> + Send + 'static,
    {
        self.compensation = Some(Action::Local { run: local_fn(run) });
        self
    }

    /// How failed or timed-out attempts are retried (default: the saga's
    /// [`default_retry`](SagaBuilder::default_retry)). When attempts run out,
    /// the saga compensates. The pivot and retriable steps retry until they
    /// succeed: give them a policy without an attempt limit
    /// ([`RetryPolicy::unlimited`]), or none.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// How a failing compensation is retried (default: the saga's
    /// [`default_compensation_retry`](SagaBuilder::default_compensation_retry)).
    /// Past the limit the saga ends `Failed` for an operator.
    pub fn compensation_retry(mut self, policy: RetryPolicy) -> Self {
        self.compensation_retry = Some(policy);
        self
    }

    /// How long one attempt waits for its reply (default: the saga's
    /// [`default_timeout`](SagaBuilder::default_timeout)).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Marks the step as the pivot: once it succeeds, the saga only goes
    /// forward. It retries until it succeeds or fails for a business reason.
    pub fn pivot(mut self) -> Self {
        self.kind = StepKind::Pivot;
        self
    }

    /// Marks the step as retriable: retried until it succeeds or fails for a
    /// business reason. Steps after a pivot must be retriable.
    pub fn retriable(mut self) -> Self {
        self.kind = StepKind::Retriable;
        self
    }

    /// Declares that the step changes nothing (a check, a quote, a lookup), so
    /// it needs no compensation: a late copy of its command is harmless. A
    /// remote step before the pivot must otherwise have a compensation.
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// What an unknown outcome does (default [`OnUnknown::Retry`]).
    pub fn on_unknown(mut self, on_unknown: OnUnknown) -> Self {
        self.on_unknown = on_unknown;
        self
    }
}

const fn kind_name(kind: StepKind) -> &'static str {
    match kind {
        StepKind::Compensatable => "compensatable",
        StepKind::Pivot => "the pivot",
        StepKind::Retriable => "retriable",
    }
}

/// Why a step's late command copy could go unrefused, if it could.
///
/// A remote step that may be compensated must be compensated at its own
/// endpoint: the participant then records a refusal under the step's invoke
/// key, so a copy of the command still queued when the saga compensated
/// (an outage longer than the step's retries, say) is refused instead of
/// taking effect after everything else was undone.
fn unrefusable(step: &StepDefinition) -> Option<String> {
    let Action::Remote {
        endpoint, command, ..
    } = &step.action
    else {
        return None;
    };
    let fix = format!(
        "give it a compensation handled at `{endpoint}` (the participant then refuses a late \
         copy), mark it `.read_only()` if it changes nothing, or make it the pivot"
    );
    match &step.compensation {
        None if step.read_only => None,
        None => Some(format!(
            "step `{}` sends `{command}` to `{endpoint}` and may be compensated, but has no \
             compensation: a copy of its command still queued when the saga compensates would \
             take effect with nothing to undo it; {fix}",
            step.name
        )),
        Some(Action::Local { .. }) => Some(format!(
            "step `{}` sends `{command}` to `{endpoint}` but is compensated locally: only its \
             participant can refuse a late copy of the command; {fix}",
            step.name
        )),
        Some(Action::Remote {
            endpoint: other, ..
        }) if other != endpoint => Some(format!(
            "step `{}` sends `{command}` to `{endpoint}` but is compensated at `{other}`: only \
             `{endpoint}` can refuse a late copy of the command; {fix}",
            step.name
        )),
        Some(Action::Remote { .. }) => None,
    }
}

fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn validate(def: &SagaDefinition) -> Result<(), String> {
    if !is_identifier(&def.name) {
        return Err(
            "the saga name must be 1-128 characters of letters, digits, `_`, `-` or `.`".into(),
        );
    }
    if def.version == 0 {
        return Err("the version must be at least 1".into());
    }
    if def.default_timeout.is_zero() {
        return Err("the default timeout must be greater than zero".into());
    }
    if def.deadline.is_some_and(|d| d.is_zero()) {
        return Err("the deadline must be greater than zero".into());
    }
    let mut seen = std::collections::HashSet::new();
    for step in &def.steps {
        if !is_identifier(&step.name) {
            return Err(format!(
                "step name `{}` must be 1-128 characters of letters, digits, `_`, `-` or `.`",
                step.name
            ));
        }
        if !seen.insert(step.name.as_str()) {
            return Err(format!("step name `{}` is used twice", step.name));
        }
        for action in std::iter::once(&step.action).chain(step.compensation.as_ref()) {
            if action.endpoint().is_some_and(|e| !is_identifier(e)) {
                return Err(format!(
                    "step `{}` names an invalid endpoint `{}`",
                    step.name,
                    action.endpoint().unwrap_or_default()
                ));
            }
        }
        if step.timeout.is_some_and(|t| t.is_zero()) {
            return Err(format!("step `{}` has a zero timeout", step.name));
        }
        if step.read_only && step.compensation.is_some() {
            return Err(format!(
                "step `{}` is read-only and has nothing to compensate: remove `.compensate(..)` \
                 or `.read_only()`",
                step.name
            ));
        }
        if step.kind != StepKind::Compensatable && step.on_unknown == OnUnknown::Compensate {
            return Err(format!(
                "step `{}` is {} and cannot be compensated, so `OnUnknown::Compensate` would stop \
                 the saga for an operator: keep `OnUnknown::Retry`",
                step.name,
                kind_name(step.kind)
            ));
        }
    }
    let compensable = def.pivot.unwrap_or(def.steps.len());
    if let Some(reason) = def.steps[..compensable].iter().find_map(unrefusable) {
        return Err(reason);
    }
    let pivots: Vec<&str> = def
        .steps
        .iter()
        .filter(|s| s.kind == StepKind::Pivot)
        .map(|s| s.name.as_str())
        .collect();
    if pivots.len() > 1 {
        return Err(format!(
            "only one pivot step is allowed, found {}",
            pivots.join(", ")
        ));
    }
    if let Some(pivot) = def.pivot {
        let pivot_step = &def.steps[pivot];
        if pivot_step.compensation.is_some() {
            return Err(format!(
                "pivot step `{}` cannot have a compensation: after it succeeds the saga only goes forward",
                pivot_step.name
            ));
        }
        for step in &def.steps[pivot + 1..] {
            if step.kind != StepKind::Retriable {
                return Err(format!(
                    "step `{}` follows the pivot `{}` and must be marked `.retriable()`",
                    step.name, pivot_step.name
                ));
            }
            if step.compensation.is_some() {
                return Err(format!(
                    "retriable step `{}` after the pivot `{}` cannot have a compensation",
                    step.name, pivot_step.name
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Serialize, Deserialize, Default)]
    struct Data {
        n: u32,
    }

    const ENDPOINTS: [&str; 6] = ["svc", "other", "payment", "order", "credit", ""];

    #[derive(Serialize, Deserialize)]
    struct Ping<const E: usize>;
    impl<const E: usize> Command for Ping<E> {
        const NAME: &'static str = "ping";
        const ENDPOINT: &'static str = ENDPOINTS[E];
        type Reply = u32;
    }

    fn reason(result: Result<Saga<Data>, Error>) -> String {
        match result {
            Err(Error::InvalidDefinition { reason, .. }) => reason,
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("definition unexpectedly valid"),
        }
    }

    #[test]
    fn builds_a_valid_definition() {
        let saga = Saga::<Data>::builder("s")
            .version(3)
            .step("a", |step| {
                step.invoke(|_| Ping::<0>)
                    .on_reply(|d, n| d.n = n)
                    .compensate(|_| Ping::<0>)
            })
            .step("b", |step| {
                step.local(|d: Data, _| async move { Ok(d.n + 1) })
            })
            .build()
            .expect("valid");
        assert_eq!(saga.name(), "s");
        assert_eq!(saga.version(), 3);
        assert_eq!(saga.definition().steps().len(), 2);
        assert_eq!(saga.definition().steps()[0].action().label(), "svc.ping");
    }

    #[test]
    fn rejects_duplicate_step_names() {
        let r = Saga::<Data>::builder("s")
            .step("a", |step| step.invoke(|_| Ping::<0>))
            .step("a", |step| step.invoke(|_| Ping::<0>))
            .build();
        assert!(reason(r).contains("used twice"));
    }

    #[test]
    fn rejects_bad_names_and_endpoints() {
        let r = Saga::<Data>::builder("")
            .step("a", |step| step.invoke(|_| Ping::<0>))
            .build();
        assert!(reason(r).contains("saga name"));
        let r = Saga::<Data>::builder("s")
            .step("has space", |step| step.invoke(|_| Ping::<0>))
            .build();
        assert!(reason(r).contains("step name"));
        let r = Saga::<Data>::builder("s")
            .step("a", |step| step.invoke(|_| Ping::<5>))
            .build();
        assert!(reason(r).contains("invalid endpoint"));
    }

    #[test]
    fn rejects_zero_timeouts_and_version() {
        let r = Saga::<Data>::builder("s")
            .step("a", |step| {
                step.invoke(|_| Ping::<0>).timeout(Duration::ZERO)
            })
            .build();
        assert!(reason(r).contains("zero timeout"));
        let r = Saga::<Data>::builder("s")
            .version(0)
            .step("a", |step| step.invoke(|_| Ping::<0>))
            .build();
        assert!(reason(r).contains("version"));
    }

    #[test]
    fn rejects_two_pivots_and_compensated_pivot() {
        let r = Saga::<Data>::builder("s")
            .step("a", |step| step.invoke(|_| Ping::<0>).pivot())
            .step("b", |step| step.invoke(|_| Ping::<0>).pivot())
            .build();
        assert!(reason(r).contains("only one pivot"));
        let r = Saga::<Data>::builder("s")
            .step("a", |step| {
                step.invoke(|_| Ping::<0>).compensate(|_| Ping::<0>).pivot()
            })
            .build();
        assert!(reason(r).contains("cannot have a compensation"));
    }

    #[test]
    fn steps_after_the_pivot_must_be_retriable_without_compensation() {
        let r = Saga::<Data>::builder("s")
            .step("a", |step| step.invoke(|_| Ping::<0>).pivot())
            .step("b", |step| step.invoke(|_| Ping::<0>))
            .build();
        assert!(reason(r).contains("must be marked `.retriable()`"));
        let r = Saga::<Data>::builder("s")
            .step("a", |step| step.invoke(|_| Ping::<0>).pivot())
            .step("b", |step| {
                step.invoke(|_| Ping::<0>)
                    .retriable()
                    .compensate(|_| Ping::<0>)
            })
            .build();
        assert!(reason(r).contains("cannot have a compensation"));
        let ok = Saga::<Data>::builder("s")
            .step("a", |step| step.invoke(|_| Ping::<0>).pivot())
            .step("b", |step| step.invoke(|_| Ping::<0>).retriable())
            .build();
        assert!(ok.is_ok());
    }

    #[test]
    fn a_remote_step_that_may_be_compensated_needs_a_compensation_at_its_endpoint() {
        // The checkout's old shape: a side-effecting last step with no
        // compensation and no pivot. A copy of its command still queued
        // when the saga compensates would confirm an order nobody pays for.
        let r = Saga::<Data>::builder("s")
            .step("pay", |step| {
                step.invoke(|_| Ping::<2>).compensate(|_| Ping::<2>)
            })
            .step("confirm", |step| step.invoke(|_| Ping::<3>))
            .build();
        let why = reason(r);
        assert!(why.contains("step `confirm`"), "{why}");
        assert!(why.contains("no compensation"), "{why}");
        assert!(
            why.contains(".read_only()") && why.contains("pivot"),
            "{why}"
        );

        let r = Saga::<Data>::builder("s")
            .step("a", |step| {
                step.invoke(|_| Ping::<0>).compensate(|_| Ping::<1>)
            })
            .build();
        assert!(reason(r).contains("compensated at `other`"));

        let r = Saga::<Data>::builder("s")
            .step("a", |step| {
                step.invoke(|_| Ping::<0>)
                    .compensate_local(|_, _| async { Ok(()) })
            })
            .build();
        assert!(reason(r).contains("compensated locally"));
    }

    #[test]
    fn read_only_steps_and_the_pivot_need_no_compensation() {
        let ok = Saga::<Data>::builder("s")
            .step("check", |step| step.invoke(|_| Ping::<4>).read_only())
            .step("pay", |step| {
                step.invoke(|_| Ping::<2>).compensate(|_| Ping::<2>)
            })
            .step("confirm", |step| step.invoke(|_| Ping::<3>).pivot())
            .build();
        assert!(ok.is_ok(), "{:?}", ok.err());
        let r = Saga::<Data>::builder("s")
            .step("check", |step| {
                step.invoke(|_| Ping::<4>)
                    .read_only()
                    .compensate(|_| Ping::<4>)
            })
            .build();
        assert!(reason(r).contains("read-only"));
    }

    #[test]
    fn the_pivot_and_retriable_steps_retry_without_limit() {
        let saga = Saga::<Data>::builder("s")
            .step("a", |step| step.invoke(|_| Ping::<0>).pivot())
            .step("b", |step| step.invoke(|_| Ping::<0>).retriable())
            .build()
            .expect("valid");
        for step in saga.definition().steps() {
            assert_eq!(step.retry().attempt_limit(), None, "{}", step.name());
        }
        let r = Saga::<Data>::builder("s")
            .step("a", |step| {
                step.invoke(|_| Ping::<0>)
                    .pivot()
                    .retry(RetryPolicy::fixed(Duration::from_millis(10)).max_attempts(3))
            })
            .build();
        let why = reason(r);
        assert!(why.contains("stops after 3 attempt(s)"), "{why}");
        let r = Saga::<Data>::builder("s")
            .step("a", |step| {
                step.invoke(|_| Ping::<0>)
                    .pivot()
                    .on_unknown(OnUnknown::Compensate)
            })
            .build();
        assert!(reason(r).contains("OnUnknown::Compensate"));
    }

    #[test]
    fn saga_level_defaults_apply_to_steps_that_set_none() {
        let retry = RetryPolicy::fixed(Duration::from_millis(7)).max_attempts(9);
        let undo = RetryPolicy::fixed(Duration::from_millis(3)).max_attempts(4);
        let saga = Saga::<Data>::builder("s")
            .default_retry(retry)
            .default_compensation_retry(undo)
            .step("a", |step| {
                step.invoke(|_| Ping::<0>).compensate(|_| Ping::<0>)
            })
            .step("b", |step| {
                step.invoke(|_| Ping::<0>)
                    .compensate(|_| Ping::<0>)
                    .retry(RetryPolicy::none())
            })
            .step("c", |step| step.invoke(|_| Ping::<0>).pivot())
            .build()
            .expect("valid");
        let steps = saga.definition().steps();
        assert_eq!(*steps[0].retry(), retry);
        assert_eq!(*steps[0].compensation_retry(), undo);
        assert_eq!(*steps[1].retry(), RetryPolicy::none());
        assert_eq!(*steps[2].retry(), retry.unlimited());
    }
}
