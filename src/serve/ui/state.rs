//! The UI's state in `Shared`: signed-in sessions and the charts' history. A leaf, so the
//! controller can hold it without importing the UI's handlers.

use crate::serve::ui::history::History;
use crate::serve::ui::session::{Sessions, random_token};

/// Sessions, the charts' history, and the CSRF token of an open server.
pub struct Ui {
    pub sessions: Sessions,
    pub history: History,
    /// The CSRF token of an `auth: { open: true }` server, where nobody signs in.
    pub open_csrf: String,
}

impl Default for Ui {
    fn default() -> Ui {
        Ui {
            sessions: Sessions::default(),
            history: History::default(),
            open_csrf: random_token(),
        }
    }
}
