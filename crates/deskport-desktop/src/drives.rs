//! The client's drives in a session: each drive a client shares appears as a folder,
//! `~/thinclient_drives/NAME` (where xrdp puts them), through FUSE.
//!
//! This module is the session's side and knows nothing of RDP: the folder's file system
//! ([`Mount`]) turns what the session's programs do into [`Op`]s on drive-relative paths
//! (`dir/file`, `""` the drive's root) and waits for their [`Done`] or an errno. Whoever
//! carries the drive (the RDP server's `rdpdr` channel) answers every one of them, with EIO
//! if the client does not answer in time, so a client that stalls cannot hang the session's
//! programs.
//!
//! The mount point is made and opened without following symbolic links (the account owns
//! its home, and the server mounts as root): the mount goes onto the directory opened, not
//! onto whatever the path names by the time `mount(2)` runs, and is undone only if it is
//! still the mount on top of that directory.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request as FuseRequest,
};

/// The folder the drives go into, in the account's home.
pub const DRIVES_DIR: &str = "thinclient_drives";

/// How long the kernel may keep what a lookup or a stat said.
const TTL: Duration = Duration::from_secs(1);

/// Whose home the drives go into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrivesHome {
    pub home: PathBuf,
    pub uid: u32,
    pub gid: u32,
}

/// A file's or a directory's attributes, as the drive reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub dir: bool,
    pub size: u64,
    pub readonly: bool,
    pub modified: SystemTime,
    pub accessed: SystemTime,
    pub changed: SystemTime,
    pub created: SystemTime,
}

/// How a file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Open {
    /// An existing file, for reading (`write` false) or reading and writing.
    Existing { write: bool, truncate: bool },
    /// A new file, for reading and writing: `exclusive` fails if it exists (`O_EXCL`), else
    /// an existing one is opened (and emptied if `truncate`).
    Create { exclusive: bool, truncate: bool },
}

/// What the session asks of a drive. Paths are drive-relative, `/`-separated, without a
/// leading `/` (`""` is the root); `file` is what [`Done::Opened`] gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Stat(String),
    List(String),
    Open {
        path: String,
        how: Open,
    },
    Read {
        file: u32,
        offset: u64,
        len: u32,
    },
    Write {
        file: u32,
        offset: u64,
        data: Vec<u8>,
    },
    Close(u32),
    /// Truncates or extends: through the open `file`, else the file at `path`.
    SetSize {
        path: String,
        file: Option<u32>,
        size: u64,
    },
    Mkdir(String),
    Delete {
        path: String,
        dir: bool,
    },
    Rename {
        from: String,
        to: String,
        replace: bool,
    },
    /// The drive's size and free space.
    Space,
}

/// What an [`Op`] gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    Attr(Attr),
    Entries(Vec<(String, Attr)>),
    Opened {
        file: u32,
        attr: Attr,
    },
    Data(Vec<u8>),
    Written(u32),
    /// Bytes in all, free for the user, and the allocation unit.
    Space {
        total: u64,
        free: u64,
        unit: u32,
    },
    Ok,
}

/// An errno (`libc::ENOENT` …).
pub type Errno32 = i32;

/// One [`Op`] and where its answer goes (exactly one; a dropped sender is `EIO`).
#[derive(Debug)]
pub struct Request {
    pub op: Op,
    pub reply: SyncSender<Result<Done, Errno32>>,
}

/// A drive's folder, mounted; unmounted (lazily: programs still in it get errors) when
/// dropped.
pub struct Mount {
    /// The mount point, opened: as root the mount was made, and is undone, through it.
    point: OwnedFd,
    /// The folder of drives, opened: the mount point is removed from it afterwards.
    parent: OwnedFd,
    name: String,
    path: PathBuf,
    /// As root: the mount's id (`/proc/self/mountinfo`), to unmount only that mount.
    mount_id: Option<u64>,
    session: Option<fuser::BackgroundSession>,
}

impl std::fmt::Debug for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mount").field("path", &self.path).finish()
    }
}

