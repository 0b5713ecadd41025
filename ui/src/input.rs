//! Keyboard handling: the only place, besides [`App::update`], where the state changes.
//!
//! | key | does |
//! |---|---|
//! | `q` | quit and detach |
//! | Ctrl-C | stop, as SIGINT would outside the TUI ([`Outcome::Stopped`]): the caller detaches its own session and leaves a kept one kept |
//! | `K` | quit and keep the session live |
//! | `↑`/`k`, `↓`/`j`, PgUp, PgDn, Home/`g`, End/`G` | move |
//! | `h`, `s`, `n`, `f` | sort by hits, hits/s, name, first hit (again: reverse) |
//! | `c`, `u` | only hit ("covered") / only never hit ("uncovered"), again: all |
//! | `/` | filter as you type; Enter keeps it, Esc clears it |
//! | `r` | write the JSON report now |
//! | `?` | help |

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::Outcome;
use crate::state::{App, Mode, Show, SortKey};

/// What the event loop must do after a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Nothing beyond redrawing.
    None,
    /// Leave the TUI with this outcome.
    Quit(Outcome),
    /// Call [`Source::write_report`](crate::Source::write_report) and pass the result to
    /// [`App::report_written`].
    WriteReport,
}

impl App {
    /// Applies one key press.
    pub fn handle_key(&mut self, key: KeyEvent) -> Command {
        if key.kind == KeyEventKind::Release {
            return Command::None;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            // Raw mode turns Ctrl-C into a key: it means what SIGINT means outside the TUI.
            return self.quit(Outcome::Stopped);
        }
        match self.mode {
            Mode::Help => {
                // Any key closes help; `q` too, so that a reflexive `q` never detaches.
                self.mode = Mode::Normal;
                Command::None
            }
            Mode::Filter => self.filter_key(key),
            Mode::Normal => self.normal_key(key),
        }
    }

    fn quit(&self, wanted: Outcome) -> Command {
        match &self.ended {
            Some(reason) => Command::Quit(Outcome::SourceEnded(reason.clone())),
            None => Command::Quit(wanted),
        }
    }

    fn normal_key(&mut self, key: KeyEvent) -> Command {
        if self.navigate(key.code) {
            return Command::None;
        }
        match key.code {
            KeyCode::Char('q') => return self.quit(Outcome::Detach),
            KeyCode::Char('K') => return self.quit(Outcome::KeepLive),
            KeyCode::Char('r') => return Command::WriteReport,
            KeyCode::Char('?') => self.mode = Mode::Help,
            KeyCode::Char('/') => self.mode = Mode::Filter,
            KeyCode::Esc if !self.filter.is_empty() => self.set_filter(String::new()),
            KeyCode::Esc if self.ended.is_some() => return self.quit(Outcome::Detach),
            KeyCode::Char('h') => self.sort_by(SortKey::Hits),
            KeyCode::Char('s') => self.sort_by(SortKey::Rate),
            KeyCode::Char('n') => self.sort_by(SortKey::Name),
            KeyCode::Char('f') => self.sort_by(SortKey::FirstHit),
            KeyCode::Char('c') => self.toggle_show(Show::Hit),
            KeyCode::Char('u') => self.toggle_show(Show::NeverHit),
            _ => {}
        }
        Command::None
    }

    /// Movement keys; letters only in normal mode, where they are not typed text.
    fn navigate(&mut self, code: KeyCode) -> bool {
        let page = self.page as isize;
        match code {
            KeyCode::Up => self.move_selection(-1),
            KeyCode::Down => self.move_selection(1),
            KeyCode::PageUp => self.move_selection(-page),
            KeyCode::PageDown => self.move_selection(page),
            KeyCode::Home => self.select_first(),
            KeyCode::End => self.select_last(),
            KeyCode::Char(c) if self.mode == Mode::Normal => match c {
                'k' => self.move_selection(-1),
                'j' => self.move_selection(1),
                'g' => self.select_first(),
                'G' => self.select_last(),
                _ => return false,
            },
            _ => return false,
        }
        true
    }

