//! A small tmpfs for tests that fill a disk (shared by the root e2e tests and
//! the router's directory tests). Mounting needs privileges (CI runs as
//! root). Where it fails, [`Tmpfs::mount_for`] fails the test, unless
//! [`SKIP_VARIABLE`] is set: then the test says loudly that it skipped and
//! why, and returns.

use std::path::Path;
use std::process::Command;

/// A tmpfs mounted on a temporary directory, unmounted on drop (also when
/// the test panics, so no mount outlives the test).
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

/// Set to `1` to let tests that need a tmpfs skip where mounting one fails.
pub const SKIP_VARIABLE: &str = "HAYLOFT_ALLOW_TMPFS_SKIP";

impl Tmpfs {
    /// [`Tmpfs::mount`] for the test `test`: `None` (after printing that it
    /// skipped) only when mounting fails and [`SKIP_VARIABLE`] is `1`; a
    /// panic naming the variable when mounting fails without it.
    pub fn mount_for(size: &str, test: &str) -> Option<Self> {
        match Self::mount(size) {
            Ok(tmpfs) => Some(tmpfs),
            Err(why) if std::env::var(SKIP_VARIABLE).is_ok_and(|v| v == "1") => {
                eprintln!("SKIPPED {test}: {why} ({SKIP_VARIABLE}=1)");
                None
            }
            Err(why) => panic!(
                "{test} needs a tmpfs: {why}. Run as root, or set {SKIP_VARIABLE}=1 to skip it"
            ),
        }
    }

    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it), or says why not.
    pub fn mount(size: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount -t tmpfs failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(Self { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Something still holds a file open: detach it rather than leave
            // the mount behind (TempDir then removes the empty directory).
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}