impl Mount {
    /// Mounts drive `name` (made safe for a file name: see [`folder_name`]; with a suffix
    /// if something is mounted there already) at `~/thinclient_drives/NAME` of `owner`; its
    /// operations go to `ops`. `timeout` is the carrier's per-request timeout: the file
    /// system waits far longer (the carrier answers every operation, EIO at worst).
    ///
    /// As root, the mount is made with `mount(2)` through the opened directory
    /// (`/proc/self/fd/N`: the kernel takes the directory opened, whatever the path names
    /// by then) and fuser serves the `/dev/fuse` descriptor; fuser's own mounting resolves
    /// the path again. Not as root (the session is this user's own), fuser mounts by path
    /// (with fusermount3).
    pub fn new(
        owner: &DrivesHome,
        name: &str,
        ops: tokio::sync::mpsc::UnboundedSender<Request>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let (parent, point, name) = mount_point(owner, &folder_name(name))?;
        let path = owner.home.join(DRIVES_DIR).join(&name);
        let fs = DriveFs {
            ops,
            wait: (timeout * 20).max(Duration::from_secs(600)),
            owner: (owner.uid, owner.gid),
            inodes: Mutex::new(Inodes::default()),
            listings: Mutex::new(Listings::default()),
        };
        let root = nix::unistd::geteuid().is_root();
        let mut config = fuser::Config::default();
        // Mounted by root for the account: the kernel checks the account's permissions
        // (default_permissions) on the 0700/0600 modes the drive's files get.
        config.acl = if root && owner.uid != 0 {
            fuser::SessionACL::All
        } else {
            fuser::SessionACL::Owner
        };
        config.n_threads = Some(4);
        let through = format!("/proc/self/fd/{}", point.as_raw_fd());
        let (session, mount_id) = if root {
            let device = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/fuse")
                .context("open /dev/fuse")?;
            let options = format!(
                "fd={},rootmode=40000,user_id={},group_id={},default_permissions{}",
                device.as_raw_fd(),
                nix::unistd::geteuid(),
                nix::unistd::getegid(),
                if config.acl == fuser::SessionACL::All {
                    ",allow_other"
                } else {
                    ""
                }
            );
            nix::mount::mount(
                Some(format!("deskport:{name}").as_str()),
                through.as_str(),
                Some("fuse"),
                nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
                Some(options.as_str()),
            )
            .with_context(|| format!("mount the drive at {}", path.display()))?;
            let mount_id = std::fs::read_link(&through)
                .ok()
                .and_then(|now| top_mount_at(&now));
            let session = fuser::Session::from_fd(fs, OwnedFd::from(device), config.acl, config)
                .and_then(fuser::Session::spawn);
            match session {
                Ok(session) => (session, mount_id),
                Err(e) => {
                    let _ = nix::mount::umount2(through.as_str(), nix::mount::MntFlags::MNT_DETACH);
                    return Err(e).context("serve the drive's file system");
                }
            }
        } else {
            config.mount_options = vec![
                MountOption::FSName(format!("deskport:{name}")),
                MountOption::DefaultPermissions,
                MountOption::NoSuid,
                MountOption::NoDev,
            ];
            let session = fuser::spawn_mount(fs, &path, &config)
                .with_context(|| format!("mount the drive at {}", path.display()))?;
            (session, None)
        };
        Ok(Self {
            point,
            parent,
            path,
            name,
            mount_id,
            session: Some(session),
        })
    }

    /// Where the drive is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(id) = self.mount_id {
            // Only if the mount on top of the directory is still this one (the account may
            // have moved things around meanwhile); a busy mount goes when its last user lets
            // go (MNT_DETACH).
            let through = format!("/proc/self/fd/{}", self.point.as_raw_fd());
            let now = std::fs::read_link(&through).ok();
            if now.as_deref().and_then(top_mount_at) == Some(id) {
                if let Err(e) =
                    nix::mount::umount2(through.as_str(), nix::mount::MntFlags::MNT_DETACH)
                {
                    tracing::warn!(error = %e, path = %self.path.display(), "Drive not unmounted");
                }
            } else {
                tracing::warn!(path = %self.path.display(), "Drive not unmounted: another mount is on top of it now");
            }
        }
        // Not as root, fuser unmounts (by path: the session is this user's own).
        drop(self.session.take());
        let _ = std::fs::remove_dir(under(&self.parent, &self.name));
    }
}

