//! How much memory this process may still allocate: the least of what the machine has available
//! (`MemAvailable`), what its cgroup allows (v2 `memory.max`, v1 `memory.limit_in_bytes`, of
//! its own cgroup and every ancestor) and what its resource limits leave (`RLIMIT_AS`,
//! `RLIMIT_DATA`). A job that checks its size against [`MemAvailable`] alone still dies on an
//! allocation failure (or the OOM killer) inside a container or under `ulimit -v`.
//!
//! The readers of the kernel's text are plain functions of that text, so that they can be tested
//! on samples; [`limits`] applies them to this process's files.
//!
//! [`MemAvailable`]: parse_meminfo

use std::fmt;
use std::path::{Path, PathBuf};

/// One bound on the memory this process may allocate, and what sets it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    /// Bytes this bound leaves for new allocations.
    pub bytes: u64,
    /// What sets the bound, in words, with its figures (e.g. `cgroup v2 memory.max of
    /// /sys/fs/cgroup/job (8.0 GiB, 2.5 GiB of it in use)`).
    pub source: String,
    /// Whether address space that is reserved but never touched counts against the bound, as
    /// it does for `RLIMIT_AS` and `RLIMIT_DATA`; `MemAvailable` and the cgroups count only
    /// pages in use.
    pub counts_reserved: bool,
}

impl fmt::Display for Limit {
    /// `5.5 GiB available under <source>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} available under {}", bytes(self.bytes), self.source)
    }
}

/// Every bound on new allocations that this process can find out about; empty where none is
/// known (not Linux, or `/proc` unreadable).
pub fn limits() -> Vec<Limit> {
    let mut found = Vec::new();
    if let Some(b) = read("/proc/meminfo").as_deref().and_then(parse_meminfo) {
        found.push(Limit {
            bytes: b,
            source: "the machine's MemAvailable (/proc/meminfo)".into(),
            counts_reserved: false,
        });
    }
    found.extend(cgroup_limits());
    found.extend(rlimits());
    found
}

/// The tightest of [`limits`]: what this process may still allocate, and which bound says so;
/// `None` where nothing is known.
pub fn available() -> Option<Limit> {
    tightest(limits())
}

/// The bytes this process may still allocate (the tightest of [`limits`]); `None` where
/// nothing is known.
pub fn available_bytes() -> Option<u64> {
    available().map(|l| l.bytes)
}

/// The smallest of `limits` (the first of equals).
pub fn tightest(limits: Vec<Limit>) -> Option<Limit> {
    limits
        .into_iter()
        .reduce(|a, b| if b.bytes < a.bytes { b } else { a })
}

/// Bytes in a readable unit: `512 B`, `300 MiB`, `1.5 GiB` (binary units, one decimal for
/// GiB and TiB).
pub fn bytes(n: u64) -> String {
    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    const TIB: u64 = 1 << 40;
    match n {
        n if n >= TIB => format!("{:.1} TiB", n as f64 / TIB as f64),
        n if n >= GIB => format!("{:.1} GiB", n as f64 / GIB as f64),
        n if n >= MIB => format!("{} MiB", n / MIB),
        n if n >= KIB => format!("{} KiB", n / KIB),
        n => format!("{n} B"),
    }
}

fn read(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// `MemAvailable` of `/proc/meminfo` text, in bytes.
pub fn parse_meminfo(text: &str) -> Option<u64> {
    kib_field(text, "MemAvailable:")
}

/// The `VmSize` (mapped address space) and `VmData` (private writable mappings) of
/// `/proc/self/status` text, in bytes.
pub fn parse_status(text: &str) -> (Option<u64>, Option<u64>) {
    (kib_field(text, "VmSize:"), kib_field(text, "VmData:"))
}

/// The value of a `Name:   1234 kB` line, in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line[name.len()..].split_whitespace().next()?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The size of this machine's level-`level` data or unified cache in bytes (of the first CPU,
/// from `/sys/devices/system/cpu/cpu0/cache`); `None` where unknown. Some matrix kernels size
/// their per-thread scratch by it.
pub fn cache_bytes(level: u32) -> Option<u64> {
    let dir = Path::new("/sys/devices/system/cpu/cpu0/cache");
    std::fs::read_dir(dir).ok()?.flatten().find_map(|entry| {
        let path = entry.path();
        let this_level: u32 = read(path.join("level"))?.trim().parse().ok()?;
        let kind = read(path.join("type"))?;
        let data = matches!(kind.trim(), "Data" | "Unified");
        (this_level == level && data)
            .then(|| {
                read(path.join("size"))
                    .as_deref()
                    .and_then(parse_cache_size)
            })
            .flatten()
    })
}

/// A sysfs cache size (`266240K`, `32M`, `512`) in bytes.
pub fn parse_cache_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, ""),
    };
    let n: u64 = digits.parse().ok()?;
    let scale = match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// Which cgroup hierarchy a path or limit belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupVersion {
    /// The unified hierarchy (`memory.max`, `memory.current`).
    V2,
    /// The legacy memory controller (`memory.limit_in_bytes`, `memory.usage_in_bytes`).
    V1,
}

