//! Terminal colours, used sparingly: only when the stream is a terminal and
//! `NO_COLOR` is unset or empty (<https://no-color.org>). Never colour output
//! a script might read.

use std::io::IsTerminal;

fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// Whether stderr may carry colour.
pub fn stderr_colored() -> bool {
    !no_color() && std::io::stderr().is_terminal()
}

/// Whether stdout may carry colour.
pub fn stdout_colored() -> bool {
    !no_color() && std::io::stdout().is_terminal()
}

/// `text` in bold red when `on`.
pub fn red(text: &str, on: bool) -> String {
    if on {
        format!("\x1b[1;31m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}