/// `\ooo` escapes of `/proc/self/mountinfo` undone.
fn unescape(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt as _;
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).and_then(|d| {
            let s = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(s, 8).ok()
        });
        match (b[i], octal) {
            (b'\\', Some(v)) => {
                out.push(v);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// The id of the topmost mount whose mount point is `path`, if any.
fn top_mount_at(path: &Path) -> Option<u64> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines()
        .filter_map(|l| {
            let mut fields = l.split(' ');
            let id = fields.next()?.parse::<u64>().ok()?;
            (unescape(fields.nth(3)?) == path).then_some(id)
        })
        .next_back()
}

/// `name` as a folder name: letters, digits, `-`, `_`, `.` and spaces kept, anything else
/// (`/` first of all) `_`; no leading dot; at most 64 bytes; `drive` if nothing is left.
pub fn folder_name(name: &str) -> String {
    let mut s: String = name
        .trim()
        .chars()
        .scan(0, |bytes, c| {
            *bytes += c.len_utf8();
            (*bytes <= 64).then_some(c)
        })
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | ' ') {
                c
            } else {
                '_'
            }
        })
        .collect();
    while s.starts_with('.') {
        s.replace_range(0..1, "_");
    }
    if s.trim().is_empty() {
        s = "drive".to_owned();
    }
    s
}

/// Makes (0700, the owner's) and opens `home/thinclient_drives` and in it `name` (or
/// `name_2` … if something is mounted at `name`: never mount over a mount), refusing
/// symbolic links and directories someone else owns; a dead mount (a server that was killed)
/// is detached first. Each step goes through the directory opened before it
/// (`/proc/self/fd/N/NAME`), so no path is looked up twice. The folder of drives, the mount
/// point and the name used.
fn mount_point(owner: &DrivesHome, name: &str) -> anyhow::Result<(OwnedFd, OwnedFd, String)> {
    let home = open_dir(&owner.home, false)
        .with_context(|| format!("open the home directory {}", owner.home.display()))?;
    let parent = own_dir(&home, DRIVES_DIR, owner)
        .with_context(|| format!("make {}", owner.home.join(DRIVES_DIR).display()))?;
    let real = std::fs::read_link(format!("/proc/self/fd/{}", parent.as_raw_fd()))
        .context("locate the folder of drives")?;
    for n in 1..=16 {
        let candidate = if n == 1 {
            name.to_owned()
        } else {
            format!("{name}_{n}")
        };
        if top_mount_at(&real.join(&candidate)).is_some() {
            // A dead FUSE mount (a killed server's) is detached; a live one (another
            // session's) is left alone.
            if !dead_mount(under(&parent, &candidate)) {
                continue;
            }
            let _ = nix::mount::umount2(
                &under(&parent, &candidate),
                nix::mount::MntFlags::MNT_DETACH | nix::mount::MntFlags::UMOUNT_NOFOLLOW,
            );
        }
        let point = own_dir(&parent, &candidate, owner).with_context(|| {
            format!(
                "make {}",
                owner.home.join(DRIVES_DIR).join(&candidate).display()
            )
        })?;
        return Ok((parent, point, candidate));
    }
    anyhow::bail!("{} and 15 more names are taken by other mounts", name)
}

/// Whether the mount at `path` is a FUSE mount whose server is gone: it says ENOTCONN at
/// once. Asked on a thread of its own and given a second: a live mount's server (another
/// session's client) may take its time, and the caller is a session's loop.
fn dead_mount(path: PathBuf) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    let asked = std::thread::Builder::new()
        .name("deskport-drive-probe".to_owned())
        .spawn(move || {
            let _ = tx.send(
                std::fs::symlink_metadata(&path)
                    .err()
                    .and_then(|e| e.raw_os_error()),
            );
        });
    asked.is_ok()
        && matches!(
            rx.recv_timeout(Duration::from_secs(1)),
            Ok(Some(libc::ENOTCONN))
        )
}

