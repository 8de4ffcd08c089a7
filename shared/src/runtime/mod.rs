//! How a function runs: its configuration from the environment ([`config`]), its logs and
//! metrics ([`logging`], [`metrics`]), its deadline ([`deadline`]). Imports the model and the
//! delivery rules (whose policies the configuration builds).

pub mod config;
pub mod deadline;
pub mod logging;
pub mod metrics;
