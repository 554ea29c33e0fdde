//! Open, unlink, keep using the file.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use crate::common;
use crate::common::fixture::Stack;
use crate::common::live::same;
use crate::common::posix::{self, errno};
use crate::common::{can_mount, sys};

use super::{describe, pair};

#[test]
fn open_unlink_then_use() {
    let name = common::test_name();
    if !can_mount() {
        return;
    }
    let stack = Stack::new(1);
    stack
        .lower(0)
        .file("f", b"lower f")
        .file("g", b"lower g")
        .file("h", b"lower h")
        .dir("dd");
    let (pair, _wd) = pair(name, &stack);
    same(&pair, "use after unlink", |root, st| {
        let mut obs = Vec::new();
        let read_all = |f: &mut File| -> String {
            let mut s = Vec::new();
            let r = f
                .seek(SeekFrom::Start(0))
                .and_then(|_| f.read_to_end(&mut s));
            match r {
                Ok(_) => String::from_utf8_lossy(&s).into_owned(),
                Err(e) => format!("ERROR {}", sys::errno_of(&e)),
            }
        };
        let fstat = |f: &File| {
            f.metadata()
                .map(|m| {
                    format!(
                        "size={} nlink={} mode={:o}",
                        m.len(),
                        m.nlink(),
                        m.mode() & 0o7777
                    )
                })
                .unwrap_or_else(|e| format!("ERROR {}", sys::errno_of(&e)))
        };
        // Lower file: a reader from before the copy-up, a writer, then unlink.
        let mut r = File::open(root.join("f")).unwrap();
        let mut w = OpenOptions::new()
            .read(true)
            .write(true)
            .open(root.join("f"))
            .unwrap();
        obs.push(format!(
            "unlink f: {:?}",
            errno(fs::remove_file(root.join("f")))
        ));
        obs.push(format!("f gone: {}", describe(&root.join("f"))));
        obs.push(format!("write via w: {:?}", errno(w.write_all(b"NEW"))));
        obs.push(format!("read via w: {}", read_all(&mut w)));
        obs.push(format!("fstat w: {}", fstat(&w)));
        obs.push(format!("read via r: {}", read_all(&mut r)));
        obs.push(format!("ftruncate w: {:?}", errno(w.set_len(2))));
        obs.push(format!(
            "fchmod w: {:?}",
            errno(w.set_permissions(fs::Permissions::from_mode(0o600)))
        ));
        obs.push(format!("fstat w: {}", fstat(&w)));
        obs.push(format!("fsync w: {:?}", posix::fsync(&w)));
        // Recreate the name while the old file is open.
        obs.push(format!(
            "recreate f: {:?}",
            errno(fs::write(root.join("f"), b"recreated"))
        ));
        obs.push(format!("read via w: {}", read_all(&mut w)));
        obs.push(format!(
            "read f: {:?}",
            fs::read(root.join("f"))
                .map(|d| String::from_utf8_lossy(&d).into_owned())
                .ok()
        ));
        drop((r, w));
        // Lower file opened read-only, then unlinked.
        let mut g = File::open(root.join("g")).unwrap();
        obs.push(format!(
            "unlink g: {:?}",
            errno(fs::remove_file(root.join("g")))
        ));
        obs.push(format!("read via g: {}", read_all(&mut g)));
        obs.push(format!("fstat g: {}", fstat(&g)));
        drop(g);
        // Renamed away while open for writing.
        let mut h = OpenOptions::new()
            .read(true)
            .write(true)
            .open(root.join("h"))
            .unwrap();
        obs.push(format!(
            "rename h: {:?}",
            errno(fs::rename(root.join("h"), root.join("h2")))
        ));
        obs.push(format!("write via h: {:?}", errno(h.write_all(b"H"))));
        obs.push(format!(
            "read h2: {:?}",
            fs::read(root.join("h2"))
                .map(|d| String::from_utf8_lossy(&d).into_owned())
                .ok()
        ));
        drop(h);
        // New file.
        let mut n = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(root.join("n"))
            .unwrap();
        obs.push(format!("write n: {:?}", errno(n.write_all(b"new file"))));
        obs.push(format!(
            "unlink n: {:?}",
            errno(fs::remove_file(root.join("n")))
        ));
        obs.push(format!("ftruncate n: {:?}", errno(n.set_len(3))));
        obs.push(format!("read via n: {}", read_all(&mut n)));
        obs.push(format!("fstat n: {}", fstat(&n)));
        drop(n);
        // Directory opened, then removed.
        let d = File::open(root.join("dd")).unwrap();
        obs.push(format!(
            "rmdir dd: {:?}",
            errno(fs::remove_dir(root.join("dd")))
        ));
        obs.push(format!(
            "fstat dd: {:?}",
            d.metadata().map(|m| m.is_dir()).ok()
        ));
        obs.push(format!("fsync dd: {:?}", posix::fsync(&d)));
        drop(d);
        obs.push(format!(
            "workdir/work after closing everything: {:?}",
            fs::read_dir(st.work.join("work")).map(|it| it.count()).ok()
        ));
        obs.push(format!("root now: {:?}", {
            let mut v: Vec<String> = fs::read_dir(root)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }));
        obs
    });
}
