//! A headless Chromium driven over the DevTools protocol through a pipe (`--remote-debugging-pipe`:
//! the browser reads commands on fd 3 and writes replies and events on fd 4, each message JSON
//! ended by a NUL), so that a test loads a page as an operator's browser does and reads what it
//! rendered. Every wait is bounded: a browser that does not answer fails the test, it does not
//! hang it.

#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long one command may take.
const ANSWER: Duration = Duration::from_secs(30);

/// Where Debian's `chromium` package (or another Chromium) puts the browser.
const BINARIES: &[&str] = &[
    "/usr/bin/chromium",
    "/usr/bin/chromium-browser",
    "/usr/bin/google-chrome",
];

pub struct Browser {
    child: Child,
    commands: File,
    replies: mpsc::Receiver<Value>,
    next_id: u64,
    /// Events received while waiting for replies, oldest first.
    pub events: Vec<Value>,
    profile: tempfile::TempDir,
}

/// One page (a target the browser attached to): commands go to its session.
pub struct Page {
    session: String,
}

fn pipe() -> (RawFd, RawFd) {
    let mut fds = [0; 2];
    // Close-on-exec, so that no other child of the test process inherits them.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    (fds[0], fds[1])
}

impl Browser {
    /// Starts a headless Chromium with a profile of its own.
    pub fn launch() -> Browser {
        let binary = BINARIES
            .iter()
            .find(|b| std::path::Path::new(b).exists())
            .unwrap_or_else(|| {
                panic!(
                    "the dashboard test needs a headless Chromium: install Debian's package \
                     (apt-get install chromium), looked for {BINARIES:?}"
                )
            });
        let profile = tempfile::tempdir().unwrap();
        let (browser_reads, we_write) = pipe();
        let (we_read, browser_writes) = pipe();
        let stderr = File::create(profile.path().join("stderr.log")).unwrap();
        let mut command = Command::new(binary);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--no-default-browser-check",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
                "--window-size=1400,2000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        unsafe {
            command.pre_exec(move || {
                // Out of the way of 3 and 4 first, whatever numbers the pipes got.
                let r = libc::fcntl(browser_reads, libc::F_DUPFD, 10);
                let w = libc::fcntl(browser_writes, libc::F_DUPFD, 10);
                if r < 0 || w < 0 || libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        unsafe {
            libc::close(browser_reads);
            libc::close(browser_writes);
        }
        let commands = unsafe { File::from_raw_fd(we_write) };
        let replies = unsafe { File::from_raw_fd(we_read) };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(replies);
            loop {
                let mut message = Vec::new();
                match reader.read_until(0, &mut message) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if message.last() == Some(&0) {
                            message.pop();
                        }
                        if let Ok(v) = serde_json::from_slice::<Value>(&message) {
                            if tx.send(v).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        Browser {
            child,
            commands,
            replies: rx,
            next_id: 0,
            events: Vec::new(),
            profile,
        }
    }

    /// What the browser printed on its standard error (for failure messages).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.profile.path().join("stderr.log")).unwrap_or_default()
    }

    /// Sends `method` (to `session`'s page, or the browser) and waits for its result.
    fn send(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            message["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.commands
            .write_all(&bytes)
            .unwrap_or_else(|e| panic!("{method}: the browser is gone ({e})\n{}", self.stderr()));
        let deadline = Instant::now() + ANSWER;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let reply = match self.replies.recv_timeout(left) {
                Ok(r) => r,
                Err(e) => panic!(
                    "{method}: no answer from the browser ({e})\n{}",
                    self.stderr()
                ),
            };
            if reply["id"] == id {
                if let Some(error) = reply.get("error") {
                    panic!("{method}: {error}");
                }
                return reply["result"].clone();
            }
            self.events.push(reply);
        }
    }

    /// Opens a new page on `url`, with the console and errors reported as events.
    pub fn open(&mut self, url: &str, width: u32, height: u32) -> Page {
        let target = self.send(None, "Target.createTarget", json!({"url": "about:blank"}));
        let target = target["targetId"].as_str().unwrap().to_string();
        let attached = self.send(
            None,
            "Target.attachToTarget",
            json!({"targetId": target, "flatten": true}),
        );
        let page = Page {
            session: attached["sessionId"].as_str().unwrap().to_string(),
        };
        for method in ["Page.enable", "Runtime.enable", "Log.enable"] {
            self.send(Some(&page.session), method, json!({}));
        }
        self.send(
            Some(&page.session),
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        );
        self.send(Some(&page.session), "Page.navigate", json!({"url": url}));
        page
    }

    /// The value of JavaScript `expression` in `page` (awaited when it is a promise).
    pub fn eval(&mut self, page: &Page, expression: &str) -> Value {
        let r = self.send(
            Some(&page.session),
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expression}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Waits up to `limit` until `expression` is truthy in `page`; its last value.
    pub fn wait_for(&mut self, page: &Page, expression: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.eval(
                page,
                &format!(
                    "(() => {{ try {{ return {expression}; }} catch (e) {{ return null; }} }})()"
                ),
            );
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return v;
            }
            if Instant::now() > deadline {
                let text = self.eval(page, "document.body ? document.body.innerText : ''");
                panic!(
                    "not within {limit:?}: {expression}\nthe page reads:\n{}",
                    text.as_str().unwrap_or("")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A PNG of the whole page, saved at `path`.
    pub fn screenshot(&mut self, page: &Page, path: &PathBuf) {
        let shot = self.send(
            Some(&page.session),
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        );
        let png = base64_decode(shot["data"].as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(path, png).unwrap();
    }

    /// The errors the page reported: exceptions, console errors, refused loads (a
    /// Content-Security-Policy violation among them).
    pub fn errors(&self) -> Vec<Value> {
        self.events
            .iter()
            .filter(|e| {
                e["method"] == "Runtime.exceptionThrown"
                    || (e["method"] == "Log.entryAdded" && e["params"]["entry"]["level"] == "error")
                    || (e["method"] == "Runtime.consoleAPICalled" && e["params"]["type"] == "error")
            })
            .cloned()
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .map(value)
        .collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, d)| n | (*d as u32) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}
