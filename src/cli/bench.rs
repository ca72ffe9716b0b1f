//! `keyrelay bench`: placeholder replaced below.
use crate::configuration::Settings;
#[derive(Debug, clap::Args)]
pub struct BenchArgs {}
pub async fn run(_settings: Settings, _args: BenchArgs) -> anyhow::Result<()> { Ok(()) }
