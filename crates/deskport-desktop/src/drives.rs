//! The client's drives in a session: each drive a client shares appears as a folder,
//! `~/thinclient_drives/NAME` (where xrdp puts them), through FUSE.
//!
//! This module is the session's side and knows nothing of RDP: the folder's file system
//! ([`Mount`]) turns what the session's programs do into [`Op`]s on drive-relative paths
//! (`dir/file`, `""` the drive's root) and waits for their [`Done`] or an errno. Whoever
//! carries the drive (the RDP server's `rdpdr` channel) answers them; an answer that does not
//! come within the mount's timeout is `EIO`, so a client that stalls cannot hang the
//! session's programs.
//!
//! The mount point is made and opened without following symbolic links (the account owns
//! its home, and the server mounts as root): the mount goes onto the directory opened, not
//! onto whatever the path names by the time `mount(2)` runs.

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
}

/// What an [`Op`] gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    Attr(Attr),
    Entries(Vec<(String, Attr)>),
    Opened { file: u32, attr: Attr },
    Data(Vec<u8>),
    Written(u32),
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
    /// The mount point, opened (`O_PATH`): the mount was made, and is undone, through it.
    point: OwnedFd,
    /// The folder of drives, opened: the mount point is removed from it afterwards.
    parent: OwnedFd,
    name: String,
    path: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl std::fmt::Debug for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mount").field("path", &self.path).finish()
    }
}

impl Mount {
    /// Mounts drive `name` (made safe for a file name: see [`folder_name`]) at
    /// `~/thinclient_drives/NAME` of `owner`; its operations go to `ops`, and each must be
    /// answered within `timeout`.
    pub fn new(
        owner: &DrivesHome,
        name: &str,
        ops: tokio::sync::mpsc::UnboundedSender<Request>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let name = folder_name(name);
        let (parent, point) = mount_point(owner, &name)?;
        let fs = DriveFs {
            ops,
            timeout,
            owner: (owner.uid, owner.gid),
            inodes: Mutex::new(Inodes::default()),
            listings: Mutex::new(Listings::default()),
        };
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            MountOption::FSName(format!("deskport:{name}")),
            MountOption::Subtype("deskport".to_owned()),
            MountOption::DefaultPermissions,
            MountOption::NoSuid,
            MountOption::NoDev,
        ];
        // Mounted by root for the account: the kernel checks the account's permissions
        // (default_permissions) on the 0700/0600 modes the drive's files get.
        config.acl = if nix::unistd::geteuid().is_root() && owner.uid != 0 {
            fuser::SessionACL::All
        } else {
            fuser::SessionACL::Owner
        };
        config.n_threads = Some(4);
        let through = PathBuf::from(format!("/proc/self/fd/{}", point.as_raw_fd()));
        let session = fuser::spawn_mount(fs, &through, &config).with_context(|| {
            format!(
                "mount the drive at {}",
                owner.home.join(DRIVES_DIR).join(&name).display()
            )
        })?;
        Ok(Self {
            point,
            parent,
            path: owner.home.join(DRIVES_DIR).join(&name),
            name,
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
        // fuser unmounts through the descriptor; a mount still in use (a program's working
        // directory, an open file) is then detached: it goes once the last user lets go.
        drop(self.session.take());
        let through = format!("/proc/self/fd/{}", self.point.as_raw_fd());
        match nix::mount::umount2(through.as_str(), nix::mount::MntFlags::MNT_DETACH) {
            // EINVAL: not a mount point any more (fuser's unmount did it).
            Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
            Err(e) => {
                tracing::warn!(error = %e, path = %self.path.display(), "Drive not unmounted")
            }
        }
        let _ = std::fs::remove_dir(under(&self.parent, &self.name));
    }
}

/// `name` as a folder name: letters, digits, `-`, `_`, `.` and spaces kept, anything else
/// (`/` first of all) `_`; no leading dot; at most 64 characters; `drive` if nothing is left.
pub fn folder_name(name: &str) -> String {
    let mut s: String = name
        .trim()
        .chars()
        .take(64)
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

/// Makes (0700, the owner's) and opens `home/thinclient_drives` and its `name`, refusing
/// symbolic links and directories someone else owns; a dead mount left at `name` (a server
/// that was killed) is detached first. Each step goes through the directory opened before it
/// (`/proc/self/fd/N/NAME`), so no path is looked up twice.
fn mount_point(owner: &DrivesHome, name: &str) -> anyhow::Result<(OwnedFd, OwnedFd)> {
    let home = open_dir(&owner.home, false)
        .with_context(|| format!("open the home directory {}", owner.home.display()))?;
    let parent = own_dir(&home, DRIVES_DIR, owner)
        .with_context(|| format!("make {}", owner.home.join(DRIVES_DIR).display()))?;
    let point = match own_dir(&parent, name, owner) {
        Ok(point) => point,
        Err(_) => {
            let stale = under(&parent, name);
            let _ = nix::mount::umount2(
                &stale,
                nix::mount::MntFlags::MNT_DETACH | nix::mount::MntFlags::UMOUNT_NOFOLLOW,
            );
            own_dir(&parent, name, owner).with_context(|| {
                format!("make {}", owner.home.join(DRIVES_DIR).join(name).display())
            })?
        }
    };
    Ok((parent, point))
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

/// `name` in `parent`: made 0700 and given to the owner if missing, then opened; it must
/// be a directory of the owner's (not a symbolic link).
fn own_dir(parent: &OwnedFd, name: &str, owner: &DrivesHome) -> anyhow::Result<OwnedFd> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
    let path = under(parent, name);
    match std::fs::DirBuilder::new().mode(0o700).create(&path) {
        Ok(()) => std::os::unix::fs::lchown(&path, Some(owner.uid), Some(owner.gid))
            .context("give it to the account")?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).context("mkdir"),
    }
    let fd = open_dir(&path, true).context("open it (a symbolic link is refused)")?;
    let uid = std::fs::File::from(fd.try_clone()?).metadata()?.uid();
    anyhow::ensure!(
        uid == owner.uid,
        "{name} belongs to uid {uid}, not to the account (uid {})",
        owner.uid
    );
    Ok(fd)
}

/// Inode numbers and the drive-relative paths they stand for (1 is the root, `""`).
#[derive(Debug)]
struct Inodes {
    paths: HashMap<u64, String>,
    numbers: HashMap<String, u64>,
    next: u64,
}

impl Default for Inodes {
    fn default() -> Self {
        let mut inodes = Self {
            paths: HashMap::new(),
            numbers: HashMap::new(),
            next: 2,
        };
        inodes.paths.insert(1, String::new());
        inodes.numbers.insert(String::new(), 1);
        inodes
    }
}

impl Inodes {
    fn number(&mut self, path: &str) -> u64 {
        if let Some(&n) = self.numbers.get(path) {
            return n;
        }
        let n = self.next;
        self.next += 1;
        self.paths.insert(n, path.to_owned());
        self.numbers.insert(path.to_owned(), n);
        n
    }