/// `name` in the directory `dir` is open on, as a path.
fn under(dir: &OwnedFd, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()))
}

/// Opens the directory at `path` (`O_PATH`), its last component not followed if `nofollow`.
fn open_dir(path: &Path, nofollow: bool) -> std::io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
    if nofollow {
        flags |= libc::O_NOFOLLOW;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)?;
    Ok(OwnedFd::from(file))
}

/// `name` in `parent`: made 0700 if missing, opened without following a link, and given to
/// the owner through that descriptor (not by path: the account could have put a link to
/// another file in its place meanwhile); it must be a directory of the owner's.
fn own_dir(parent: &OwnedFd, name: &str, owner: &DrivesHome) -> anyhow::Result<OwnedFd> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
    let path = under(parent, name);
    let created = match std::fs::DirBuilder::new().mode(0o700).create(&path) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(e).context("mkdir"),
    };
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .context("open it (a symbolic link is refused)")?;
    let uid = dir.metadata()?.uid();
    if created && uid == nix::unistd::geteuid().as_raw() && uid != owner.uid {
        std::os::unix::fs::fchown(&dir, Some(owner.uid), Some(owner.gid))
            .context("give it to the account")?;
    }
    let uid = dir.metadata()?.uid();
    anyhow::ensure!(
        uid == owner.uid,
        "{name} belongs to uid {uid}, not to the account (uid {})",
        owner.uid
    );
    Ok(OwnedFd::from(dir))
}

/// Inode numbers and the drive-relative paths they stand for (1 is the root, `""`), each
/// kept while the kernel remembers it (its lookups, until `forget`).
#[derive(Debug)]
struct Inodes {
    paths: HashMap<u64, String>,
    numbers: HashMap<String, u64>,
    lookups: HashMap<u64, u64>,
    next: u64,
}

impl Default for Inodes {
    fn default() -> Self {
        let mut inodes = Self {
            paths: HashMap::new(),
            numbers: HashMap::new(),
            lookups: HashMap::new(),
            next: 2,
        };
        inodes.paths.insert(1, String::new());
        inodes.numbers.insert(String::new(), 1);
        inodes
    }
}

impl Inodes {
    /// The number of `path`, counted as one more lookup the kernel remembers.
    fn looked_up(&mut self, path: &str) -> u64 {
        let n = match self.numbers.get(path) {
            Some(&n) => n,
            None => {
                let n = self.next;
                self.next += 1;
                self.paths.insert(n, path.to_owned());
                self.numbers.insert(path.to_owned(), n);
                n
            }
        };
        *self.lookups.entry(n).or_default() += 1;
        n
    }

    /// The number of `path` for a directory listing, not kept: its own if the kernel knows
    /// it, else one derived from the path (never 1, never one `looked_up` gives).
    fn peek(&self, path: &str) -> u64 {
        use std::hash::{Hash as _, Hasher as _};
        if let Some(&n) = self.numbers.get(path) {
            return n;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        path.hash(&mut h);
        h.finish() | (1 << 63)
    }

    /// The kernel forgets `n` lookups of `ino`.
    fn forget(&mut self, ino: u64, n: u64) {
        let Some(count) = self.lookups.get_mut(&ino) else {
            return;
        };
        *count = count.saturating_sub(n);
        if *count == 0 && ino != 1 {
            self.lookups.remove(&ino);
            if let Some(path) = self.paths.remove(&ino) {
                self.numbers.remove(&path);
            }
        }
    }

    /// `path` (and whatever was under it) is gone: its numbers stand for nothing any more
    /// (a new file there gets a new one).
    fn removed(&mut self, path: &str) {
        let prefix = format!("{path}/");
        let gone: Vec<(String, u64)> = self
            .numbers
            .iter()
            .filter(|(p, _)| p.as_str() == path || p.starts_with(&prefix))
            .map(|(p, n)| (p.clone(), *n))
            .collect();
        for (p, n) in gone {
            self.numbers.remove(&p);
            self.paths.remove(&n);
        }
    }

    /// A rename: what was at `to` is gone; `from` and everything under it take their new
    /// paths (same numbers).
    fn moved(&mut self, from: &str, to: &str) {
        self.removed(to);
        let prefix = format!("{from}/");
        let moving: Vec<(String, u64)> = self
            .numbers
            .iter()
            .filter(|(p, _)| p.as_str() == from || p.starts_with(&prefix))
            .map(|(p, n)| (p.clone(), *n))
            .collect();
        for (path, n) in moving {
            self.numbers.remove(&path);
            let new = format!("{to}{}", &path[from.len()..]);
            self.paths.insert(n, new.clone());
            self.numbers.insert(new, n);
        }
    }
}

/// Directory listings being read (`opendir` to `releasedir`): name, number, kind.
#[derive(Debug, Default)]
struct Listings {
    open: HashMap<u64, Vec<(String, u64, FileType)>>,
    next: u64,
}

struct DriveFs {
    ops: tokio::sync::mpsc::UnboundedSender<Request>,
    /// The last resort: how long an operation may take in all before it is EIO here (the
    /// carrier times out each of its requests much sooner).
    wait: Duration,
    owner: (u32, u32),
    inodes: Mutex<Inodes>,
    listings: Mutex<Listings>,
}

fn join(parent: &str, name: &OsStr) -> Result<String, Errno> {
    let name = name.to_str().ok_or(Errno::EINVAL)?;
    if name.is_empty() || name.contains('\\') || name.contains(':') {
        // Names a Windows drive cannot hold (or that would be read as a path there).
        return Err(Errno::EINVAL);
    }
    Ok(if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}/{name}")
    })
}

