//! Atomic file writes: the content goes to a temporary name beside the target, unique to the
//! process and the call, and is renamed into place, so a crash never leaves a half-written file
//! and two writers never share a temporary file.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A fresh temporary path beside `path`: `.NAME.PID-N.tmp.EXT` in the same folder (so the
/// rename stays on one file system), unique to this process and call; it keeps the extension,
/// which some writers read the format from.
pub fn temporary_path(path: &Path) -> PathBuf {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let ext = path
        .extension()
        .map_or(String::new(), |e| format!(".{}", e.to_string_lossy()));
    path.with_file_name(format!(".{name}.{}-{call}.tmp{ext}", std::process::id()))
}

/// Runs `write` on a temporary path beside `path`, then renames the result into place. The
/// temporary file is removed when `write` or the rename fails.
pub fn write_with<E: From<io::Error>>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let tmp = temporary_path(path);
    let result = write(&tmp).and_then(|()| std::fs::rename(&tmp, path).map_err(E::from));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Checks, before any work is done, that a file can later be written at `path` (given with
/// `flag`): its folder exists and `path` is not itself a folder. The error names both.
pub fn check_output_file(path: &Path, flag: &str) -> io::Result<()> {
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let problem = if path.is_dir() {
        "is a folder; expected a file name".to_string()
    } else if !folder.is_dir() {
        format!(
            "cannot be written: its folder {} does not exist",
            folder.display()
        )
    } else {
        return Ok(());
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{flag} {}: {problem}", path.display()),
    ))
}

/// Writes `bytes` to `path` atomically. The error names the path.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_with(path, |tmp| std::fs::write(tmp, bytes))
        .map_err(|e| io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display())))
}

/// Puts the folder `new` (complete, on the same file system) in the place of the folder `dst`
/// in one step: on Linux an atomic exchange (`renameat2` with `RENAME_EXCHANGE`), after which the
/// old folder, now at `new`, is removed; where `dst` does not exist yet, a plain rename. Readers
/// of `dst` see the old set of files or the new one, never a mixture. Elsewhere (or where the file
/// system refuses the exchange) the old folder is first renamed aside, so a crash between the two
/// renames leaves both sets on disk under their own names.
pub fn replace_dir(new: &Path, dst: &Path) -> io::Result<()> {
    let named = |e: io::Error| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot move {} into place at {}: {e}",
                new.display(),
                dst.display()
            ),
        )
    };
    match std::fs::symlink_metadata(dst) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return std::fs::rename(new, dst).map_err(named)
        }
        Err(e) => return Err(named(e)),
        Ok(m) if !m.is_dir() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a folder", dst.display()),
            ))
        }
        Ok(_) => {}
    }
    if exchange(new, dst).is_ok() {
        return std::fs::remove_dir_all(new);
    }
    let aside = temporary_path(dst);
    std::fs::rename(dst, &aside).map_err(named)?;
    std::fs::rename(new, dst).map_err(named)?;
    std::fs::remove_dir_all(&aside)
}

/// Atomically exchanges two paths (Linux `renameat2(RENAME_EXCHANGE)`).
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))
    };
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: both pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_files_are_checked_before_the_work() {
        let dir = std::env::temp_dir().join(format!("fff-util-out-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        check_output_file(&dir.join("x.png"), "--plot").unwrap();
        check_output_file(Path::new("x.json"), "--json").unwrap();
        let err = check_output_file(&dir.join("nope").join("x.png"), "--plot")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--plot ") && err.contains("nope") && err.contains("does not exist"),
            "{err}"
        );
        let err = check_output_file(&dir, "--json").unwrap_err().to_string();
        assert!(err.contains("is a folder"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn writes_replace_whole_files_and_leave_no_temporaries() {
        let dir = std::env::temp_dir().join(format!("fff-util-fs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("out.json");
        write_atomic(&target, b"first").unwrap();
        write_atomic(&target, b"second").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"second");
        let failed: io::Result<()> =
            write_with(&target, |_| Err(io::Error::other("writer failed")));
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["out.json"], "temporaries left behind");
        assert_ne!(temporary_path(&target), temporary_path(&target));
        let err = write_atomic(&dir.join("missing").join("x"), b"x").unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_folder_is_replaced_whole() {
        let root = std::env::temp_dir().join(format!("fff-util-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let dst = root.join("run");
        let fresh = |content: &str| {
            let tmp = temporary_path(&dst);
            std::fs::create_dir_all(&tmp).unwrap();
            std::fs::write(tmp.join("a"), content).unwrap();
            std::fs::write(tmp.join(content), "").unwrap();
            tmp
        };
        replace_dir(&fresh("one"), &dst).unwrap();
        assert_eq!(std::fs::read_to_string(dst.join("a")).unwrap(), "one");
        replace_dir(&fresh("two"), &dst).unwrap();
        assert_eq!(std::fs::read_to_string(dst.join("a")).unwrap(), "two");
        assert!(!dst.join("one").exists(), "a file of the old set survived");
        let names: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["run"], "temporaries left behind");
        let file = root.join("file");
        std::fs::write(&file, "").unwrap();
        let err = replace_dir(&fresh("three"), &file).unwrap_err();
        assert!(err.to_string().contains("not a folder"), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
