//! Why an input to the controller failed ([`InputError`]), and how each failure answers:
//! its HTTP status, code, message and details ([`InputError::reply`]). The same answer goes
//! back over HTTP from the replica that was asked and, for a forwarded command, from the leader
//! to that replica.

use crate::config::ConfigError;
use crate::core::rollout::Refusal;
use crate::serve::replica::ForwardedError;
use crate::store::StoreError;

/// Why an operator input failed.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("no rollout named `{0}`")]
    UnknownRollout(String),
    #[error("no guarded workflow named `{0}`")]
    UnknownWorkflow(String),
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the controller is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    NoContainment(String),
    #[error(
        "Idempotency-Key `{key}` was already used for a {used} on this rollout; use a new key for a new action"
    )]
    KeyReused { key: String, used: String },
    /// The leader refused a command this replica forwarded: its answer, as it gave it.
    #[error("{}", .0.message)]
    Forwarded(ForwardedError),
    /// No leader answered a forwarded command.
    #[error("{0}")]
    NoLeader(String),
}

impl InputError {
    /// The answer a client gets.
    pub fn reply(self) -> ForwardedError {
        let message = self.to_string();
        let (status, code, details) = match self {
            InputError::UnknownRollout(_)
            | InputError::UnknownWorkflow(_)
            | InputError::NoContainment(_) => (404, "not_found", Vec::new()),
            InputError::Refused(Refusal::BadRequest(_)) => (400, "bad_request", Vec::new()),
            InputError::Refused(Refusal::Conflict(_)) => (409, "conflict", Vec::new()),
            InputError::Refused(Refusal::ReenableProof { missing }) => {
                (422, "reenable_proof_missing", missing)
            }
            InputError::Refused(Refusal::RemovesContained(names)) => {
                (422, "removes_contained_rollouts", names)
            }
            InputError::Config(c) => {
                return ForwardedError {
                    status: 422,
                    code: "invalid_config".into(),
                    message: "the config file is invalid; the running config is unchanged".into(),
                    details: c.problems(),
                };
            }
            InputError::Store(
                StoreError::Unavailable { .. } | StoreError::DatabaseUnavailable { .. },
            ) => (503, "store_unavailable", Vec::new()),
            InputError::Store(StoreError::Fenced { .. }) => (503, "not_leader", Vec::new()),
            InputError::Store(_) => (500, "internal", Vec::new()),
            InputError::KeyReused { .. } => (422, "idempotency_key_reused", Vec::new()),
            InputError::ShuttingDown => (503, "shutting_down", Vec::new()),
            InputError::NoLeader(_) => (503, "no_leader", Vec::new()),
            InputError::Forwarded(reply) => return reply,
        };
        ForwardedError {
            status,
            code: code.into(),
            message,
            details,
        }
    }
}