/// This process's cgroup paths from `/proc/self/cgroup` text: the unified hierarchy's (`0::/a/b`)
/// and the v1 memory controller's (`4:memory:/a/b`), where present.
pub fn parse_proc_cgroup(text: &str) -> Vec<(CgroupVersion, String)> {
    let mut found = Vec::new();
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            found.push((CgroupVersion::V2, path.to_string()));
        } else if controllers.split(',').any(|c| c == "memory") {
            found.push((CgroupVersion::V1, path.to_string()));
        }
    }
    found
}

/// Where the cgroup file systems are mounted, from `/proc/self/mountinfo` text: for each, its
/// version, the cgroup path its mount shows (the root field; not `/` in a container without a
/// cgroup namespace) and the mount point. v1 mounts without the memory controller are left out.
pub fn parse_mountinfo(text: &str) -> Vec<(CgroupVersion, String, PathBuf)> {
    let mut found = Vec::new();
    for line in text.lines() {
        // `ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS`
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = before.split(' ').collect();
        let after: Vec<&str> = after.split(' ').collect();
        let (Some(root), Some(point), Some(&fstype)) =
            (fields.get(3), fields.get(4), after.first())
        else {
            continue;
        };
        let version = match fstype {
            "cgroup2" => CgroupVersion::V2,
            "cgroup"
                if after
                    .get(2)
                    .is_some_and(|o| o.split(',').any(|c| c == "memory")) =>
            {
                CgroupVersion::V1
            }
            _ => continue,
        };
        found.push((version, unescape(root), PathBuf::from(unescape(point))));
    }
    found
}

/// mountinfo's octal escapes (`\040` for a space) undone.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let d = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(d, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The folders holding this process's cgroup and its ancestors up to the mount's root, innermost
/// first, for each hierarchy that has a memory controller: `cgroups` from
/// [`parse_proc_cgroup`], `mounts` from [`parse_mountinfo`].
pub fn cgroup_dirs(
    cgroups: &[(CgroupVersion, String)],
    mounts: &[(CgroupVersion, String, PathBuf)],
) -> Vec<(CgroupVersion, Vec<PathBuf>)> {
    let mut found = Vec::new();
    for (version, path) in cgroups {
        let Some((_, root, point)) = mounts.iter().find(|(v, ..)| v == version) else {
            continue;
        };
        // Without a cgroup namespace a container's mount shows its own cgroup as the root;
        // the process's path then starts with it. A path outside the mount's root cannot be
        // reached, and the mount point (the nearest visible ancestor) is used.
        let relative = Path::new(path)
            .strip_prefix(root)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut dirs = Vec::new();
        let mut rel = relative.as_path();
        loop {
            dirs.push(match rel.as_os_str().is_empty() {
                true => point.clone(),
                false => point.join(rel),
            });
            match rel.parent() {
                Some(parent) => rel = parent,
                None => break,
            }
        }
        found.push((*version, dirs));
    }
    found
}

