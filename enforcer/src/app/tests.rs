use std::time::Duration;

use clap::Parser as _;

use super::{Config, ConfigError};
use crate::cli::{Cli, Command};

fn config(flags: &[&str]) -> Result<Config, ConfigError> {
    let args = ["enforcer", "run", "--policy", "p.yaml"]
        .iter()
        .chain(flags)
        .copied();
    match Cli::try_parse_from(args).expect("flags parse").command {
        Command::Run(args) => Config::from_args(args),
        _ => unreachable!("a run command"),
    }
}

#[test]
fn durations_are_checked_before_anything_starts() {
    let defaults = config(&[]).expect("defaults are valid");
    assert_eq!(defaults.connect_timeout, None);
    assert_eq!(defaults.drain_timeout, Duration::from_secs(10));
    let given = config(&["--connect-timeout", "1.5", "--drain-timeout", "0"]).expect("valid");
    assert_eq!(given.connect_timeout, Some(Duration::from_millis(1500)));
    assert_eq!(given.drain_timeout, Duration::ZERO);

    for (flags, error) in [
        (["--connect-timeout=0"], ConfigError::ConnectTimeout(0.0)),
        (["--connect-timeout=-1"], ConfigError::ConnectTimeout(-1.0)),
        (["--drain-timeout=-0.5"], ConfigError::DrainTimeout(-0.5)),
    ] {
        assert_eq!(config(&flags).expect_err("refused"), error, "{flags:?}");
    }
    let nan = config(&["--drain-timeout", "NaN"]).expect_err("refused");
    assert!(
        matches!(nan, ConfigError::DrainTimeout(v) if v.is_nan()),
        "{nan}"
    );
    assert_eq!(
        config(&["--connect-timeout", "inf"])
            .expect_err("refused")
            .to_string(),
        "--connect-timeout must be a positive number of seconds, not inf"
    );
}
