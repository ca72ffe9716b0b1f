use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = keyrelay::cli::Cli::parse();
    keyrelay::cli::run(cli).await
}
