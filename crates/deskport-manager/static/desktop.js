// deskport desktop console: the instance's remote desktop in a canvas. The manager's relay (an
// RDP client) sends what changed as frames of ops (copy, fill, pieces of PNG atlases) over a
// WebSocket; this file paints them in order, acknowledges each, and sends back keys (as
// KeyboardEvent.code, so the desktop's own layout decides the character), composed text,
// the pointer, the wheel, clipboard text and the size of the area. A dropped connection is
// retried with the credentials kept in memory only (never stored); the session's end is not.
"use strict";

(() => {
  const PROTOCOL = "deskport.console.v1";
  const RETRY_DELAYS = [1000, 2000, 4000, 8000, 8000];
  const IMAGE_TYPES = { 1: "image/png", 2: "image/webp" };
  // KeyboardEvent.buttons bit of each KeyboardEvent.button (0 left, 1 middle, 2 right, 3, 4).
  const BUTTON_BITS = [1, 4, 2, 8, 16];
  // Keys whose `key` is also their `code`: sent as keys when a (virtual) keyboard gives no code.
  const NAMED_KEYS = new Set(["Backspace", "Tab", "Enter", "Escape", "Delete", "Insert", "Home",
    "End", "PageUp", "PageDown", "ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown",
    ...Array.from({ length: 12 }, (_, i) => "F" + (i + 1))]);
  const LABELS = {
    connecting: "Connecting…", connected: "Connected", reconnecting: "Reconnecting…", ended: "Disconnected",
  };

  function start() {
    const root = document.getElementById("desktop");
    if (root) desktop(root);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();

  function desktop(root) {
    const $ = (id) => document.getElementById(id);
    const logon = $("desktop-logon");
    const toolbar = $("desktop-toolbar");
    const status = $("desktop-status");
    const notice = $("desktop-message");
    const area = $("desktop-screen");
    const canvas = $("desktop-canvas");
    const clipPanel = $("desktop-clipboard-panel");
    const clipToggle = $("desktop-clipboard-toggle");
    const clipText = $("desktop-clipboard-text");
    // On the CPU (willReadFrequently): copies read the canvas back (see draw).
    const ctx = canvas.getContext("2d", { alpha: false, willReadFrequently: true });
    const keys = keyInput(area);

    let ws = null; // the current socket; events of older ones are ignored
    let attempt = 0; // bumped by every logon and by the end, to drop stale async work
    let creds = null; // { user, password, domain } while a session is wanted
    let live = false; // this logon reached "connected" at least once (so a drop is retried)
    let tries = 0;
    let retryTimer = 0;
    let resizable = false;
    let sentSize = "";
    let resizeTimer = 0;
    let lastClip = "";
    let painting = Promise.resolve(); // frames, sizes and pointers apply in arrival order
    let frames = Number(root.dataset.frames) || 0;
    root.dataset.frames = String(frames);
    const held = new Set(); // key codes down
    const pressed = new Set(); // mouse buttons down
    let pendingMove = null; // the latest move not sent yet
    let moveFrame = 0;
    let lastAt = { x: 0, y: 0 }; // the pointer's last position sent

    if (root.dataset.user && !$("desktop-user").value) $("desktop-user").value = root.dataset.user;

    // --- Connection -------------------------------------------------------------------

    function setState(state, text) {
      root.dataset.state = state;
      status.textContent = text || LABELS[state];
      // Until connected the toolbar (and its status) is hidden: say it under the form instead.
      if (!logon.hidden && state !== "ended") notice.textContent = status.textContent;
    }

    logon.addEventListener("submit", (event) => {
      event.preventDefault();
      creds = { user: $("desktop-user").value, password: $("desktop-password").value, domain: $("desktop-domain").value };
      live = false;
      tries = 0;
      notice.textContent = "";
      connect();
    });

    async function connect() {
      const mine = ++attempt;
      $("desktop-connect").disabled = true;
      if (!live) setState("connecting");
      let token;
      try {
        token = await fetchToken();
      } catch (err) {
        if (mine === attempt) lost(err.message);
        return;
      }
      if (mine === attempt) open(token);
    }

    async function fetchToken() {
      const response = await fetch(root.dataset.tokenUrl, {
        method: "POST",
        headers: { "Content-Type": "application/x-www-form-urlencoded" },
        body: "csrf=" + encodeURIComponent(root.dataset.csrf || ""),
        credentials: "same-origin",
      }).catch(() => { throw new Error("The manager could not be reached."); });
      const body = await response.json().catch(() => ({}));
      // (Errors are the API's: {"error": {"code", "message"}}.)
      const message = body.error && body.error.message;
      if (!response.ok) throw new Error(sentence(message || response.statusText || "HTTP " + response.status));
      if (!body.token) throw new Error("The manager gave no console token.");
      return body.token;
    }

    function open(token) {
      const url = new URL(root.dataset.ws, location.href);
      url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
      let sock;
      try {
        sock = new WebSocket(url.href, [PROTOCOL, "token." + token]);
      } catch (err) {
        return lost(err.message);
      }
      ws = sock;
      sock.binaryType = "arraybuffer";
      sock.addEventListener("open", () => {
        if (sock !== ws) return;
        resizable = false;
        sentSize = "";
        send({ t: "logon", user: creds.user, password: creds.password, domain: creds.domain, ...areaSize() });
      });
      sock.addEventListener("message", (event) => {
        if (sock !== ws) return;
        try {
          if (typeof event.data === "string") receiveText(JSON.parse(event.data));
          else receiveBinary(sock, event.data);
        } catch (err) {
          console.error("deskport: a message from the relay could not be read", err);
        }
      });
      sock.addEventListener("close", (event) => {
        if (sock !== ws) return; // ended on purpose (end message, Disconnect) or replaced
        ws = null;
        lost(live ? "" : "The console connection was refused or dropped (" + (event.reason || "code " + event.code) + ").");
      });
    }

    // A dropped connection or a failed attempt: retried if this logon was connected once.
    function lost(text) {
      held.clear();
      pressed.clear();
      if (!live) return finish(text);
      if (tries >= RETRY_DELAYS.length) return finish("The connection was lost.");
      const delay = RETRY_DELAYS[tries++];
      setState("reconnecting", `Connection lost; reconnecting (try ${tries} of ${RETRY_DELAYS.length})…`);
      retryTimer = setTimeout(connect, delay);
    }

    function connected(text) {
      live = true;
      tries = 0;
      logon.hidden = true;
      toolbar.hidden = false;
      notice.textContent = "";
      setState("connected", text);
      focusKeys();
    }

    // The session is over (end message, Disconnect, refused, or lost for good): no retry.
    function finish(text) {
      attempt++;
      clearTimeout(retryTimer);
      clearTimeout(resizeTimer);
      const sock = ws;
      ws = null;
      if (sock && sock.readyState <= WebSocket.OPEN) sock.close(1000);
      creds = null;
      live = false;
      resizable = false;
      held.clear();
      pressed.clear();
      setState("ended");
      notice.textContent = text || "";
      $("desktop-password").value = "";
      $("desktop-connect").disabled = false;
      logon.hidden = false;
      toolbar.hidden = true;
      showClipboard(false);
    }

    function send(message, sock = ws) {
      if (sock && sock === ws && sock.readyState === WebSocket.OPEN) sock.send(JSON.stringify(message));
    }

    // Input goes only to a connected session (not to one still logging on).
    function input(message) {
      if (root.dataset.state === "connected") send(message);
    }

    // --- From the relay ---------------------------------------------------------------

    function receiveText(m) {
      switch (m.t) {
        case "status":
          if (m.state === "connected") connected(m.message);
          else setState(root.dataset.state === "reconnecting" ? "reconnecting" : "connecting", m.message);
          break;
        case "end":
          finish(sentence(m.message || "The session ended."));
          break;
        case "clipboard":
          lastClip = m.text || "";
          clipText.value = lastClip;
          if (navigator.clipboard && navigator.clipboard.writeText) navigator.clipboard.writeText(lastClip).catch(() => {});
          break;
        case "resizable":
          resizable = true;
          sendSize();
          break;
        case "pointer":
          enqueue(() => { canvas.style.cursor = m.kind === "hidden" ? "none" : "default"; });
          break;
        default: // "error": a message the relay refused (e.g. a key without a scancode)
          console.warn("deskport:", m.t, m.message || "");
      }
    }

    function receiveBinary(sock, buffer) {
      const view = new DataView(buffer);
      const kind = view.getUint8(0);
      if (kind === 1) frame(sock, buffer);
      else if (kind === 2) {
        const w = view.getUint16(1, true);
        const h = view.getUint16(3, true);
        enqueue(() => {
          canvas.width = w; // clears the canvas and resets the context's state
          canvas.height = h;
          ctx.fillStyle = "#000";
          ctx.fillRect(0, 0, w, h);
          fit();
        });
      } else if (kind === 3) {
        const hx = view.getUint16(1, true);
        const hy = view.getUint16(3, true);
        const cursor = `url(data:image/png;base64,${base64(new Uint8Array(buffer, 9))}) ${hx} ${hy}, default`;
        enqueue(() => { canvas.style.cursor = cursor; });
      }
    }

    function enqueue(step) {
      painting = painting.then(step).catch((err) => console.error("deskport: painting failed", err));
    }

    // A frame's images start decoding on arrival (in parallel, also with earlier frames
    // still painting); its ops are applied, all at once and in order, after the frames before.
    function frame(sock, buffer) {
      const arrived = performance.now();
      const id = new DataView(buffer).getUint32(1, true);
      let ops = [];
      let atlases = [];
      try {
        ({ ops, atlases } = parseOps(buffer));
      } catch (err) {
        console.error("deskport: a malformed frame", id, err);
      }
      const decoded = Promise.all(atlases);
      enqueue(async () => {
        const bitmaps = await decoded;
        try {
          for (const op of ops) draw(op, bitmaps);
        } finally {
          for (const bitmap of bitmaps) if (bitmap) bitmap.close();
          // Acknowledged even if painting failed: the relay sends nothing more until it is.
          send({ t: "ack", frame: id }, sock);
          root.dataset.frames = String(++frames);
          // For benchmarks and tests: the frame, its size, and arrival to painted in ms.
          const took = performance.now() - arrived;
          window.dispatchEvent(new CustomEvent("deskport-frame", { detail: { frame: id, bytes: buffer.byteLength, ms: took } }));
        }
      });
    }

    function parseOps(buffer) {
      const view = new DataView(buffer);
      const u16 = (at) => view.getUint16(at, true);
      const ops = [];
      const atlases = [];
      let at = 5;
      while (at < buffer.byteLength) {
        const code = view.getUint8(at);
        if (code === 1) {
          ops.push({ code, sx: u16(at + 1), sy: u16(at + 3), dx: u16(at + 5), dy: u16(at + 7), w: u16(at + 9), h: u16(at + 11) });
          at += 13;
        } else if (code === 2) {
          const color = `rgb(${view.getUint8(at + 1)},${view.getUint8(at + 2)},${view.getUint8(at + 3)})`;
          const rects = new Array(u16(at + 4) * 4);
          at += 6;
          for (let i = 0; i < rects.length; i++, at += 2) rects[i] = u16(at);
          ops.push({ code, color, rects });
        } else if (code === 3) {
          // An atlas: the frame's pieces of pixels stacked in one image file.
          const len = view.getUint32(at + 2, true);
          const bytes = new Uint8Array(buffer, at + 6, len); // throws if it runs past the end
          atlases.push(decode(bytes, IMAGE_TYPES[view.getUint8(at + 1)]));
          at += 6 + len;
        } else if (code === 4) {
          // A piece: rows top..top+h of an atlas, drawn at x, y.
          ops.push({ code, atlas: u16(at + 1), x: u16(at + 3), y: u16(at + 5), w: u16(at + 7), h: u16(at + 9), top: u16(at + 11) });
          at += 13;
        } else {
          throw new RangeError("unknown op " + code + " at byte " + at);
        }
      }
      return { ops, atlases };
    }

    function decode(bytes, type) {
      if (!type) return Promise.resolve(null);
      return createImageBitmap(new Blob([bytes], { type })).catch((err) => {
        console.warn("deskport: an image could not be decoded", err);
        return null;
      });
    }

    function draw(op, atlases) {
      if (op.code === 1) {
        // A copy of just the rectangle: drawImage from the canvas onto itself snapshots the
        // whole canvas for every copy (measured: ~90 ms a frame at 1280x800 with the heavy
        // workload's copies), getImageData/putImageData on the CPU canvas moves only the
        // rectangle.
        if (op.w && op.h) ctx.putImageData(ctx.getImageData(op.sx, op.sy, op.w, op.h), op.dx, op.dy);
      } else if (op.code === 2) {
        ctx.fillStyle = op.color;
        const r = op.rects;
        for (let i = 0; i < r.length; i += 4) ctx.fillRect(r[i], r[i + 1], r[i + 2], r[i + 3]);
      } else if (op.code === 4 && atlases[op.atlas] && op.w && op.h) {
        ctx.drawImage(atlases[op.atlas], 0, op.top, op.w, op.h, op.x, op.y, op.w, op.h);
      }
    }

    // --- Size ----------------------------------------------------------------------------

    // The area's size in CSS pixels as the relay takes it: 200..8192 each way, the width even.
    function areaSize() {
      const clamp = (v) => Math.min(8192, Math.max(200, Math.floor(v)));
      const width = clamp(area.clientWidth);
      return { width: width - (width % 2), height: clamp(area.clientHeight) };
    }

    function sendSize() {
      if (!resizable) return;
      const size = areaSize();
      const key = size.width + "x" + size.height;
      if (key === sentSize) return;
      sentSize = key;
      send({ t: "resize", ...size });
    }

    // Shows the canvas scaled down to fit the area, keeping its aspect ratio; never scaled up.
    function fit() {
      const scale = Math.min(1, area.clientWidth / canvas.width, area.clientHeight / canvas.height);
      if (!(scale > 0)) return;
      canvas.style.width = Math.floor(canvas.width * scale) + "px";
      canvas.style.height = Math.floor(canvas.height * scale) + "px";
    }

    new ResizeObserver(() => {
      fit();
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(sendSize, 300);
    }).observe(area);
    fit();

    // --- Keyboard ------------------------------------------------------------------------

    // The canvas cannot receive composition (IME) or text input, so keyboard focus lives in a
    // transparent textarea over the area; focusing the canvas hands focus to it.
    function focusKeys() {
      keys.focus({ preventScroll: true });
    }

    function onKey(event) {
      const down = event.type === "keydown";
      if (event.isComposing || event.key === "Process" || event.keyCode === 229) {
        // The IME has the key (its text comes at compositionend); only a key already
        // reported down is reported up, so that it is not left held.
        if (!down && held.delete(event.code)) input({ t: "key", code: event.code, down: false });
        return;
      }
      let code = event.code && event.code !== "Unidentified" ? event.code : "";
      if (!code && NAMED_KEYS.has(event.key)) code = event.key;
      event.preventDefault();
      if (code) {
        if (down) held.add(code);
        else held.delete(code);
        input({ t: "key", code, down }); // auto-repeats go as further presses
      } else if (down && event.key && Array.from(event.key).length === 1) {
        input({ t: "text", text: event.key });
      }
    }

    function tap(code) {
      input({ t: "key", code, down: true });
      input({ t: "key", code, down: false });
    }

    keys.addEventListener("compositionend", (event) => {
      if (event.data) input({ t: "text", text: event.data });
      keys.value = "";
    });
    // What virtual keyboards type without key events (the keydown had keyCode 229).
    keys.addEventListener("input", (event) => {
      if (event.isComposing) return;
      if (event.inputType === "insertText" && event.data) input({ t: "text", text: event.data });
      else if (event.inputType === "insertLineBreak") tap("Enter");
      else if (event.inputType === "deleteContentBackward") tap("Backspace");
      keys.value = "";
    });

    function release() {
      held.clear();
      pressed.clear();
      input({ t: "release" });
    }

    const inside = (node) => node === canvas || node === keys;
    for (const target of [canvas, keys]) {
      target.addEventListener("keydown", onKey);
      target.addEventListener("keyup", onKey);
      target.addEventListener("focusout", (event) => { if (!inside(event.relatedTarget)) release(); });
      target.addEventListener("focusin", (event) => { if (!inside(event.relatedTarget)) readClipboard(); });
      target.addEventListener("paste", (event) => {
        event.preventDefault();
        offerClipboard(event.clipboardData ? event.clipboardData.getData("text/plain") : "");
      });
    }
    canvas.addEventListener("focus", focusKeys);
    window.addEventListener("blur", release);
    document.addEventListener("visibilitychange", () => { if (document.hidden) release(); });

    // --- Pointer -------------------------------------------------------------------------

    // Where the event is on the desktop (the canvas may be shown scaled down).
    function position(event) {
      const rect = canvas.getBoundingClientRect();
      if (!rect.width || !rect.height) return null;
      const clamp = (v, size) => Math.min(size - 1, Math.max(0, v));
      return {
        x: clamp(Math.round((event.clientX - rect.left) * canvas.width / rect.width), canvas.width),
        y: clamp(Math.round((event.clientY - rect.top) * canvas.height / rect.height), canvas.height),
      };
    }

    // A button or wheel message carries the position, so a move still waiting is dropped.
    function dropMove() {
      cancelAnimationFrame(moveFrame);
      moveFrame = 0;
      pendingMove = null;
    }

    // Moves are coalesced: at most one an animation frame, the latest.
    function queueMove(at) {
      if (!at) return;
      pendingMove = lastAt = at;
      if (moveFrame) return;
      moveFrame = requestAnimationFrame(() => {
        moveFrame = 0;
        if (pendingMove) input({ t: "mouse", ...pendingMove });
        pendingMove = null;
      });
    }

    function button(event, down) {
      const at = position(event);
      if (!at || event.button < 0 || event.button > 4) return;
      if (!down && !pressed.has(event.button)) return;
      dropMove();
      lastAt = at;
      if (down) pressed.add(event.button);
      else pressed.delete(event.button);
      input({ t: "button", button: event.button, down, ...at });
    }

    canvas.addEventListener("pointerdown", (event) => {
      if (!event.isPrimary) return; // one finger drives the pointer
      focusKeys();
      try {
        canvas.setPointerCapture(event.pointerId); // drags go on outside the canvas
      } catch (err) { /* the pointer is gone already */ }
      button(event, true);
    });
    canvas.addEventListener("pointerup", (event) => { if (event.isPrimary) button(event, false); });
    canvas.addEventListener("pointermove", (event) => {
      if (!event.isPrimary) return;
      // A second button pressed or released while another is held comes as a move.
      if (event.button >= 0) button(event, (event.buttons & BUTTON_BITS[event.button]) !== 0);
      else queueMove(position(event));
    });
    canvas.addEventListener("pointercancel", (event) => {
      if (!event.isPrimary) return;
      for (const b of pressed) input({ t: "button", button: b, down: false, ...lastAt });
      pressed.clear();
    });
    // No text selection, middle-button autoscroll, context menu or back/forward navigation
    // (focus is given in pointerdown, since a cancelled mousedown gives none).
    for (const type of ["mousedown", "mouseup", "auxclick", "contextmenu"]) {
      canvas.addEventListener(type, (event) => event.preventDefault());
    }

    canvas.addEventListener("wheel", (event) => {
      event.preventDefault();
      const at = position(event);
      if (!at) return;
      // RDP counts 120 a notch: about 100 pixels, 3 lines, or a third of a page.
      const k = event.deltaMode === 1 ? 40 : event.deltaMode === 2 ? 360 : 1.2;
      const vertical = -Math.round(event.deltaY * k); // positive: away from the user (up)
      const horizontal = Math.round(event.deltaX * k); // positive: right, as RDP and X have it
      if (vertical || horizontal) dropMove();
      if (vertical) input({ t: "wheel", ...at, delta: vertical, horizontal: false });
      if (horizontal) input({ t: "wheel", ...at, delta: horizontal, horizontal: true });
    }, { passive: false });

    // --- Toolbar and clipboard -----------------------------------------------------------

    $("desktop-cad").addEventListener("click", () => {
      input({ t: "cad" });
      focusKeys();
    });
    $("desktop-disconnect").addEventListener("click", () => finish("Disconnected."));
    $("desktop-fullscreen").addEventListener("click", () => {
      const request = area.requestFullscreen && area.requestFullscreen();
      if (request) request.then(focusKeys, () => {});
    });

    function showClipboard(show) {
      clipPanel.hidden = !show;
      clipToggle.setAttribute("aria-expanded", String(show));
    }
    clipToggle.addEventListener("click", () => {
      showClipboard(clipPanel.hidden);
      if (!clipPanel.hidden) clipText.focus();
    });
    $("desktop-clipboard-send").addEventListener("click", () => {
      lastClip = clipText.value;
      input({ t: "clipboard", text: lastClip });
    });

    // Text copied in the browser goes to the desktop when new.
    function offerClipboard(text) {
      if (!text || text === lastClip) return;
      lastClip = text;
      input({ t: "clipboard", text });
    }

    function readClipboard() {
      if (navigator.clipboard && navigator.clipboard.readText) navigator.clipboard.readText().then(offerClipboard, () => {});
    }
  }

  // The transparent, focusable textarea that takes the desktop's keyboard input.
  function keyInput(area) {
    const keys = Object.assign(document.createElement("textarea"), { id: "desktop-keys", tabIndex: -1, spellcheck: false });
    keys.setAttribute("aria-label", "Keyboard input to the remote desktop");
    for (const name of ["autocomplete", "autocapitalize", "autocorrect"]) keys.setAttribute(name, "off");
    area.appendChild(keys);
    return keys;
  }

  // The server's messages start in lower case ("the session ended: ..."); a page shows sentences.
  function sentence(text) {
    return text ? text[0].toUpperCase() + text.slice(1) : text;
  }

  // Base64 of bytes, converted in chunks (one call per byte of a large cursor would overflow
  // the call stack).
  function base64(bytes) {
    let binary = "";
    for (let i = 0; i < bytes.length; i += 0x8000) {
      binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(binary);
  }
})();