/// A cgroup's limit and its usage, from the text of its files (v2: `memory.max`,
/// `memory.current`, `memory.stat`; v1: `memory.limit_in_bytes`, `memory.usage_in_bytes`,
/// `memory.stat`): `(limit, used)` in bytes, `None` without a limit. The usage leaves out the
/// inactive file cache (`inactive_file`), which the kernel reclaims before it fails an
/// allocation, as `docker stats` and the container runtimes count it.
pub fn parse_cgroup_memory(
    version: CgroupVersion,
    limit: &str,
    usage: &str,
    stat: Option<&str>,
) -> Option<(u64, u64)> {
    // v2 says `max` for none.
    let limit: u64 = limit.trim().parse().ok()?;
    // v1 writes "no limit" as the largest page count in bytes (0x7FFFFFFFFFFFF000 on 4 KiB
    // pages).
    if version == CgroupVersion::V1 && limit >= 1 << 62 {
        return None;
    }
    let usage: u64 = usage.trim().parse().ok()?;
    let key = match version {
        CgroupVersion::V2 => "inactive_file",
        CgroupVersion::V1 => "total_inactive_file",
    };
    let inactive = stat
        .and_then(|s| {
            s.lines().find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == key).then(|| v.trim().parse::<u64>().ok()).flatten()
            })
        })
        .unwrap_or(0);
    Some((limit, usage.saturating_sub(inactive)))
}

/// The cgroup bounds of this process: for each hierarchy, the tightest of its cgroup's and its
/// ancestors' limits.
fn cgroup_limits() -> Vec<Limit> {
    match (read("/proc/self/cgroup"), read("/proc/self/mountinfo")) {
        (Some(cgroup), Some(mountinfo)) => cgroup_limits_from(&cgroup, &mountinfo),
        _ => Vec::new(),
    }
}

/// The cgroup bounds of a process with this `/proc/self/cgroup` and `/proc/self/mountinfo`
/// text, read from the cgroup files under the mount points that `mountinfo` names: for each
/// hierarchy, the tightest of the cgroup's and its ancestors' limits.
pub fn cgroup_limits_from(cgroup: &str, mountinfo: &str) -> Vec<Limit> {
    let dirs = cgroup_dirs(&parse_proc_cgroup(cgroup), &parse_mountinfo(mountinfo));
    let mut found = Vec::new();
    for (version, dirs) in dirs {
        let (limit_file, usage_file, name) = match version {
            CgroupVersion::V2 => ("memory.max", "memory.current", "cgroup v2 memory.max"),
            CgroupVersion::V1 => (
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
                "cgroup v1 memory.limit_in_bytes",
            ),
        };
        let bounds = dirs.iter().filter_map(|dir| {
            let (limit, used) = parse_cgroup_memory(
                version,
                &read(dir.join(limit_file))?,
                &read(dir.join(usage_file))?,
                read(dir.join("memory.stat")).as_deref(),
            )?;
            Some(Limit {
                bytes: limit.saturating_sub(used),
                source: format!(
                    "{name} of {} ({}, {} of it in use)",
                    dir.display(),
                    bytes(limit),
                    bytes(used)
                ),
                counts_reserved: false,
            })
        });
        found.extend(tightest(bounds.collect()));
    }
    found
}

/// The bounds `RLIMIT_AS` (`ulimit -v`) and `RLIMIT_DATA` (`ulimit -d`) leave: each soft limit
/// less what this process has already mapped (`VmSize`, `VmData`), where the untouched part of
/// the allocator's arenas ([`parse_smaps_reserve`]) counts as free: new allocations land there
/// without mapping more.
#[cfg(target_os = "linux")]
fn rlimits() -> Vec<Limit> {
    let (vm_size, vm_data) = read("/proc/self/status")
        .as_deref()
        .map_or((None, None), parse_status);
    // SAFETY (both closures): `l` is a valid, writable rlimit for the duration of the call.
    let address_space = rlimit(|l| unsafe { libc::getrlimit(libc::RLIMIT_AS, l) });
    let data = rlimit(|l| unsafe { libc::getrlimit(libc::RLIMIT_DATA, l) });
    if address_space.is_none() && data.is_none() {
        return Vec::new();
    }
    let reserve = read("/proc/self/smaps")
        .as_deref()
        .map_or(0, parse_smaps_reserve);
    let mut found = Vec::new();
    for (limit, name, mapped, what) in [
        (
            address_space,
            "the address-space limit RLIMIT_AS (ulimit -v)",
            vm_size,
            "mapped",
        ),
        (
            data,
            "the data limit RLIMIT_DATA (ulimit -d)",
            vm_data,
            "in private mappings",
        ),
    ] {
        let Some(limit) = limit else {
            continue;
        };
        let mapped = mapped.unwrap_or(0);
        let free = reserve.min(mapped);
        let used = mapped - free;
        let spare = match free {
            0 => String::new(),
            f => format!(" (and {} reserved by the allocator, free)", bytes(f)),
        };
        found.push(Limit {
            bytes: limit.saturating_sub(used),
            source: format!(
                "{name} of {}, {} already {what}{spare}",
                bytes(limit),
                bytes(used)
            ),
            counts_reserved: true,
        });
    }
    found
}

