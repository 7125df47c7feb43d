"""Turns the output of scripts/bench into bench/RESULTS.md and PNG plots.

Usage: bench-report.py BENCH_OUTPUT CRITERION_DIR OUT_DIR
       bench-report.py --heavy-only BENCH_OUTPUT OUT_DIR
       bench-report.py --control-only BENCH_OUTPUT OUT_DIR
       bench-report.py --soak-only SOAK_OUTPUT OUT_DIR
       bench-report.py --sound-only SOUND_OUTPUT OUT_DIR
       bench-report.py --drives-only DRIVES_OUTPUT OUT_DIR
       bench-report.py --gateway-only BENCH_OUTPUT OUT_DIR

The heavy RDP benchmark's `HEAVY|link|server|frames|of|median ms|p95 ms|bytes|CPU-s|PSNR|polls/s`
lines become their own table, between the markers below. With --heavy-only, only that table
and the heavy `BENCH|` rows are replaced in an existing RESULTS.md; every other row is kept.

The control-plane benchmark's `CONTROL|figure|value|target|SQLite|met` lines (and its
`CONTROLNOTE|` lines) become the control-plane section; --control-only replaces only that
section and the `control plane` rows of the main table.

The gateway benchmark's `GATEWAY|bulk|streams|proxy|MB/s|CPU-s per GB` and
`GATEWAY|setup|-|proxy|µs|-` lines become the gateway section (deskport's userspace gateway
against HAProxy and socat); --gateway-only replaces only that section and the `gateway` rows.

The soak's `SOAK|curve|…` and `SOAK|summary|…` lines (scripts/soak) become the soak section;
--soak-only replaces only that section.
The sound benchmark's `SOUND|client|format|seconds|bytes|kbit/s|server CPU-s|PulseAudio CPU-s|
capture CPU-s|client CPU-s|SNR` lines become the sound section (--sound-only).
"""

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone



def pyplot():
    """matplotlib's pyplot, headless (only the full report draws plots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bench_lines(path):
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.startswith("BENCH|"):
                continue
            parts = line.rstrip("\n").split("|")
            if len(parts) != 7:
                continue
            _, name, value, unit, base, base_unit, better = parts
            rows.append(
                {
                    "name": name,
                    "value": float(value),
                    "unit": unit,
                    "baseline": float(base),
                    "baseline_what": base_unit,
                    "better": better,
                }
            )
    return rows


def criterion(crit_dir):
    """decide/{classifier,linear}/N → decisions/s; compile/N → ms."""
    result = {"classifier": {}, "linear": {}, "compile": {}}
    for kind in ("classifier", "linear"):
        base = os.path.join(crit_dir, "decide", kind)
        if not os.path.isdir(base):
            continue
        for n in sorted(os.listdir(base), key=lambda s: int(s) if s.isdigit() else 0):
            est = os.path.join(base, n, "new", "estimates.json")
            meta = os.path.join(base, n, "new", "benchmark.json")
            if not (n.isdigit() and os.path.exists(est)):
                continue
            with open(est) as f:
                ns = json.load(f)["median"]["point_estimate"]
            with open(meta) as f:
                elements = json.load(f)["throughput"]["Elements"]
            result[kind][int(n)] = elements / (ns / 1e9)
    base = os.path.join(crit_dir, "compile")
    if os.path.isdir(base):
        for n in os.listdir(base):
            est = os.path.join(base, n, "new", "estimates.json")
            if n.isdigit() and os.path.exists(est):
                with open(est) as f:
                    result["compile"][int(n)] = json.load(f)["median"]["point_estimate"] / 1e6
    return result


HEAVY_BEGIN = "<!-- heavy:begin -->"
HEAVY_END = "<!-- heavy:end -->"
LINKS = {"loopback": "loopback", "10mbit": "10 Mbit/s (`tbf`, mtu 1500, in a network namespace)"}


def heavy_lines(path):
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.rstrip("\n").split("|")
            if parts[0] != "HEAVY" or len(parts) != 11:
                continue
            _, link, server, frames, of, median, p95, nbytes, cpu, psnr, polls = parts
            rows.append(
                {
                    "link": link,
                    "server": server,
                    "frames": int(frames),
                    "of": int(of),
                    "median": float(median),
                    "p95": float(p95),
                    "bytes": int(nbytes),
                    "cpu": float(cpu),
                    "psnr": psnr,
                    "polls": float(polls),
                }
            )
    return rows


def heavy_notes(path):
    """The bench's lines about skipped rows and rows without figures."""
    notes = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("heavy: ") and ("skipping" in line or "no figures" in line):
                notes.append(line.strip()[len("heavy: "):])
    return notes


