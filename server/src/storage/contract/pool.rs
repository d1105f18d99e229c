//! A file-backed test pool of our own, destroyed on drop even when the test panics.

use super::*;

/// A file-backed pool of our own, destroyed on drop.
pub(super) struct TestPool {
    pub(super) name: String,
    dir: Option<TempDir>,
}

impl TestPool {
    /// `None` (after printing why) when ZFS is not usable here; panics instead under `CI`.
    pub(super) fn create() -> Option<TestPool> {
        if let Err(reason) = zfs_usable() {
            if std::env::var_os("CI").is_some() {
                panic!("ZFS tests cannot run and CI is set: {reason}");
            }
            eprintln!("skipping ZFS storage test: {reason}");
            return None;
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "wvst{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::Builder::new()
            .prefix("walvault-zfs-")
            .tempdir()
            .unwrap();
        let vdev = dir.path().join("vdev");
        File::create(&vdev).unwrap().set_len(256 * MIB).unwrap();
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        let _lock = zfs_lock::lock().unwrap();
        crate::process::run(
            Command::new("zpool")
                .arg("create")
                .arg("-m")
                .arg(&mnt)
                .arg(&name)
                .arg(&vdev),
        )
        .unwrap();
        Some(TestPool {
            name,
            dir: Some(dir),
        })
    }
}

pub(super) fn zfs_usable() -> Result<(), String> {
    match Command::new("zpool").args(["list", "-H", "-o", "name"]).output() {
        Err(e) => Err(format!("`zpool` cannot run ({e}); install zfs-fuse or OpenZFS")),
        Ok(out) if !out.status.success() => Err(format!(
            "`zpool list` failed ({}); is the zfs-fuse daemon running (start it with `zfs-fuse`)? {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(_) => Ok(()),
    }
}

impl Drop for TestPool {
    fn drop(&mut self) {
        // zfs-fuse refuses `zpool destroy` while datasets exist, and says "busy" for a moment
        // after their last use: destroy the datasets first, retrying, then the pool.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = Command::new("zfs")
                .args([
                    "list",
                    "-H",
                    "-o",
                    "name",
                    "-d",
                    "1",
                    "-t",
                    "filesystem",
                    &self.name,
                ])
                .output();
            let children: Vec<String> = match &out {
                Ok(o) => String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| *l != self.name)
                    .map(str::to_owned)
                    .collect(),
                Err(_) => Vec::new(),
            };
            if children.is_empty() || Instant::now() > deadline {
                break;
            }
            for child in children {
                // -R: clones elsewhere in the pool go too.
                let _ = locked_output(Command::new("zfs").args(["destroy", "-R", &child]));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut destroyed = false;
        while !destroyed {
            destroyed = locked_output(Command::new("zpool").args(["destroy", &self.name]))
                .is_ok_and(|o| o.status.success());
            if !destroyed && Instant::now() > deadline {
                let out = locked_output(Command::new("zpool").args(["destroy", "-f", &self.name]));
                destroyed = out.as_ref().is_ok_and(|o| o.status.success());
                if !destroyed {
                    // Keep the vdev: deleting it under a live pool would only make it worse.
                    let kept = self.dir.take().map(TempDir::keep);
                    eprintln!(
                        "could not destroy test pool {} (vdev kept in {kept:?}): {out:?}",
                        self.name
                    );
                }
                break;
            }
            if !destroyed {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}