impl DriveFs {
    /// Asks the drive and waits for the answer (the carrier answers every operation, EIO
    /// if the client does not answer a request in time; `wait` is the last resort).
    fn ask(&self, op: Op) -> Result<Done, Errno> {
        let (reply, answer) = sync_channel(1);
        self.ops
            .send(Request { op, reply })
            .map_err(|_| Errno::EIO)?;
        match answer.recv_timeout(self.wait) {
            Ok(Ok(done)) => Ok(done),
            Ok(Err(errno)) => Err(Errno::from_i32(errno)),
            Err(_) => Err(Errno::EIO),
        }
    }

    fn path(&self, ino: INodeNo) -> Result<String, Errno> {
        let inodes = self.inodes.lock().unwrap_or_else(|e| e.into_inner());
        inodes.paths.get(&ino.0).cloned().ok_or(Errno::ENOENT)
    }

    fn file_attr(&self, ino: u64, attr: &Attr) -> FileAttr {
        let (kind, perm) = match (attr.dir, attr.readonly) {
            (true, false) => (FileType::Directory, 0o700),
            (true, true) => (FileType::Directory, 0o500),
            (false, false) => (FileType::RegularFile, 0o600),
            (false, true) => (FileType::RegularFile, 0o400),
        };
        FileAttr {
            ino: INodeNo(ino),
            size: attr.size,
            blocks: attr.size.div_ceil(512),
            atime: attr.accessed,
            mtime: attr.modified,
            ctime: attr.changed,
            crtime: attr.created,
            kind,
            perm,
            nlink: if attr.dir { 2 } else { 1 },
            uid: self.owner.0,
            gid: self.owner.1,
            rdev: 0,
            blksize: 64 * 1024,
            flags: 0,
        }
    }

    fn entry(&self, path: &str, attr: &Attr, reply: ReplyEntry) {
        let ino = self
            .inodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .looked_up(path);
        reply.entry(&TTL, &self.file_attr(ino, attr), Generation(0));
    }

    fn stat(&self, path: &str) -> Result<Attr, Errno> {
        match self.ask(Op::Stat(path.to_owned()))? {
            Done::Attr(attr) => Ok(attr),
            _ => Err(Errno::EIO),
        }
    }

