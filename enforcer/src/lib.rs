//! The enforcer agent as a library: the binary (`main.rs`) is its CLI, [`app`] builds and runs
//! the agent from its configuration, and benchmarks call the decision path directly.

pub mod anomaly;
pub mod app;
pub mod audit;
pub mod binding;
pub mod cli;
pub mod credentials;
pub mod error;
pub mod host;
pub mod http;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod proxy;
pub mod redirect;
pub mod reload;