    /// A rename: `from` and everything under it take their new paths (same numbers).
    fn moved(&mut self, from: &str, to: &str) {
        let prefix = format!("{from}/");
        let moving: Vec<(String, u64)> = self
            .numbers
            .iter()
            .filter(|(p, _)| p.as_str() == from || p.starts_with(&prefix))
            .map(|(p, n)| (p.clone(), *n))
            .collect();
        if let Some(old) = self.numbers.remove(to) {
            self.paths.remove(&old);
        }
        for (path, n) in moving {
            self.numbers.remove(&path);
            let new = format!("{to}{}", &path[from.len()..]);
            self.paths.insert(n, new.clone());
            self.numbers.insert(new, n);
        }
    }
}

/// Directory listings being read (`opendir` to `releasedir`).
#[derive(Debug, Default)]
struct Listings {
    open: HashMap<u64, Vec<(String, Attr)>>,
    next: u64,
}

struct DriveFs {
    ops: tokio::sync::mpsc::UnboundedSender<Request>,
    timeout: Duration,
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
    /// Asks the drive and waits for the answer (at most the timeout and a little: the
    /// carrier times out first and says so; this is the last resort).
    fn ask(&self, op: Op) -> Result<Done, Errno> {
        let (reply, answer) = sync_channel(1);
        self.ops
            .send(Request { op, reply })
            .map_err(|_| Errno::EIO)?;
        match answer.recv_timeout(self.timeout + Duration::from_secs(2)) {
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
            .number(path);
        reply.entry(&TTL, &self.file_attr(ino, attr), Generation(0));
    }

    fn stat(&self, path: &str) -> Result<Attr, Errno> {
        match self.ask(Op::Stat(path.to_owned()))? {
            Done::Attr(attr) => Ok(attr),
            _ => Err(Errno::EIO),
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
            Ok(path) => self.simple(Op::Delete { path, dir: false }, reply),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &FuseRequest, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.path(parent).and_then(|p| join(&p, name)) {
            Ok(path) => self.simple(Op::Delete { path, dir: true }, reply),
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
                    .number(&path);
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
        match self.ask(Op::List(path)) {
            Ok(Done::Entries(entries)) => {
                let mut listings = self.listings.lock().unwrap_or_else(|e| e.into_inner());
                listings.next += 1;
                let fh = listings.next;
                listings.open.insert(fh, entries);
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Ok(_) => reply.error(Errno::EIO),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &FuseRequest,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Ok(path) = self.path(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let listings = self.listings.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entries) = listings.open.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let mut inodes = self.inodes.lock().unwrap_or_else(|e| e.into_inner());
        let dots = [
            (".".to_owned(), ino.0, FileType::Directory),
            ("..".to_owned(), 1, FileType::Directory),
        ];
        let all = dots
            .into_iter()
            .chain(entries.iter().filter_map(|(name, attr)| {
                let child = join(&path, OsStr::new(name)).ok()?;
                let kind = if attr.dir {
                    FileType::Directory
                } else {
                    FileType::RegularFile
                };
                Some((name.clone(), inodes.number(&child), kind))
            }));
        for (i, (name, child, kind)) in all
            .enumerate()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        {
            if reply.add(INodeNo(child), (i + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok();
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
        assert_eq!(folder_name("../etc"), "__etc");
        assert_eq!(folder_name("a/b"), "a_b");
        assert_eq!(folder_name(".hidden"), "_hidden");
        assert_eq!(folder_name(""), "drive");
        assert_eq!(folder_name("  "), "drive");
        assert_eq!(folder_name("C:"), "C_");
        assert_eq!(folder_name(&"x".repeat(100)).len(), 64);
    }

    #[test]
    fn renames_move_the_paths_below() {
        let mut inodes = Inodes::default();
        let a = inodes.number("a");
        let ab = inodes.number("a/b");
        let other = inodes.number("ab");
        inodes.moved("a", "c");
        assert_eq!(inodes.paths[&a], "c");
        assert_eq!(inodes.paths[&ab], "c/b");
        assert_eq!(inodes.paths[&other], "ab");
        assert_eq!(inodes.number("c/b"), ab);
    }
}