/// Smallest mapping taken for an allocator's arena by [`parse_smaps_reserve`]: thread stacks and
/// libc's per-thread heaps are smaller (8 and 64 MiB).
const ARENA_MIN: u64 = 256 << 20;

/// The bytes of `/proc/self/smaps` text that allocators have reserved but never touched: the
/// part of each large (at least 256 MiB) private, writable, anonymous mapping that is not
/// resident. mimalloc reserves its arenas a GiB at a time and hands out their untouched space
/// without mapping more, so that space is no more "used" than unmapped address space.
pub fn parse_smaps_reserve(text: &str) -> u64 {
    let mut total = 0u64;
    let mut current: Option<(u64, Option<u64>)> = None; // (size, rss) of an arena-like mapping
    let mut flush = |c: &mut Option<(u64, Option<u64>)>| {
        if let Some((size, Some(rss))) = c.take() {
            total = total.saturating_add(size.saturating_sub(rss));
        }
    };
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            flush(&mut current);
            // `START-END PERMS OFFSET DEV INODE [PATH]`
            let perms = fields.next().unwrap_or_default();
            let inode = fields.nth(2).unwrap_or_default();
            let anonymous = inode == "0" && fields.next().is_none();
            let size = first.split_once('-').and_then(|(a, b)| {
                let (a, b) = (
                    u64::from_str_radix(a, 16).ok()?,
                    u64::from_str_radix(b, 16).ok()?,
                );
                b.checked_sub(a)
            });
            current = match size {
                Some(size) if anonymous && perms == "rw-p" && size >= ARENA_MIN => {
                    Some((size, None))
                }
                _ => None,
            };
        } else if first == "Rss:" {
            if let Some((_, rss)) = &mut current {
                *rss = kib_field(line, "Rss:");
            }
        }
    }
    flush(&mut current);
    total
}

