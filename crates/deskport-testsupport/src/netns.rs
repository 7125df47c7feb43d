use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// Prefix of every namespace the guards make: `dpt<pid>x<n>`. The PID lets a later run
/// remove namespaces of a test process that was killed before its guards could drop.
const PREFIX: &str = "dpt";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace that is deleted (with every interface in it) when the guard drops,
/// also when the test panics.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a new namespace with a unique name, brings its loopback up and turns IPv6
    /// duplicate address detection off for its links.
    pub fn new() -> Self {
        crate::require_root();
        crate::require_program("ip");
        sweep_stale();
        let name = format!(
            "{PREFIX}{}x{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run_checked(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        ns.run(&["ip", "link", "set", "lo", "up"]);
        // No duplicate address detection on the namespace's links: an address (link-local
        // ones included) is usable at once instead of after a second of probing.
        for scope in ["all", "default"] {
            ns.run(&[
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{scope}.accept_dad=0"),
            ]);
        }
        ns
    }

    /// The namespace's name (for `ip netns exec NAME …` / `ip -n NAME …`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A `Command` that runs `program` inside this namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Runs `argv` inside the namespace, panics with its stderr if it fails, returns stdout.
    pub fn run(&self, argv: &[&str]) -> String {
        let (program, args) = argv.split_first().expect("a program to run");
        let output = run_checked(self.command(program).args(args));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs `argv` inside the namespace and returns its output, whatever its exit status.
    pub fn output(&self, argv: &[&str]) -> Output {
        let (program, args) = argv.split_first().expect("a program to run");
        self.command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {argv:?} in {}: {e}", self.name))
    }

    /// Runs `f` on a thread that has entered this namespace, and returns its result. Sockets
    /// made inside `f` belong to the namespace and can be used from any thread afterwards, so
    /// a test can hold a client connection of a namespaced host directly.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file =
                        std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                        .unwrap_or_else(|e| panic!("enter {path}: {e}"));
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Whether a namespace of this name exists right now.
    pub fn exists(name: &str) -> bool {
        list().iter().any(|n| n == name)
    }
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace removes its interfaces; a veth's peer in another namespace
        // goes with it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Connects `a` and `b` with a veth pair: interface `a_if` in `a`, `b_if` in `b`, both up.
/// Interface names are at most 15 bytes.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    run_checked(Command::new("ip").args([
        "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ]));
    a.run(&["ip", "link", "set", a_if, "up"]);
    b.run(&["ip", "link", "set", b_if, "up"]);
}

fn list() -> Vec<String> {
    let output = run_checked(Command::new("ip").args(["netns", "list"]));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Deletes namespaces made by a test process that no longer exists.
fn sweep_stale() {
    for name in list() {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('x').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}

fn run_checked(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}
