//! Directory listing, owned here from the layers to the reply: `merge` builds a
//! directory's merged listing, `listing` keeps the snapshot an open directory reads and
//! its cookies, and `serve` hands the entries after an offset to a sink (the adapter's
//! reply buffer), with the lookup references a READDIRPLUS entry gives the kernel.

mod listing;
mod merge;
mod serve;

pub use listing::{name_cookie, Listing, Recheck};
pub use merge::DirEntry;
pub use serve::{DirPlusSink, DirSink};
