//! Standard output and error that never panic. `println!` panics when stdout is a closed pipe
//! (`fff ... | head -1`) or a full disk; these macros end the command instead: quietly with
//! status 141 for a closed pipe (what a shell reports for a process stopped by `SIGPIPE`), with
//! a message and status 1 for any other write error. Callers print only between whole steps
//! (a checkpoint is saved before its epoch line), so ending there loses nothing.

use std::fmt;
use std::io::{self, Write};

/// Like `println!`, but a failed write ends the command as described in [`crate::output`].
macro_rules! outln {
    () => { $crate::output::write_out(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::output::write_out(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Like `print!`, but a failed write ends the command as described in [`crate::output`].
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::write_out(format_args!($($arg)*)) };
}

/// Like `eprintln!`, but a failed write to stderr is ignored: there is nowhere left to say so.
macro_rules! errln {
    ($($arg:tt)*) => { $crate::output::write_err(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Writes to stdout and flushes; ends the process on failure.
pub fn write_out(args: fmt::Arguments) {
    let mut stdout = io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        stdout_failed(&e);
    }
}

/// Writes to stderr, ignoring failure.
pub fn write_err(args: fmt::Arguments) {
    let _ = io::stderr().lock().write_fmt(args);
}

/// Ends the process after a failed write to stdout.
fn stdout_failed(e: &io::Error) -> ! {
    if e.kind() == io::ErrorKind::BrokenPipe {
        std::process::exit(141);
    }
    write_err(format_args!("fff: cannot write to standard output: {e}\n"));
    std::process::exit(1);
}
