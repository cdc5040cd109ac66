//! A path -> function table, so other handler crates can serve their own
//! endpoints on an HTTP listener (next to, or instead of, static files).

use std::fmt;
use std::sync::Arc;

use crate::request::Request;
use crate::response::Response;

/// What a route runs: the whole request (head and body) in, a response out.
/// It runs on the loop thread, so it must not block.
pub type RouteFn = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// Routes by path: exact paths first, then the longest matching prefix.
#[derive(Clone, Default)]
pub struct Router {
    exact: Vec<(String, RouteFn)>,
    prefixes: Vec<(String, RouteFn)>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exact: Vec<&str> = self.exact.iter().map(|(p, _)| p.as_str()).collect();
        let prefixes: Vec<&str> = self.prefixes.iter().map(|(p, _)| p.as_str()).collect();
        f.debug_struct("Router")
            .field("exact", &exact)
            .field("prefixes", &prefixes)
            .finish()
    }
}

impl Router {
    /// No routes.
    pub fn new() -> Self {
        Router::default()
    }

    /// Serve `path` exactly (compared with the request's path, still
    /// percent-encoded, without the query). A later route for the same
    /// path replaces the earlier.
    pub fn route(
        mut self,
        path: impl Into<String>,
        f: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> Self {
        let path = path.into();
        self.exact.retain(|(p, _)| *p != path);
        self.exact.push((path, Arc::new(f)));
        self
    }

    /// Serve every path starting with `prefix` (the longest prefix wins).
    pub fn prefix(
        mut self,
        prefix: impl Into<String>,
        f: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> Self {
        let prefix = prefix.into();
        self.prefixes.retain(|(p, _)| *p != prefix);
        self.prefixes.push((prefix, Arc::new(f)));
        self.prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        self
    }

    /// The route for `path`. A linear scan: route tables are a handful of
    /// entries, where comparing strings beats hashing the path.
    pub fn find(&self, path: &str) -> Option<&RouteFn> {
        self.exact
            .iter()
            .find(|(p, _)| p == path)
            .or_else(|| {
                self.prefixes
                    .iter()
                    .find(|(p, _)| path.starts_with(p.as_str()))
            })
            .map(|(_, f)| f)
    }

    /// Is the table empty?
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Status;

    #[test]
    fn exact_then_longest_prefix() {
        let r = Router::new()
            .route("/a", |_| Response::new(Status(201)))
            .prefix("/a", |_| Response::new(Status(202)))
            .prefix("/a/b/", |_| Response::new(Status(203)));
        let req = Request::default();
        let status = |p: &str| r.find(p).map(|f| f(&req).status.0);
        assert_eq!(status("/a"), Some(201));
        assert_eq!(status("/ab"), Some(202));
        assert_eq!(status("/a/b/c"), Some(203));
        assert_eq!(status("/b"), None);
    }
}
