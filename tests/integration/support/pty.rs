//! A real pseudo-terminal for tests of interactive commands: the command gets the slave side as
//! stdin, stdout, stderr and controlling terminal (its own session, so the kernel sends it
//! SIGWINCH on a resize); the test types into the master and reads what it shows. Every wait
//! has a deadline, so a hang fails the test with the transcript instead of blocking the run.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::pty::Winsize;

pub struct Terminal {
    master: File,
    child: Child,
    output: Arc<Mutex<Vec<u8>>>,
    /// Where the next [`Terminal::expect`] starts looking.
    seen: usize,
}

fn window(rows: u16, cols: u16) -> Winsize {
    Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

fn close_on_exec(fd: &OwnedFd) -> std::io::Result<()> {
    fcntl(fd.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}

impl Terminal {
    /// Starts `command` on a new terminal of `rows` x `cols`.
    pub fn spawn(mut command: Command, rows: u16, cols: u16) -> std::io::Result<Self> {
        let pty = nix::pty::openpty(Some(&window(rows, cols)), None)?;
        // Neither end may leak into processes other tests start meanwhile.
        close_on_exec(&pty.master)?;
        close_on_exec(&pty.slave)?;
        command
            .stdin(Stdio::from(pty.slave.try_clone()?))
            .stdout(Stdio::from(pty.slave.try_clone()?))
            .stderr(Stdio::from(pty.slave));
        // SAFETY: setsid and ioctl are async-signal-safe; nothing here allocates.
        unsafe {
            command.pre_exec(|| {
                nix::unistd::setsid()?;
                if nix::libc::ioctl(0, nix::libc::TIOCSCTTY as _, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn()?;
        // The command holds the parent's copies of the slave; the master reads EOF only once
        // the child's are the last ones.
        drop(command);
        let master = File::from(pty.master);
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone()?;
        let sink = output.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            // EIO once the slave side is closed: the child is gone.
            while let Ok(n) = reader.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .extend_from_slice(&buffer[..n]);
            }
        });
        Ok(Self {
            master,
            child,
            output,
            seen: 0,
        })
    }

    /// Types `text` (use `\r` for Enter, as a keyboard does).
    pub fn send(&mut self, text: &str) -> Result<(), String> {
        self.master
            .write_all(text.as_bytes())
            .and_then(|()| self.master.flush())
            .map_err(|err| format!("cannot type into the terminal: {err}"))
    }

    /// Everything the terminal showed so far.
    pub fn transcript(&self) -> String {
        let output = self
            .output
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        String::from_utf8_lossy(&output).into_owned()
    }

    /// Waits until `needle` shows up after what earlier calls matched.
    pub fn expect(&mut self, needle: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let output = self
                    .output
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                let fresh =
                    String::from_utf8_lossy(&output[self.seen.min(output.len())..]).into_owned();
                if let Some(at) = fresh.find(needle) {
                    // Lossy decoding can change lengths; never move past the real end.
                    self.seen = (self.seen + at + needle.len()).min(output.len());
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{needle:?} did not show within {}s; terminal so far:\n{}",
                    timeout.as_secs(),
                    self.transcript()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sets the window size as a terminal emulator does: the kernel then sends SIGWINCH to
    /// the terminal's foreground process group.
    pub fn resize(&mut self, rows: u16, cols: u16) -> Result<(), String> {
        let size = window(rows, cols);
        // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
        let done = unsafe {
            nix::libc::ioctl(
                self.master.as_raw_fd(),
                nix::libc::TIOCSWINSZ as _,
                &size as *const Winsize,
            )
        };
        if done == -1 {
            return Err(format!(
                "TIOCSWINSZ failed: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    /// The terminal's current settings (the slave's, read through the master).
    pub fn termios(&self) -> Result<nix::sys::termios::Termios, String> {
        nix::sys::termios::tcgetattr(self.master.as_fd()).map_err(|err| err.to_string())
    }

    /// Waits for the command to exit; kills it when `timeout` passes first.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) => {}
                Err(err) => return Err(format!("cannot wait for the command: {err}")),
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(format!(
                    "the command did not exit within {}s (killed); terminal:\n{}",
                    timeout.as_secs(),
                    self.transcript()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
