//! `locusd`: the Locus server and its tools. See `locusd --help` and the README.
//!
//! The subcommands live in [`locus_broker::cli`]; `serve` (also what runs with no subcommand)
//! is [`locus_broker::serve`].

fn main() -> std::process::ExitCode {
    locus_broker::cli::main()
}
