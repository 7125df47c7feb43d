//! The fixtures' own tests: every guard really cleans up, also when the test panics.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::{Command, Stdio};
use std::time::Duration;

use deskport_testsupport::{
    data_dir, free_port, image_util, listener, veth, wait_until, Netns, ProcessGuard, Xvfb,
};
use image::{Rgb, RgbImage};

fn alive(pid: u32) -> bool {
    // A zombie has exited; only its parent has not reaped it yet.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// Starts `sh` that starts a grandchild `sleep` and prints its PID.
fn spawn_family() -> (ProcessGuard, u32) {
    let mut guard = ProcessGuard::spawn(
        "sh",
        Command::new("sh")
            .args(["-c", "sleep 300 & echo $!; wait"])
            .stdout(Stdio::piped()),
    )
    .unwrap();
    let mut out = guard.child_mut().stdout.take().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&mut out), &mut line).unwrap();
    (guard, line.trim().parse().unwrap())
}

#[test]
fn process_guard_stops_child_and_its_group_on_drop() {
    let (guard, grandchild) = spawn_family();
    let child = guard.pid();
    assert!(alive(child) && alive(grandchild));
    drop(guard);
    wait_until(Duration::from_secs(5), "the grandchild to end", || {
        (!alive(grandchild)).then_some(())
    });
    assert!(!alive(child));
}

#[test]
fn process_guard_stops_child_when_the_test_panics() {
    let mut pids = None;
    let result = catch_unwind(AssertUnwindSafe(|| {
        let (guard, grandchild) = spawn_family();
        pids = Some((guard.pid(), grandchild));
        panic!("the test failed");
    }));
    assert!(result.is_err());
    let (child, grandchild) = pids.unwrap();
    wait_until(Duration::from_secs(5), "the family to end", || {
        (!alive(child) && !alive(grandchild)).then_some(())
    });
}

#[test]
fn process_guard_reports_exit_status() {
    let mut guard = ProcessGuard::spawn("false", &mut Command::new("false")).unwrap();
    let status = guard.wait_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(status.code(), Some(1));
}

#[test]
fn ports_are_distinct_and_bindable() {
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let held = listener(lo);
    let port = free_port(lo);
    assert_ne!(port, held.local_addr().unwrap().port());
    std::net::TcpListener::bind((lo, port)).unwrap();
}

#[test]
fn data_dirs_are_fresh_and_removed() {
    let dir = data_dir();
    let path = dir.path().to_owned();
    assert_eq!(std::fs::read_dir(&path).unwrap().count(), 0);
    std::fs::write(path.join("x"), "y").unwrap();
    drop(dir);
    assert!(!path.exists());
}

#[test]
fn xvfb_screenshot_shows_what_was_drawn_and_display_goes_away() {
    let x = Xvfb::start(320, 200);
    let other = Xvfb::start(64, 48);
    assert_ne!(x.display(), other.display());
    let status = x
        .command("xsetroot")
        .args(["-solid", "#ff8000"])
        .status()
        .unwrap();
    assert!(status.success());
    let shot = x.screenshot();
    assert_eq!((shot.width(), shot.height()), (320, 200));
    assert_eq!(*shot.get_pixel(10, 10), Rgb([0xff, 0x80, 0x00]));
    assert_eq!(other.screenshot().dimensions(), (64, 48));

    let number = x.display().trim_start_matches(':').to_owned();
    let socket = format!("/tmp/.X11-unix/X{number}");
    assert!(std::path::Path::new(&socket).exists());
    drop(x);
    wait_until(Duration::from_secs(5), "Xvfb's socket to go", || {
        (!std::path::Path::new(&socket).exists()).then_some(())
    });
}

#[test]
fn image_find_locates_a_sub_image() {
    let mut big = RgbImage::from_pixel(40, 30, Rgb([0, 0, 0]));
    let mut small = RgbImage::new(5, 4);
    for (x, y, px) in small.enumerate_pixels_mut() {
        *px = Rgb([x as u8 * 40, y as u8 * 50, 200]);
        big.put_pixel(x + 17, y + 9, *px);
    }
    assert_eq!(image_util::find(&big, &small, 0), Some((17, 9)));
    big.put_pixel(19, 10, Rgb([1, 2, 3]));
    assert_eq!(image_util::find(&big, &small, 0), None);
    assert_eq!(image_util::find(&small, &big, 0), None);
}

#[test]
fn netns_guard_removes_namespace_when_the_test_panics() {
    let mut name = String::new();
    let result = catch_unwind(AssertUnwindSafe(|| {
        let ns = Netns::new();
        name = ns.name().to_owned();
        assert!(Netns::exists(&name));
        panic!("the test failed");
    }));
    assert!(result.is_err());
    assert!(!name.is_empty());
    assert!(!Netns::exists(&name), "namespace {name} outlived its guard");
}

#[test]
fn netns_veth_connects_two_namespaces_and_goes_away() {
    let (a, b) = (Netns::new(), Netns::new());
    veth(&a, "dpt-a", &b, "dpt-b");
    a.run(&["ip", "addr", "add", "198.18.0.1/24", "dev", "dpt-a"]);
    b.run(&["ip", "addr", "add", "198.18.0.2/24", "dev", "dpt-b"]);
    let ping = a.output(&["ping", "-c", "1", "-W", "2", "198.18.0.2"]);
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    // Outside the namespaces the interfaces are not visible.
    let host = Command::new("ip")
        .args(["link", "show", "dpt-a"])
        .output()
        .unwrap();
    assert!(!host.status.success());
    let names = (a.name().to_owned(), b.name().to_owned());
    drop((a, b));
    assert!(!Netns::exists(&names.0) && !Netns::exists(&names.1));
}
