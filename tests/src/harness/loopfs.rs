//! A small ext4 file system on a loop device, mounted in the test directory: somewhere to run
//! out of space on purpose. Unmounted (lazily, if busy) when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{run, run_ok, Log, TestDir};

const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct LoopFs {
    image: PathBuf,
    mountpoint: PathBuf,
    log: Log,
}

impl LoopFs {
    /// `mkfs.ext4` on a `mib` MiB image under the test directory, mounted at `<name>/`.
    pub fn mount(td: &TestDir, name: &str, mib: u64) -> Self {
        let image = td.join(format!("{name}.img"));
        let mountpoint = td.mkdir(name);
        let log = td.log().clone();
        let f = std::fs::File::create(&image).expect("create the image");
        f.set_len(mib << 20).expect("size the image");
        drop(f);
        run_ok(
            &log,
            Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image),
            TIMEOUT,
        );
        run_ok(
            &log,
            Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(&mountpoint),
            TIMEOUT,
        );
        Self {
            image,
            mountpoint,
            log,
        }
    }

    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Writes `<mountpoint>/filler` until the file system is full; returns its size.
    pub fn fill(&self) -> u64 {
        use std::io::Write;
        let path = self.mountpoint.join("filler");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("open the filler");
        let chunk = vec![0x77u8; 64 << 10];
        let mut written = 0u64;
        while f.write_all(&chunk).is_ok() {
            written += chunk.len() as u64;
        }
        // The last bytes that did fit, too.
        for _ in 0..64 {
            if f.write_all(&[0u8; 512]).is_err() {
                break;
            }
            written += 512;
        }
        let _ = f.sync_all();
        self.log.line(&format!(
            "filled {} with {written} bytes",
            self.mountpoint.display()
        ));
        written
    }

    /// Removes what [`LoopFs::fill`] wrote.
    pub fn free(&self) {
        let _ = std::fs::remove_file(self.mountpoint.join("filler"));
        self.log.line(&format!(
            "freed the filler of {}",
            self.mountpoint.display()
        ));
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let r = run(
            &self.log,
            Command::new("umount").arg(&self.mountpoint),
            TIMEOUT,
        );
        if !r.success() {
            let _ = run(
                &self.log,
                Command::new("umount").arg("-l").arg(&self.mountpoint),
                TIMEOUT,
            );
        }
        let _ = std::fs::remove_file(&self.image);
    }
}
