//! The real terminal: raw mode and the alternate screen, always given back (on scope exit and
//! from the panic hook), and the event loop that drives an [`App`] from a [`Source`].

use std::io::{self, Stdout, Write};
use std::panic::{self, PanicHookInfo};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, select};
use crossterm::event::{self, Event as TermEvent};
use crossterm::terminal::{self, EnterAlternateScreen, LeaveAlternateScreen};
use crossterm::{cursor, execute};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;

use crate::input::Command;
use crate::state::App;
use crate::{Error, Options, Outcome, Source};

/// Whether this process has the terminal in raw mode now; makes restoring idempotent, so the
/// panic hook and the guard's `Drop` can both try.
static RAW: AtomicBool = AtomicBool::new(false);

type Hook = dyn Fn(&PanicHookInfo<'_>) + Sync + Send + 'static;

/// Puts the terminal back as the shell expects it. Safe to call more than once.
fn restore() -> io::Result<()> {
    if RAW.swap(false, Ordering::SeqCst) {
        let raw = terminal::disable_raw_mode();
        let mut out = io::stdout();
        let screen = execute!(out, LeaveAlternateScreen, cursor::Show);
        out.flush()?;
        raw?;
        screen?;
    }
    Ok(())
}

/// Owns the terminal's raw mode: created by [`TerminalGuard::enter`], undone by `Drop` and,
/// should anything panic meanwhile, by a panic hook installed for the guard's lifetime.
struct TerminalGuard {
    previous_hook: Arc<Hook>,
}

impl TerminalGuard {
    fn enter() -> Result<Self, Error> {
        let previous_hook: Arc<Hook> = Arc::from(panic::take_hook());
        let chained = Arc::clone(&previous_hook);
        panic::set_hook(Box::new(move |info| {
            // Restore first, so the panic message lands on a normal screen.
            let _ = restore();
            chained(info);
        }));
        let guard = Self { previous_hook };
        RAW.store(true, Ordering::SeqCst);
        terminal::enable_raw_mode().map_err(Error::Setup)?;
        execute!(io::stdout(), EnterAlternateScreen, cursor::Hide).map_err(Error::Setup)?;
        Ok(guard)
    }

    /// Restores the terminal and reports a failure (`Drop` can only ignore it).
    fn leave(self) -> Result<(), Error> {
        restore().map_err(Error::Restore)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        let _ = restore();
        // The hook can only be swapped outside a panic; during one the process is on its way
        // out through the hook we installed, which is what we want anyway.
        if !thread::panicking() {
            let _ = panic::take_hook();
            let previous = Arc::clone(&self.previous_hook);
            panic::set_hook(Box::new(move |info| previous(info)));
        }
    }
}

/// The thread that reads terminal events, polling so that it notices `stop` quickly. Dropping
/// it stops and joins the thread, so no reader is left consuming the caller's stdin, even when
/// `run` unwinds from a panic that the caller catches.
struct InputThread {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl InputThread {
    fn spawn() -> Result<(Self, Receiver<io::Result<TermEvent>>), Error> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let handle = thread::Builder::new()
            .name("xcover-ui-input".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    match event::poll(Duration::from_millis(50)) {
                        Ok(false) => {}
                        Ok(true) => {
                            if tx.send(event::read()).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    }
                }
            })
            .map_err(Error::Setup)?;
        let thread = Self {
            stop,
            handle: Some(handle),
        };
        Ok((thread, rx))
    }
}

impl Drop for InputThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// Takes the next snapshot unless the source has already ended.
fn poll(app: &mut App, source: &mut impl Source) {
    if !app.has_ended() {
        match source.snapshot() {
            Ok(s) => app.update(s),
            Err(e) => app.source_ended(e),
        }
    }
}

pub(crate) fn run(mut source: impl Source, opts: Options) -> Result<Outcome, Error> {
    let mut app = App::new(opts.color);
    poll(&mut app, &mut source);

    let guard = TerminalGuard::enter()?;
    let mut terminal = Terminal::new(CrosstermBackend::new(io::stdout())).map_err(Error::Setup)?;
    let size = terminal.size().map_err(Error::Setup)?;
    app.resize(size.width, size.height);

    let (input_thread, input) = InputThread::spawn()?;
    let result = event_loop(&mut app, &mut source, &mut terminal, &opts, &input);

    drop(input_thread);
    let left = guard.leave();
    let outcome = result?;
    left?;
    Ok(outcome)
}

/// One select over keyboard input and the ticker; a frame is drawn after each wake-up
/// (ratatui sends only the cells that changed, so nothing flickers).
fn event_loop(
    app: &mut App,
    source: &mut impl Source,
    terminal: &mut Terminal<CrosstermBackend<Stdout>>,
    opts: &Options,
    input: &Receiver<io::Result<TermEvent>>,
) -> Result<Outcome, Error> {
    let ticker = crossbeam_channel::tick(opts.tick);
    loop {
        if opts.stop.load(Ordering::Relaxed) {
            return Ok(Outcome::Stopped);
        }
        terminal.draw(|f| app.draw(f)).map_err(Error::Draw)?;
        select! {
            recv(input) -> msg => match msg {
                Ok(Ok(TermEvent::Key(key))) => match app.handle_key(key) {
                    Command::None => {}
                    Command::Quit(outcome) => return Ok(outcome),
                    Command::WriteReport => {
                        let r = source.write_report();
                        app.report_written(r);
                    }
                },
                Ok(Ok(TermEvent::Resize(w, h))) => app.resize(w, h),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(Error::Input(e)),
                Err(_) => return Err(Error::Input(io::Error::other("the input thread ended"))),
            },
            recv(ticker) -> _ => poll(app, source),
        }
    }
}