/// The soft limit `get` reads, `None` when unlimited or unreadable. (`getrlimit`'s resource
/// argument has a different type on glibc and musl; the closure hides it.)
#[cfg(target_os = "linux")]
fn rlimit(get: impl FnOnce(&mut libc::rlimit) -> libc::c_int) -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let rc = get(&mut limit);
    (rc == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

#[cfg(not(target_os = "linux"))]
fn rlimits() -> Vec<Limit> {
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:       24576000 kB\nMemFree:        20000000 kB\n\
                           MemAvailable:   23000000 kB\nBuffers:          100 kB\n";

    #[test]
    fn meminfo_and_status_are_read_in_bytes() {
        assert_eq!(parse_meminfo(MEMINFO), Some(23_000_000 * 1024));
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
        assert_eq!(parse_meminfo("MemAvailable: lots kB\n"), None);
        let status = "Name:\tfff\nVmPeak:\t 9000 kB\nVmSize:\t  8000 kB\nVmData:\t 3000 kB\n";
        assert_eq!(parse_status(status), (Some(8000 * 1024), Some(3000 * 1024)));
        assert_eq!(parse_status("Name: x\n"), (None, None));
    }

    const SMAPS: &str = "\
20000000000-20040000000 rw-p 00000000 00:00 0 
Size:            1048576 kB
Rss:               70796 kB
Pss:               70796 kB
55b037403000-55b0385e1000 r-xp 005de000 fe:00 5312044                    /work/main/fff
Size:              18296 kB
Rss:                6636 kB
7fa684021000-7fa688000000 ---p 00000000 00:00 0 
Size:              65404 kB
Rss:                   0 kB
7fa700000000-7fa740000000 rw-p 00000000 00:00 0                          [heap]
Size:            1048576 kB
Rss:                   4 kB
7fa800000000-7fa820000000 rw-p 00000000 00:00 0 
Size:             524288 kB
Rss:              524288 kB
";

    #[test]
    fn the_allocators_untouched_arenas_count_as_free() {
        // The 1 GiB arena less its 69 MiB in use; the binary, the PROT_NONE reservation, the
        // named mapping and the fully touched one do not count.
        assert_eq!(parse_smaps_reserve(SMAPS), (1_048_576 - 70_796) * 1024);
        assert_eq!(parse_smaps_reserve(""), 0);
        // A mapping without an Rss line (a truncated read) counts as used.
        assert_eq!(
            parse_smaps_reserve("20000000000-20040000000 rw-p 0 00:00 0\n"),
            0
        );
    }

    #[test]
    fn cache_sizes_are_read_in_bytes() {
        assert_eq!(parse_cache_size("266240K\n"), Some(266_240 * 1024));
        assert_eq!(parse_cache_size("32M"), Some(32 << 20));
        assert_eq!(parse_cache_size("512"), Some(512));
        assert_eq!(parse_cache_size("lots"), None);
        assert_eq!(parse_cache_size("3X"), None);
        if let Some(l3) = cache_bytes(3) {
            assert!(l3 >= 1 << 16, "{l3}");
        }
    }

    #[test]
    fn proc_cgroup_names_the_unified_and_the_memory_paths() {
        let v2 = "0::/user.slice/user-1000.slice/session-3.scope\n";
        assert_eq!(
            parse_proc_cgroup(v2),
            [(
                CgroupVersion::V2,
                "/user.slice/user-1000.slice/session-3.scope".to_string()
            )]
        );
        let hybrid = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/5e41\n\
                      2:cpu,cpuacct:/\n0::/\n";
        assert_eq!(
            parse_proc_cgroup(hybrid),
            [
                (CgroupVersion::V1, "/process_api/5e41".to_string()),
                (CgroupVersion::V2, "/".to_string())
            ]
        );
        assert!(parse_proc_cgroup("garbage\n\n").is_empty());
    }

    const MOUNTINFO: &str = "\
22 1 0:21 / /proc rw,nosuid - proc proc rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 /docker/abc /sys/fs/cgroup/memory rw,relatime master:9 - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified\\040dir rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn mountinfo_gives_each_memory_hierarchy_its_root_and_mount_point() {
        assert_eq!(
            parse_mountinfo(MOUNTINFO),
            [
                (
                    CgroupVersion::V1,
                    "/docker/abc".to_string(),
                    PathBuf::from("/sys/fs/cgroup/memory")
                ),
                (
                    CgroupVersion::V2,
                    "/".to_string(),
                    PathBuf::from("/sys/fs/cgroup/unified dir")
                ),
            ]
        );
        let cgroups = [
            (CgroupVersion::V1, "/docker/abc/job".to_string()),
            (CgroupVersion::V2, "/a/b".to_string()),
        ];
        let dirs = cgroup_dirs(&cgroups, &parse_mountinfo(MOUNTINFO));
        assert_eq!(
            dirs,
            [
                (
                    CgroupVersion::V1,
                    vec![
                        PathBuf::from("/sys/fs/cgroup/memory/job"),
                        PathBuf::from("/sys/fs/cgroup/memory"),
                    ]
                ),
                (
                    CgroupVersion::V2,
                    vec![
                        PathBuf::from("/sys/fs/cgroup/unified dir/a/b"),
                        PathBuf::from("/sys/fs/cgroup/unified dir/a"),
                        PathBuf::from("/sys/fs/cgroup/unified dir"),
                    ]
                ),
            ]
        );
        // A path outside the mount's root falls back to the mount point.
        let outside = [(CgroupVersion::V1, "/elsewhere".to_string())];
        assert_eq!(
            cgroup_dirs(&outside, &parse_mountinfo(MOUNTINFO)),
            [(
                CgroupVersion::V1,
                vec![PathBuf::from("/sys/fs/cgroup/memory")]
            )]
        );
    }

    #[test]
    fn cgroup_usage_leaves_out_the_inactive_file_cache() {
        let stat = "anon 1000\nfile 5000\nactive_file 1000\ninactive_file 3000\n";
        assert_eq!(
            parse_cgroup_memory(CgroupVersion::V2, "8589934592\n", "6000\n", Some(stat)),
            Some((8 << 30, 3000))
        );
        assert_eq!(
            parse_cgroup_memory(CgroupVersion::V2, "max\n", "6000\n", Some(stat)),
            None
        );
        assert_eq!(
            parse_cgroup_memory(CgroupVersion::V2, "4096", "1000", None),
            Some((4096, 1000))
        );
        // The cache may exceed the usage in a racing read: no underflow.
        assert_eq!(
            parse_cgroup_memory(CgroupVersion::V2, "4096", "10", Some("inactive_file 99")),
            Some((4096, 0))
        );
        let v1_stat = "cache 10\ninactive_file 5\ntotal_inactive_file 400\n";
        assert_eq!(
            parse_cgroup_memory(CgroupVersion::V1, "2147483648", "1000", Some(v1_stat)),
            Some((2 << 30, 600))
        );
        assert_eq!(
            parse_cgroup_memory(CgroupVersion::V1, "9223372036854771712", "1000", None),
            None
        );
    }

    #[test]
    fn the_tightest_cgroup_of_the_chain_is_found_in_the_files() {
        let root = std::env::temp_dir().join(format!("fff-util-cgroup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let job = root.join("v2/slice/job");
        std::fs::create_dir_all(&job).unwrap();
        std::fs::create_dir_all(root.join("v1/job")).unwrap();
        let write = |path: &Path, text: &str| std::fs::write(path, text).unwrap();
        // The job itself is unlimited; its parent allows 4 GiB with 1 GiB in use (plus 512 MiB
        // of reclaimable cache); the root cgroup has no memory.max file at all.
        write(&job.join("memory.max"), "max\n");
        write(&job.join("memory.current"), "1000\n");
        let slice = root.join("v2/slice");
        write(&slice.join("memory.max"), &format!("{}\n", 4u64 << 30));
        write(&slice.join("memory.current"), &format!("{}\n", 3u64 << 29));
        write(
            &slice.join("memory.stat"),
            &format!("inactive_file {}\n", 1u64 << 29),
        );
        // v1: 3 GiB, 2.5 GiB of it in use, the tighter of the two hierarchies.
        let v1 = root.join("v1/job");
        write(
            &v1.join("memory.limit_in_bytes"),
            &format!("{}\n", 3u64 << 30),
        );
        write(
            &v1.join("memory.usage_in_bytes"),
            &format!("{}\n", 5u64 << 29),
        );
        let mountinfo = format!(
            "40 31 0:38 / {} rw - cgroup2 cgroup2 rw\n35 31 0:32 / {} rw - cgroup cgroup rw,memory\n",
            root.join("v2").display(),
            root.join("v1").display()
        );
        let found = cgroup_limits_from("4:memory:/job\n0::/slice/job\n", &mountinfo);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].bytes, 1 << 29);
        assert!(
            found[0]
                .source
                .starts_with("cgroup v1 memory.limit_in_bytes of ")
                && found[0]
                    .source
                    .ends_with("/v1/job (3.0 GiB, 2.5 GiB of it in use)"),
            "{}",
            found[0].source
        );
        assert_eq!(found[1].bytes, 3 << 30);
        assert!(
            found[1].source.starts_with("cgroup v2 memory.max of ")
                && found[1]
                    .source
                    .ends_with("/v2/slice (4.0 GiB, 1.0 GiB of it in use)"),
            "{}",
            found[1].source
        );
        assert_eq!(tightest(found).unwrap().bytes, 1 << 29);
        // Without a memory mount, no cgroup bound.
        assert!(cgroup_limits_from("0::/slice/job\n", "").is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_tightest_limit_wins_and_names_its_source() {
        let limit = |bytes, source: &str| Limit {
            bytes,
            source: source.into(),
            counts_reserved: false,
        };
        let all = vec![
            limit(20 << 30, "MemAvailable"),
            limit(5 << 30, "cgroup"),
            limit(7 << 30, "RLIMIT_AS"),
        ];
        let t = tightest(all).unwrap();
        assert_eq!(t.to_string(), "5.0 GiB available under cgroup");
        assert_eq!(tightest(Vec::new()), None);
        assert_eq!(bytes(300 << 20), "300 MiB");
        assert_eq!(bytes(1536 << 20), "1.5 GiB");
        assert_eq!(bytes(12), "12 B");
    }

    #[test]
    fn this_process_has_a_bound_on_linux() {
        if cfg!(target_os = "linux") {
            let all = limits();
            assert!(!all.is_empty());
            let a = available().unwrap();
            assert!(all.iter().all(|l| l.bytes >= a.bytes), "{all:?}");
            // Only the resource limits count reservations.
            for l in &all {
                assert_eq!(l.counts_reserved, l.source.contains("RLIMIT"), "{l:?}");
            }
            // The figure moves with the machine: only its presence is checked.
            assert!(available_bytes().is_some());
        }
    }
}
