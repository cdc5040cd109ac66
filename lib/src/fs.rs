//! Files for handlers that serve them: opened beneath a root directory and
//! never outside it, whatever the request's path says.
//!
//! ```no_run
//! use std::path::Path;
//! let root_path = Path::new("/srv/www");
//! let root = std::fs::File::open(root_path)?;
//! // `..`, absolute paths and symlinks that leave the root are refused
//! // with `PermissionDenied`.
//! let file = gaidaros::fs::open_beneath(&root, root_path, Path::new("docs/index.html"))?;
//! # drop(file);
//! # Ok::<(), std::io::Error>(())
//! ```

pub use crate::sys::open_beneath;