    fn filter_key(&mut self, key: KeyEvent) -> Command {
        if self.navigate(key.code) {
            return Command::None;
        }
        match key.code {
            KeyCode::Esc => {
                self.mode = Mode::Normal;
                self.set_filter(String::new());
            }
            KeyCode::Enter => self.mode = Mode::Normal,
            KeyCode::Backspace => {
                let mut text = self.filter.clone();
                if text.pop().is_none() {
                    // Backspace on an empty filter leaves filter mode, like a shell prompt.
                    self.mode = Mode::Normal;
                }
                self.set_filter(text);
            }
            KeyCode::Char('u') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                self.set_filter(String::new());
            }
            KeyCode::Char(c) if !key.modifiers.contains(KeyModifiers::CONTROL) => {
                let mut text = self.filter.clone();
                text.push(c);
                self.set_filter(text);
            }
            _ => {}
        }
        Command::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Function, Snapshot};
    use std::time::Duration;

    fn key(c: char) -> KeyEvent {
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
    }

    fn code(c: KeyCode) -> KeyEvent {
        KeyEvent::new(c, KeyModifiers::NONE)
    }

    fn app(n: usize) -> App {
        let mut app = App::new(false);
        app.update(Snapshot {
            attached_for: Duration::from_secs(1),
            new_functions: (0..n)
                .map(|i| Function::new(format!("f{i:03}"), "m"))
                .collect(),
            hits: (0..n as u64).map(|i| i % 3).collect(),
            ..Snapshot::default()
        });
        app.resize(80, 24);
        app
    }

    #[test]
    fn quit_keys() {
        let mut a = app(3);
        assert_eq!(a.handle_key(key('q')), Command::Quit(Outcome::Detach));
        assert_eq!(a.handle_key(key('K')), Command::Quit(Outcome::KeepLive));
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(a.handle_key(ctrl_c), Command::Quit(Outcome::Stopped));
        assert_eq!(a.handle_key(key('r')), Command::WriteReport);
    }

    #[test]
    fn after_the_source_ends_every_quit_says_so() {
        let mut a = app(3);
        a.source_ended("target exited".into());
        let ended = Command::Quit(Outcome::SourceEnded("target exited".into()));
        assert_eq!(a.handle_key(key('K')), ended);
        assert_eq!(a.handle_key(code(KeyCode::Esc)), ended);
    }

    #[test]
    fn help_swallows_the_next_key() {
        let mut a = app(3);
        a.handle_key(key('?'));
        assert_eq!(a.mode(), Mode::Help);
        assert_eq!(a.handle_key(key('q')), Command::None);
        assert_eq!(a.mode(), Mode::Normal);
    }

    #[test]
    fn navigation_is_clamped_and_pages() {
        let mut a = app(100);
        let page = a.page;
        assert!(page > 1);
        a.handle_key(key('k'));
        assert_eq!(a.selected, 0);
        a.handle_key(key('j'));
        a.handle_key(code(KeyCode::Down));
        assert_eq!(a.selected, 2);
        a.handle_key(code(KeyCode::PageDown));
        assert_eq!(a.selected, 2 + page);
        assert_eq!(a.offset, 3);
        a.handle_key(code(KeyCode::End));
        assert_eq!(a.selected, 99);
        assert_eq!(a.offset, 100 - page);
        a.handle_key(code(KeyCode::PageDown));
        assert_eq!(a.selected, 99);
        a.handle_key(code(KeyCode::Home));
        assert_eq!((a.selected, a.offset), (0, 0));
        a.handle_key(code(KeyCode::PageUp));
        assert_eq!(a.selected, 0);
    }

    #[test]
    fn sort_keys_and_reversal() {
        let mut a = app(3);
        assert_eq!(a.sort_order(), (SortKey::Hits, true));
        a.handle_key(key('n'));
        assert_eq!(a.sort_order(), (SortKey::Name, false));
        assert_eq!(a.selected_function(), Some("f000"));
        a.handle_key(key('n'));
        assert_eq!(a.sort_order(), (SortKey::Name, true));
        assert_eq!(a.selected_function(), Some("f002"));
        a.handle_key(key('s'));
        assert_eq!(a.sort_order(), (SortKey::Rate, true));
        a.handle_key(key('f'));
        assert_eq!(a.sort_order(), (SortKey::FirstHit, true));
        a.handle_key(key('h'));
        assert_eq!(a.sort_order(), (SortKey::Hits, true));
    }

    #[test]
    fn filter_as_you_type() {
        let mut a = app(100);
        a.handle_key(key('/'));
        assert_eq!(a.mode(), Mode::Filter);
        // Letters are text here, not commands.
        for c in "f04".chars() {
            a.handle_key(key(c));
        }
        assert_eq!(a.filters().0, "f04");
        assert_eq!(a.visible_functions(), 10);
        a.handle_key(code(KeyCode::Backspace));
        assert_eq!(a.visible_functions(), 100);
        a.handle_key(key('4'));
        a.handle_key(key('2'));
        assert_eq!(a.visible_functions(), 1);
        a.handle_key(code(KeyCode::Enter));
        assert_eq!(a.mode(), Mode::Normal);
        assert_eq!(a.visible_functions(), 1);
        // Esc in normal mode clears a kept filter.
        a.handle_key(code(KeyCode::Esc));
        assert_eq!(a.visible_functions(), 100);
        // Esc while typing clears and leaves.
        a.handle_key(key('/'));
        a.handle_key(key('x'));
        assert_eq!(a.visible_functions(), 0);
        a.handle_key(code(KeyCode::Esc));
        assert_eq!((a.mode(), a.visible_functions()), (Mode::Normal, 100));
    }

    #[test]
    fn hit_toggles() {
        let mut a = app(9);
        a.handle_key(key('c'));
        assert_eq!(a.filters().1, Show::Hit);
        assert_eq!(a.visible_functions(), 6);
        a.handle_key(key('u'));
        assert_eq!(a.filters().1, Show::NeverHit);
        assert_eq!(a.visible_functions(), 3);
        a.handle_key(key('u'));
        assert_eq!(a.visible_functions(), 9);
    }

    #[test]
    fn key_releases_are_ignored() {
        let mut a = app(3);
        let mut q = key('q');
        q.kind = KeyEventKind::Release;
        assert_eq!(a.handle_key(q), Command::None);
    }
}
