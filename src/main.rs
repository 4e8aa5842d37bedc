//! The habitus binary: everything lives in the library.
fn main() -> std::process::ExitCode {
    let code = habitus::run(std::env::args_os());
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}
