//! Scope names and the paths they make (`orders/order-17/reserve`).
//!
//! A named scope owns one [`PathLink`]: its name and a link to the nearest named ancestor's.
//! An unnamed scope shares the link of its nearest named ancestor. So a scope finds its path in
//! O(1), whatever its depth, and a cause can name its origin by holding a link: the string is
//! only built when someone reads it ([`Cause::origin`](crate::Cause::origin), a `Display`).
//! Links hold names only, never scopes, so a cause that names a scope never keeps it alive.

use std::fmt;
use std::sync::Arc;

/// A scope's or a task's name: borrowed when it is a literal, shared otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Name {
    Static(&'static str),
    Shared(Arc<str>),
}

impl std::ops::Deref for Name {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            Name::Static(name) => name,
            Name::Shared(name) => name,
        }
    }
}

impl From<std::borrow::Cow<'static, str>> for Name {
    fn from(name: std::borrow::Cow<'static, str>) -> Name {
        match name {
            std::borrow::Cow::Borrowed(name) => Name::Static(name),
            std::borrow::Cow::Owned(name) => Name::Shared(Arc::from(name)),
        }
    }
}

/// One named scope's segment of a path, linked to the segment of its nearest named ancestor.
#[derive(Debug)]
pub(crate) struct PathLink {
    name: Name,
    parent: Option<Arc<PathLink>>,
}

impl PathLink {
    /// The path of a scope named `name` whose parent's path is `parent`: a new link, or the
    /// parent's own when the scope adds no segment (no name, or an empty one).
    pub(crate) fn child(
        parent: Option<&Arc<PathLink>>,
        name: Option<Name>,
    ) -> Option<Arc<PathLink>> {
        match name {
            Some(name) if !name.is_empty() => Some(Arc::new(PathLink {
                name,
                parent: parent.cloned(),
            })),
            _ => parent.cloned(),
        }
    }

    /// A path that is text already, as one segment: decoded from a record, or built by hand.
    pub(crate) fn text(text: Arc<str>) -> Arc<PathLink> {
        Arc::new(PathLink {
            name: Name::Shared(text),
            parent: None,
        })
    }

    /// Whether this link is the path of a child named `name` of a scope whose path is `parent`.
    /// A link never changes, so every such child can share it.
    pub(crate) fn is_child_of(&self, parent: Option<&Arc<PathLink>>, name: &str) -> bool {
        let same_parent = match (&self.parent, parent) {
            (Some(own), Some(parent)) => Arc::ptr_eq(own, parent),
            (own, parent) => own.is_none() && parent.is_none(),
        };
        same_parent && *self.name == *name
    }

    /// The path's only name, if it has one name.
    pub(crate) fn single_name(&self) -> Option<&str> {
        self.parent.is_none().then_some(&*self.name)
    }

    /// The names of this path, innermost first.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::successors(Some(self), |link| link.parent.as_deref()).map(|link| &*link.name)
    }
}

impl Drop for PathLink {
    fn drop(&mut self) {
        // Iteratively: the last cause or scope of a 100 000-deep named chain releases the whole
        // chain of links, which must not recurse.
        let mut next = self.parent.take();
        while let Some(link) = next {
            next = Arc::into_inner(link).and_then(|mut link| link.parent.take());
        }
    }
}

/// Writes `path`: its names, outermost first, joined by `/`; nothing for no path.
pub(crate) fn write(path: Option<&PathLink>, out: &mut impl fmt::Write) -> fmt::Result {
    let Some(path) = path else {
        return Ok(());
    };
    let mut names: Vec<&str> = path.names().collect();
    names.reverse();
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            out.write_char('/')?;
        }
        out.write_str(name)?;
    }
    Ok(())
}

/// `path` rendered as a string.
pub(crate) fn render(path: &PathLink) -> String {
    let mut out = String::new();
    write(Some(path), &mut out).expect("writing to a String cannot fail");
    out
}
