#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = keyrelay::cli::Cli::parse_args();
    keyrelay::cli::run(cli).await
}