def heavy_section(rows, notes):
    lines = [
        HEAVY_BEGIN,
        "## RDP, the heavy workload (SPEC §7)",
        "",
        "`cargo bench -p deskport --bench heavy`: 1280x800, about 40% of the screen changing per "
        "frame, 30 frames/s for 10 s, a frame code in every frame; every server watched by the same "
        "xfreerdp 2.11 (`/network:lan /bpp:32`, plus the `/gfx` flag named) on its own Xvfb, all "
        "rows of a link from the same run. Frames shown: distinct frame codes the client showed; "
        "latency: frame drawn (after XSync) to its code first seen in the client's window (polled "
        "at the rate given); bytes: what the server's socket sent from the first frame to the end; "
        "CPU: server process(es) + the X server it reads. PSNR: the client's final picture against "
        "the server's screen, taken when the client shows the last frame or 5 s after it was drawn. "
        "The noise patch is full-entropy 24-bit noise: no codec shrinks it, only a history "
        "(XCRUSH) or a lossy codec can. On the 10 Mbit/s link xrdp also reaches its Xvnc over "
        "the shaped `lo` (VNC on TCP 127.0.0.1). The row *through its RD Gateway* is deskport's "
        "server reached through `deskport manager`'s RD Gateway (MS-TSGU, WebSocket form, target: "
        "at most 5% more bytes, the same frames, at most 2 ms more median latency than direct): "
        "its bytes are what the gateway sent the client, its CPU includes the manager's. The row "
        "*in a chromium tab* (loopback only) is the console's Console tab: the same server, "
        "reporting to a manager whose relay sends the page frames of copies, fills and PNG atlases "
        "over a WebSocket (HTTPS); frames shown are codes read back from the canvas after each "
        "frame the page painted (0 watcher polls: the page reports), bytes what the manager sent "
        "the browser, CPU the manager's, server's and X server's (the browser's not counted, as "
        "xfreerdp's is not). Targets: at least 250 frames, median at most 40 ms, bytes at most "
        "2x the direct row's.",
        "",
        f"Measured {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} at commit {commit_id()}"
        " (`scripts/bench heavy` replaces this section and the `rdp heavy` rows only).",
        "",
    ]
    for link in [l for l in LINKS if any(r["link"] == l for r in rows)]:
        lines += [
            f"**{LINKS[link]}**",
            "",
            "| server | frames shown | latency median / p95 | bytes | server + X CPU-s | PSNR final frame | watcher polls/s |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            if r["link"] != link:
                continue
            psnr = "∞ (identical)" if r["psnr"] == "inf" else f"{r['psnr']} dB"
            lines.append(
                f"| {r['server']} | {r['frames']} / {r['of']} | {r['median']:.0f} / {r['p95']:.0f} ms "
                f"| {r['bytes'] / 1e6:.1f} MB | {r['cpu']:.1f} | {psnr} | {r['polls']:.0f} |"
            )
        lines.append("")
    if notes:
        lines += ["Not measured in this run: " + "; ".join(notes) + ".", ""]
    lines.append(HEAVY_END)
    return lines


CONTROL_BEGIN = "<!-- control-plane:begin -->"
CONTROL_END = "<!-- control-plane:end -->"


GATEWAY_BEGIN = "<!-- gateway:begin -->"
GATEWAY_END = "<!-- gateway:end -->"


def gateway_lines(path):
    """{proxy: {("bulk", streams): (MB/s, CPU-s/GB or None), ("setup",): µs}}, in order."""
    table = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.rstrip("\n").split("|")
            if parts[0] != "GATEWAY" or len(parts) != 6:
                continue
            _, kind, streams, proxy, value, cpu = parts
            row = table.setdefault(proxy, {})
            if kind == "bulk":
                row[("bulk", streams)] = (float(value), None if cpu == "-" else float(cpu))
            elif kind == "setup":
                row[("setup",)] = float(value)
    return table


def gateway_section(table):
    def bulk(row, streams):
        if ("bulk", streams) not in row:
            return ["—", "—"]
        mbps, cpu = row[("bulk", streams)]
        return [f"{mbps:.0f}", "—" if cpu is None else f"{cpu:.3f}"]

    lines = [
        GATEWAY_BEGIN,
        "## The userspace gateway against HAProxy and socat (issue 19)",
        "",
        "`cargo bench -p deskport-firewall --bench gateway`: one bulk TCP transfer (1 GiB a run, "
        "1 stream and 8 streams at once) through each proxy and directly, the proxy pinned to "
        "core 0 (`taskset`) and the client and the sink to core 1; median of 5 runs that "
        "alternate the proxies. CPU: the proxy's user + system seconds over all runs per GB "
        "moved (socat's forked children included). Setup: connect + a 1-byte echo through the "
        "proxy, median of 1,000. Each proxy on its defaults as an operator starts it: deskport's "
        "gateway as `deskport firewall --backend gateway` runs it (splice through a 64 KiB "
        "pipe), HAProxy 2.6 `mode tcp` with `option splice-request`/`splice-response` and "
        "`nbthread 1`, socat with `fork`. Targets (SPEC §7): throughput >= 1.0x HAProxy's and "
        ">= 1.5x socat's, CPU per GB <= HAProxy's, <= 1 ms added to connection setup. The two "
        "splicing proxies stop at about the same throughput with neither core saturated (the "
        "proxy's core about 60% busy: the hand-off between the two cores of this VM is the "
        "limit, larger pipes do not move it), while socat is bound by its own core (about 0.95 "
        "CPU-s per second): on this machine 1.5x socat would need more than that ceiling.",
        "",
        f"Measured {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} at commit {commit_id()} "
        "(`scripts/bench gateway` replaces this section and the `gateway` rows only).",
        "",
        "| path | 1 stream MB/s | CPU-s/GB | 8 streams MB/s | CPU-s/GB | setup median µs |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for proxy, row in table.items():
        setup = row.get(("setup",))
        lines.append(
            "| " + " | ".join([proxy] + bulk(row, "1") + bulk(row, "8") + ["—" if setup is None else f"{setup:.0f}"]) + " |"
        )
    lines += ["", GATEWAY_END]
    return lines


def gateway_only(out_path, out_dir):
    """Replaces the gateway section and the gateway BENCH rows of an existing RESULTS.md."""
    results = os.path.join(out_dir, "RESULTS.md")
    with open(results, encoding="utf-8") as f:
        text = f.read()
    section = "\n".join(gateway_section(gateway_lines(out_path)))
    text = replace_section(text, GATEWAY_BEGIN, GATEWAY_END, section)
    text = replace_rows(text, bench_lines(out_path), "gateway ")
    with open(results, "w", encoding="utf-8") as f:
        f.write(text)


def control_lines(path):
    rows, notes = [], {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.rstrip("\n").split("|")
            if parts[0] == "CONTROL" and len(parts) == 6:
                rows.append(parts[1:])
            elif parts[0] == "CONTROLNOTE" and len(parts) >= 2:
                notes[parts[1]] = parts[2:]
    return rows, notes


def control_section(rows, notes):
    setup = notes.get("setup", ["2000", "5", "20"])
    agents, changes, per_project = (int(x) for x in setup[:3])
    nofile = notes.get("nofile")
    raised = ""
    if nofile and nofile[0] != nofile[1]:
        raised = (
            f"The benchmark raised its soft limit of open files to the hard one ({nofile[0]} → "
            f"{nofile[1]}) before opening the agents' connections. "
        )
    elif nofile:
        raised = (
            "The benchmark raises its soft limit of open files to the hard one before opening the "
            f"agents' connections (here it already was: {nofile[1]}). "
        )
    lines = [
        CONTROL_BEGIN,
        "## Control plane: PostgreSQL, two replicas, agents long-polling (issue 15)",
        "",
        "`cargo bench -p deskport-manager --bench controlplane`, on a private PostgreSQL cluster on "
        "loopback (`initdb` in a temporary directory, stopped at the end). API reads: the calls, "
        "32 keep-alive connections for 5 s and the data set of the SQLite API benchmark, against "
        "one PostgreSQL replica and against a manager on SQLite, in the same run. Fan-out: two "
        f"managers on one database, {agents:,} simulated agents (half on each; "
        "`CONTROL_BENCH_AGENTS`) long-polling the agent feed with their instances' agent tokens "
        "through `deskport_api::Feed` and reporting each revision as the firewall agent does, in "
        f"projects of {per_project} instances; a rule added through one replica, timed from the API "
        "call to each agent holding the new revision, "
        f"{changes} times (percentiles over every agent of every change). Reads: "
        "`deskport_manager_db_reads_total` of each replica's `/metrics` over one change. The "
        "SQLite baseline is the same agents on one manager on SQLite (it has no replicas). "
        + raised
        + "Everything — the managers, the agents, PostgreSQL — shares this machine's cores, so "
        "the fan-out times include the load generator's own work.",
        "",
        f"Measured {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} at commit {commit_id()} "
        "(`scripts/bench control-plane` replaces this section and the `control plane` rows only).",
        "",
        "| figure | PostgreSQL | target | SQLite (same run) | target met |",
        "|---|---:|---:|---:|:---:|",
    ]
    for name, value, target, sqlite, met in rows:
        lines.append(f"| {name} | {value} | {target} | {sqlite} | {met} |")
    lines += ["", CONTROL_END]
    return lines


def replace_section(text, begin, end, section):
    """`text` with the part between `begin` and `end` replaced, else `section` put before
    the plots."""
    if begin in text and end in text:
        before, rest = text.split(begin, 1)
        after = rest.split(end, 1)[1]
        return before + section + after
    marker = "\n## Plots"
    at = text.find(marker)
    if at < 0:
        at = text.find("\nCommit ")
    return text[:at] + "\n" + section + "\n" + text[at:] if at >= 0 else text + "\n" + section + "\n"


def replace_rows(text, rows, prefix):
    """`text` whose main table has `rows` in place of its rows named `prefix`…"""
    new_rows = []
    for r in rows:
        if r["name"].startswith(prefix):
            ratio = ratio_of(r)
            shown = f"{ratio:.2f}" if ratio is not None else "—"
            new_rows.append(
                f"| {r['name']} | {fmt(r['value'])} {r['unit']} | {fmt(r['baseline'])} {r['baseline_what']} | {shown} |"
            )
    lines = [l for l in text.split("\n") if not l.startswith("| " + prefix)]
    end = next(i for i, l in enumerate(lines) if l.startswith("| "))
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    lines[end:end] = new_rows
    return "\n".join(lines)


def control_only(out_path, out_dir):
    """Replaces the control-plane section and its BENCH rows of an existing RESULTS.md."""
    results = os.path.join(out_dir, "RESULTS.md")
    with open(results, encoding="utf-8") as f:
        text = f.read()
    rows, notes = control_lines(out_path)
    text = replace_section(text, CONTROL_BEGIN, CONTROL_END, "\n".join(control_section(rows, notes)))
    text = replace_rows(text, bench_lines(out_path), "control plane")
    with open(results, "w", encoding="utf-8") as f:
        f.write(text)


def commit_id():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def heavy_only(out_path, out_dir):
    """Replaces the heavy table and the heavy BENCH rows of an existing RESULTS.md."""
    results = os.path.join(out_dir, "RESULTS.md")
    with open(results, encoding="utf-8") as f:
        text = f.read()
    section = "\n".join(heavy_section(heavy_lines(out_path), heavy_notes(out_path)))
    if HEAVY_BEGIN in text and HEAVY_END in text:
        before, rest = text.split(HEAVY_BEGIN, 1)
        after = rest.split(HEAVY_END, 1)[1]
        text = before + section + after
    else:
        marker = "\n## Plots"
        at = text.find(marker)
        if at < 0:
            at = text.find("\nCommit ")
        text = text[:at] + "\n" + section + "\n" + text[at:] if at >= 0 else text + "\n" + section + "\n"
    # The heavy BENCH rows of the main table: the old ones out, the new ones in after the
    # last rdp row.
    new_rows = []
    for r in bench_lines(out_path):
        if r["name"].startswith("rdp heavy"):
            ratio = ratio_of(r)
            shown = f"{ratio:.2f}" if ratio is not None else "—"
            new_rows.append(
                f"| {r['name']} | {fmt(r['value'])} {r['unit']} | {fmt(r['baseline'])} {r['baseline_what']} | {shown} |"
            )
    lines = [l for l in text.split("\n") if not l.startswith("| rdp heavy")]
    # The end of the first table (the main one).
    end = next(i for i, l in enumerate(lines) if l.startswith("| "))
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    lines[end:end] = new_rows
    with open(results, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


def fmt(v):
    if v >= 1e6:
        return f"{v / 1e6:.1f} M"
    if v >= 1e4:
        return f"{v / 1e3:.1f} k"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 1:
        return f"{v:.1f}"
    return f"{v:.3f}"


def ratio_of(r):
    """Figure against baseline, above 1 = better; 1 when both are 0, None when undefined."""
    value, base = r["value"], r["baseline"]
    if value == 0 and base == 0:
        return 1.0
    if r["better"] == "higher":
        return value / base if base else None
    return base / value if value else None


SOAK_BEGIN = "<!-- soak:begin -->"
SOAK_END = "<!-- soak:end -->"


def soak_section(path):
    curve, summary, verdict = [], None, "?"
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if line.startswith("SOAK|curve|"):
                curve.append(line.split("|")[2:])
            elif line.startswith("SOAK|summary|"):
                summary = line.split("|")[2:]
            elif line.startswith("soak: passed") or line.startswith("soak: FAILED"):
                verdict = line[len("soak: "):]
    lines = [SOAK_BEGIN, "## Soak (issue 20)", ""]
    if summary is None:
        lines += ["No soak figures in this run.", SOAK_END]
        return lines
    (sessions, minutes, fps, alive, cycles, failures, rss0, rss_max, growth, rss_after,
     fds0, fds_max, fds_after, x_after, left) = summary
    lines += [
        f"`scripts/soak`: deskport's RDP server with {sessions} virtual desktops (Xvnc), each "
        f"drawing the heavy workload of SPEC §7 at {fps} frames/s and watched by its own xfreerdp "
        f"for {minutes} minutes, while `deskport connect --screenshot` connects and disconnects "
        f"two more accounts (still desktops), {cycles} times in all, two at once; then the clients "
        "leave and the sessions time out. RSS after logoff is what the allocator kept; a leak "
        "shows as growth while the load is steady (the cycles reattach sessions: each one would "
        "leave its share). Measured "
        f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} at commit {commit_id()}: "
        f"**{verdict}**.",
        "",
        "| figure | value |",
        "|---|---:|",
        f"| sessions alive at the end | {alive} / {sessions} |",
        f"| connect/disconnect cycles (failed) | {cycles} ({failures}) |",
        f"| server resident memory: start, peak, after logoff | {rss0} / {rss_max} / {rss_after} MB |",
        f"| resident memory growth over the second half | {growth} MB |",
        f"| server descriptors: start, peak, after logoff | {fds0} / {fds_max} / {fds_after} |",
        f"| X servers / session processes left after logoff | {x_after} / {left} |",
        "",
        "| t (s) | RSS (MB) | descriptors | threads | X servers | clients alive | cycles done |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in curve:
        lines.append("| " + " | ".join(row) + " |")
    lines.append(SOAK_END)
    return lines


SOUND_BEGIN = "<!-- sound:begin -->"
SOUND_END = "<!-- sound:end -->"


def sound_section(path):
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("SOUND|"):
                rows.append(line.strip().split("|")[1:])
    lines = [SOUND_BEGIN, "## Sound (issue 18)", ""]
    if not rows:
        lines += ["No sound figures in this run.", SOUND_END]
        return lines
    seconds = rows[0][2]
    raw = next((r for r in rows if r[0].startswith("raw PCM")), None)
    lines += [
        f"`scripts/bench sound`: {seconds} s of music-like sound (chords with harmonics changing "
        "every half second, a bass line, noise bursts; stereo, 44.1 kHz) played with `paplay` in a "
        "virtual session's own PulseAudio and sent over `rdpsnd` to a real client playing into a "
        "PulseAudio null sink. Bytes: what the server sent on the connection meanwhile (TCP, with "
        "every header). CPU-seconds over the whole sound: deskport's RDP server; the session's "
        "PulseAudio and its capture (`parec`); the client with its player. SNR: the coding's "
        "signal-to-noise ratio on the same signal. xrdp's PulseAudio module is not in Debian 12, "
        "so the baseline is raw PCM (what xrdp's module sends to a client without Opus). Measured "
        f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} at commit {commit_id()}.",
        "",
        "| client | format | kbit/s | vs raw PCM | server CPU-s | PulseAudio + capture CPU-s | client CPU-s | SNR (dB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, fmt, _secs, _bytes, kbit, server, pulse, capture, client, snr in rows:
        ratio = ""
        if raw is not None and kbit and raw[4]:
            ratio = f"{float(kbit) / float(raw[4]):.2f}x"
        sessions = ""
        if pulse and capture:
            sessions = f"{float(pulse) + float(capture):.2f}"
        lines.append(
            f"| {name} | {fmt} | {kbit} | {ratio} | {server} | {sessions} | {client} | {snr} |"
        )
    lines.append(SOUND_END)
    return lines


DRIVES_BEGIN = "<!-- drives:begin -->"
DRIVES_END = "<!-- drives:end -->"


def drives_section(path):
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("DRIVES|"):
                rows.append(line.strip().split("|")[1:])
    lines = [DRIVES_BEGIN, "## Drives (issue 18)", ""]
    if not rows:
        lines += ["No drive figures in this run.", DRIVES_END]
        return lines
    mb = rows[0][2]
    lines += [
        f"`scripts/bench drives`: a {mb} MB file read (`cat` from the drive to the home) and "
        "written (`cat` from the home to the drive) by the session's account through a drive "
        "xfreerdp shares (`/drive:bench,PATH`), mounted in a virtual session as "
        "`~/thinclient_drives/bench` (FUSE over `rdpdr`), next to the same copies on the local "
        "disk. FreeRDP's shadow server offers no drive redirection, and xrdp 0.9's (its "
        "chansrv mounts drives with FUSE 2, which needs `fusermount`, not installed by the "
        "project) is not measured yet, so the peer is the local copy. Each copy is compared byte for byte afterwards. "
        "CPU-seconds during the copy: deskport's RDP server, xfreerdp. Measured "
        f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} at commit {commit_id()}.",
        "",
        "| copy | through | seconds | MB/s | server CPU-s | client CPU-s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for what, how, _mb, secs, rate, server, client in rows:
        lines.append(f"| {what} | {how} | {secs} | {rate} | {server} | {client} |")
    lines.append(DRIVES_END)
    return lines


def section_only(out_path, out_dir, begin, end, make):
    results = os.path.join(out_dir, "RESULTS.md")
    with open(results, encoding="utf-8") as f:
        text = f.read()
    text = replace_section(text, begin, end, "\n".join(make(out_path)))
    with open(results, "w", encoding="utf-8") as f:
        f.write(text)


def main():
    if sys.argv[1] == "--sound-only":
        section_only(sys.argv[2], sys.argv[3], SOUND_BEGIN, SOUND_END, sound_section)
        return
    if sys.argv[1] == "--drives-only":
        section_only(sys.argv[2], sys.argv[3], DRIVES_BEGIN, DRIVES_END, drives_section)
        return
    if sys.argv[1] == "--soak-only":
        section_only(sys.argv[2], sys.argv[3], SOAK_BEGIN, SOAK_END, soak_section)
        return
    if sys.argv[1] == "--heavy-only":
        heavy_only(sys.argv[2], sys.argv[3])
        return
    if sys.argv[1] == "--control-only":
        control_only(sys.argv[2], sys.argv[3])
        return
    if sys.argv[1] == "--gateway-only":
        gateway_only(sys.argv[2], sys.argv[3])
        return
    out_path, crit_dir, out_dir = sys.argv[1:4]
    plt = pyplot()
    os.makedirs(out_dir, exist_ok=True)
    rows = bench_lines(out_path)
    crit = criterion(crit_dir)

    policy = []
    for n in sorted(crit["classifier"]):
        if n in crit["linear"]:
            policy.append(
                {
                    "name": f"policy decisions/s, {n} rules",
                    "value": crit["classifier"][n],
                    "unit": "decisions/s",
                    "baseline": crit["linear"][n],
                    "baseline_what": "decisions/s linear scan",
                    "better": "higher",
                },
            )
    rows = policy + rows

    lines = [
        "# Benchmark results",
        "",
        f"Run {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} on {platform.machine()}, "
        f"{os.cpu_count()} cores, by `scripts/bench`. Every figure is next to its baseline from the "
        "same run; the ratio is figure / baseline (for \"lower is better\" figures, baseline / figure, "
        "so above 1 is always better than the baseline).",
        "",
        "| benchmark | figure | baseline (same run) | ratio |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        ratio = ratio_of(r)
        shown = f"{ratio:.2f}" if ratio is not None else "—"
        lines.append(
            f"| {r['name']} | {fmt(r['value'])} {r['unit']} | {fmt(r['baseline'])} {r['baseline_what']} | {shown} |"
        )
    if crit["compile"]:
        lines += ["", "Classifier compile time: " + ", ".join(
            f"{fmt(ms)} ms at {n} rules" for n, ms in sorted(crit["compile"].items())) + "."]

    plots = []
    if crit["classifier"]:
        fig, ax = plt.subplots(figsize=(6, 4))
        for kind, label in (("classifier", "deskport classifier"), ("linear", "linear scan (baseline)")):
            xs = sorted(crit[kind])
            ax.plot(xs, [crit[kind][x] for x in xs], marker="o", label=label)
        ax.axhline(10e6, color="grey", linestyle="--", label="target 10 M/s")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("rules")
        ax.set_ylabel("decisions per second (one core)")
        ax.set_title("Policy decisions/s against rule count")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "decisions.png"), dpi=100)
        plots.append(("decisions.png", "Policy decisions/s against rule count"))

    nft = [r for r in rows if r["name"].startswith("nft compile")]
    if nft:
        xs = [int(r["name"].split(",")[1].split()[0]) for r in nft]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(xs, [r["value"] for r in nft], marker="o", label="compile + atomic apply")
        ax.axhline(200, color="grey", linestyle="--", label="target 200 ms")
        ax.set_xscale("log")
        ax.set_xlabel("rules")
        ax.set_ylabel("ms")
        ax.set_title("nftables: compile + apply time")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "nft-apply.png"), dpi=100)
        plots.append(("nft-apply.png", "nftables compile + atomic apply time against rule count"))

    rdp = {r["name"]: r for r in rows if r["name"].startswith("rdp ") and "freerdp-shadow" in r["baseline_what"]}
    modes = [m for m in ("bitmaps", "/gfx offered") if f"rdp animation bytes/s, {m}" in rdp]
    if modes:
        fig, axes = plt.subplots(1, 3, figsize=(11, 4))
        metrics = (
            ("rdp animation bytes/s, {}", "kB/s on the wire"),
            ("rdp animation server CPU, {}", "server CPU %"),
            ("rdp animation screen changes seen by the client, {}", "screen changes seen by the client / s"),
        )
        for ax, (key, label) in zip(axes, metrics):
            xs = range(len(modes))
            ours = [rdp[key.format(m)]["value"] for m in modes]
            theirs = [rdp[key.format(m)]["baseline"] for m in modes]
            ax.bar([x - 0.2 for x in xs], ours, width=0.4, label="deskport")
            ax.bar([x + 0.2 for x in xs], theirs, width=0.4, label="freerdp-shadow")
            ax.set_xticks(list(xs), modes)
            ax.set_title(label)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=2)
        fig.suptitle("RDP: a 10 s animation watched by xfreerdp, same display, same run")
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        fig.savefig(os.path.join(out_dir, "rdp.png"), dpi=100)
        plots.append(("rdp.png", "RDP server: bytes, CPU and frames per second against FreeRDP's shadow server"))

    ratio_rows = [r for r in rows if not r["name"].startswith("policy") and ratio_of(r) is not None]
    if ratio_rows:
        fig, ax = plt.subplots(figsize=(8, 0.4 * len(ratio_rows) + 1))
        names = [r["name"] for r in ratio_rows]
        ratios = [ratio_of(r) for r in ratio_rows]
        ax.barh(names, ratios)
        ax.set_xscale("log")
        ax.axvline(1, color="grey", linestyle="--")
        ax.set_xlabel("figure against its same-run baseline (above 1 = better)")
        ax.invert_yaxis()
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "ratios.png"), dpi=100)
        plots.append(("ratios.png", "Every other figure against its baseline"))

    gateway = gateway_lines(out_path)
    if gateway:
        lines += [""] + gateway_section(gateway)

    control, notes = control_lines(out_path)
    if control:
        lines += [""] + control_section(control, notes)

    heavy = heavy_lines(out_path)
    if heavy or heavy_notes(out_path):
        lines += [""] + heavy_section(heavy, heavy_notes(out_path))

    if plots:
        lines += ["", "## Plots", ""]
        for name, title in plots:
            lines += [f"![{title}]({name})", ""]
    commit = commit_id()
    lines += ["", f"Commit {commit}. Raw output: `target/bench-output.txt` of the run."]
    with open(os.path.join(out_dir, "RESULTS.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