    fn delete(&self, path: String, dir: bool, reply: ReplyEmpty) {
        match self.ask(Op::Delete {
            path: path.clone(),
            dir,
        }) {
            Ok(_) => {
                self.inodes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .removed(&path);
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn simple(&self, op: Op, reply: ReplyEmpty) {
        match self.ask(op) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

impl Filesystem for DriveFs {
    fn lookup(&self, _req: &FuseRequest, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let path = match self.path(parent).and_then(|p| join(&p, name)) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match self.stat(&path) {
            Ok(attr) => self.entry(&path, &attr, reply),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &FuseRequest, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.path(ino).and_then(|p| self.stat(&p)) {
            Ok(attr) => reply.attr(&TTL, &self.file_attr(ino.0, &attr)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &FuseRequest,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // Only the size can change: owners and modes are the account's and follow the
        // drive's read-only flag; times are the client's to keep.
        let path = match self.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        if let Some(size) = size {
            let file = fh.and_then(|fh| u32::try_from(fh.0).ok());
            if let Err(e) = self.ask(Op::SetSize {
                path: path.clone(),
                file,
                size,
            }) {
                return reply.error(e);
            }
        }
        match self.stat(&path) {
            Ok(attr) => reply.attr(&TTL, &self.file_attr(ino.0, &attr)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &FuseRequest,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let path = match self.path(parent).and_then(|p| join(&p, name)) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match self.ask(Op::Mkdir(path.clone())) {
            Ok(Done::Attr(attr)) => self.entry(&path, &attr, reply),
            Ok(_) => reply.error(Errno::EIO),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &FuseRequest, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.path(parent).and_then(|p| join(&p, name)) {
            Ok(path) => self.delete(path, false, reply),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &FuseRequest, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.path(parent).and_then(|p| join(&p, name)) {
            Ok(path) => self.delete(path, true, reply),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &FuseRequest,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            return reply.error(Errno::EINVAL);
        }
        let paths = self
            .path(parent)
            .and_then(|p| join(&p, name))
            .and_then(|from| Ok((from, join(&self.path(newparent)?, newname)?)));
        let (from, to) = match paths {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let replace = !flags.contains(RenameFlags::RENAME_NOREPLACE);
        match self.ask(Op::Rename {
            from: from.clone(),
            to: to.clone(),
            replace,
        }) {
            Ok(_) => {
                self.inodes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .moved(&from, &to);
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &FuseRequest, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let path = match self.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let write = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        let truncate = flags.0 & libc::O_TRUNC != 0;
        match self.ask(Op::Open {
            path,
            how: Open::Existing { write, truncate },
        }) {
            Ok(Done::Opened { file, .. }) => {
                reply.opened(FileHandle(u64::from(file)), FopenFlags::empty())
            }
            Ok(_) => reply.error(Errno::EIO),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &FuseRequest,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let path = match self.path(parent).and_then(|p| join(&p, name)) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let how = Open::Create {
            exclusive: flags & libc::O_EXCL != 0,
            truncate: flags & libc::O_TRUNC != 0,
        };
        match self.ask(Op::Open {
            path: path.clone(),
            how,
        }) {
            Ok(Done::Opened { file, attr }) => {
                let ino = self
                    .inodes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .looked_up(&path);
                reply.created(
                    &TTL,
                    &self.file_attr(ino, &attr),
                    Generation(0),
                    FileHandle(u64::from(file)),
                    FopenFlags::empty(),
                );
            }
            Ok(_) => reply.error(Errno::EIO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &FuseRequest,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let Ok(file) = u32::try_from(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        match self.ask(Op::Read {
            file,
            offset,
            len: size,
        }) {
            Ok(Done::Data(data)) => reply.data(&data),
            Ok(_) => reply.error(Errno::EIO),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &FuseRequest,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let Ok(file) = u32::try_from(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        match self.ask(Op::Write {
            file,
            offset,
            data: data.to_vec(),
        }) {
            Ok(Done::Written(n)) => reply.written(n),
            Ok(_) => reply.error(Errno::EIO),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &FuseRequest,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &FuseRequest,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &FuseRequest,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        match u32::try_from(fh.0) {
            Ok(file) => self.simple(Op::Close(file), reply),
            Err(_) => reply.error(Errno::EBADF),
        }
    }

    fn opendir(&self, _req: &FuseRequest, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let path = match self.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match self.ask(Op::List(path.clone())) {
            Ok(Done::Entries(entries)) => {
                let listing: Vec<(String, u64, FileType)> = {
                    let inodes = self.inodes.lock().unwrap_or_else(|e| e.into_inner());
                    let dots = [
                        (".".to_owned(), ino.0, FileType::Directory),
                        ("..".to_owned(), 1, FileType::Directory),
                    ];
                    dots.into_iter()
                        .chain(entries.into_iter().filter_map(|(name, attr)| {
                            let child = join(&path, OsStr::new(&name)).ok()?;
                            let kind = if attr.dir {
                                FileType::Directory
                            } else {
                                FileType::RegularFile
                            };
                            Some((name, inodes.peek(&child), kind))
                        }))
                        .collect()
                };
                let mut listings = self.listings.lock().unwrap_or_else(|e| e.into_inner());
                listings.next += 1;
                let fh = listings.next;
                listings.open.insert(fh, listing);
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Ok(_) => reply.error(Errno::EIO),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &FuseRequest,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listings = self.listings.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entries) = listings.open.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, (name, ino, kind)) in entries.iter().enumerate().skip(start) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn forget(&self, _req: &FuseRequest, ino: INodeNo, nlookup: u64) {
        self.inodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .forget(ino.0, nlookup);
    }

    fn statfs(&self, _req: &FuseRequest, _ino: INodeNo, reply: fuser::ReplyStatfs) {
        match self.ask(Op::Space) {
            Ok(Done::Space { total, free, unit }) => {
                let unit = unit.clamp(512, 1 << 20);
                let (blocks, avail) = (total / u64::from(unit), free / u64::from(unit));
                reply.statfs(blocks, avail, avail, 0, 0, unit, 255, unit);
            }
            Ok(_) => reply.error(Errno::EIO),
            Err(e) => reply.error(e),
        }
    }

    // No extended attributes: ENOSYS tells the kernel not to ask again.
    fn getxattr(
        &self,
        _req: &FuseRequest,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &FuseRequest, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn releasedir(
        &self,
        _req: &FuseRequest,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.listings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .open
            .remove(&fh.0);
        reply.ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_names_are_safe() {
        assert_eq!(folder_name("share"), "share");
        assert_eq!(folder_name("../etc"), "_._etc");
        assert_eq!(folder_name("a/b"), "a_b");
        assert_eq!(folder_name(".hidden"), "_hidden");
        assert_eq!(folder_name(""), "drive");
        assert_eq!(folder_name("  "), "drive");
        assert_eq!(folder_name("C:"), "C_");
        assert_eq!(folder_name(&"x".repeat(100)).len(), 64);
        assert_eq!(folder_name(&"é".repeat(40)).len(), 64);
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/home/a\\040b/x"), PathBuf::from("/home/a b/x"));
        assert_eq!(unescape("/t\\134n\\011"), PathBuf::from("/t\\n\t"));
        assert_eq!(unescape("/plain\\"), PathBuf::from("/plain\\"));
        // The root is mounted on.
        assert!(top_mount_at(Path::new("/")).is_some());
        assert_eq!(top_mount_at(Path::new("/no/such/mount/point")), None);
    }

    #[test]
    fn renames_move_the_paths_below() {
        let mut inodes = Inodes::default();
        let a = inodes.looked_up("a");
        let ab = inodes.looked_up("a/b");
        let other = inodes.looked_up("ab");
        let replaced = inodes.looked_up("c");
        inodes.moved("a", "c");
        assert_eq!(inodes.paths[&a], "c");
        assert_eq!(inodes.paths[&ab], "c/b");
        assert_eq!(inodes.paths[&other], "ab");
        assert_eq!(inodes.looked_up("c/b"), ab);
        assert!(!inodes.paths.contains_key(&replaced));
        // Deleted: the number stands for nothing; a new file there gets another.
        inodes.removed("c");
        assert!(!inodes.paths.contains_key(&a) && !inodes.paths.contains_key(&ab));
        assert_ne!(inodes.looked_up("c"), a);
        // Forgotten as often as looked up: gone.
        inodes.forget(other, 1);
        assert!(!inodes.paths.contains_key(&other));
        assert_eq!(inodes.peek("ab"), inodes.peek("ab"));
        assert!(inodes.peek("ab") >= 1 << 63);
    }
}
