//! Building HTML where escaping cannot be forgotten.
//!
//! [`Html`] is the only way the UI writes a page. Tag and attribute *names*
//! are `&'static str` (literals in this crate, never data); every attribute
//! *value* and every piece of text goes through [`escape`]. There is no
//! method that inserts a runtime string unescaped, so saga data (user input)
//! can only ever appear as text.

use std::fmt::{self, Display, Write};

/// One attribute: a static name and a value that is escaped when written.
pub(crate) type Attr<'a> = (&'static str, &'a dyn Display);

/// An HTML document or fragment under construction.
#[derive(Debug, Default)]
pub(crate) struct Html {
    out: String,
}

impl Html {
    /// An empty document.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The `<!doctype html>` line.
    pub(crate) fn doctype(&mut self) -> &mut Self {
        self.out.push_str("<!doctype html>\n");
        self
    }

    /// `<tag attrs>`, the children `body` writes, then `</tag>`.
    pub(crate) fn el(
        &mut self,
        tag: &'static str,
        attrs: &[Attr<'_>],
        body: impl FnOnce(&mut Self),
    ) -> &mut Self {
        self.open(tag, attrs);
        body(self);
        self.close(tag)
    }

    /// `<tag attrs>text</tag>` with `text` escaped. Never for `script` or
    /// `style`, whose content is not HTML: escaping does not apply there.
    pub(crate) fn text_el(
        &mut self,
        tag: &'static str,
        attrs: &[Attr<'_>],
        text: impl Display,
    ) -> &mut Self {
        debug_assert!(
            !matches!(tag, "script" | "style"),
            "no text inside <{tag}>: escaping does not protect it"
        );
        self.open(tag, attrs);
        self.text(text);
        self.close(tag)
    }

    /// A void element (`<input ...>`, `<meta ...>`): no children, no end tag.
    pub(crate) fn void(&mut self, tag: &'static str, attrs: &[Attr<'_>]) -> &mut Self {
        self.open(tag, attrs)
    }

    /// `<tag attrs></tag>`: an element without children that is not void
    /// (SVG shapes, an empty table cell).
    pub(crate) fn empty(&mut self, tag: &'static str, attrs: &[Attr<'_>]) -> &mut Self {
        self.open(tag, attrs);
        self.close(tag)
    }

    /// Text, escaped.
    pub(crate) fn text(&mut self, text: impl Display) -> &mut Self {
        // Writing into a String cannot fail.
        let _ = write!(Escaper(&mut self.out), "{text}");
        self
    }

    /// The finished markup.
    pub(crate) fn finish(self) -> String {
        self.out
    }

    fn open(&mut self, tag: &'static str, attrs: &[Attr<'_>]) -> &mut Self {
        debug_assert!(is_name(tag), "bad tag name {tag:?}");
        self.out.push('<');
        self.out.push_str(tag);
        for (name, value) in attrs {
            debug_assert!(is_name(name), "bad attribute name {name:?}");
            self.out.push(' ');
            self.out.push_str(name);
            self.out.push_str("=\"");
            let _ = write!(Escaper(&mut self.out), "{value}");
            self.out.push('"');
        }
        self.out.push('>');
        self
    }

    fn close(&mut self, tag: &'static str) -> &mut Self {
        self.out.push_str("</");
        self.out.push_str(tag);
        self.out.push('>');
        self
    }
}

/// Tag and attribute names the builder accepts: ASCII letters, digits, `-`, `:`.
fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ':')
}

/// `text` with `&`, `<`, `>`, `"` and `'` replaced by character references:
/// safe as element text and as a quoted attribute value.
#[cfg(test)]
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let _ = Escaper(&mut out).write_str(text);
    out
}

/// A writer that escapes everything written through it.
struct Escaper<'a>(&'a mut String);

impl Write for Escaper<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            match c {
                '&' => self.0.push_str("&amp;"),
                '<' => self.0.push_str("&lt;"),
                '>' => self.0.push_str("&gt;"),
                '"' => self.0.push_str("&quot;"),
                '\'' => self.0.push_str("&#39;"),
                c => self.0.push(c),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: &str = r#"<script>alert("x")</script> & 'quoted' "#;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape(HOSTILE),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;quoted&#39; "
        );
        let mut html = Html::new();
        html.text_el("td", &[], HOSTILE);
        let out = html.finish();
        assert!(!out.contains("<script"), "{out}");
        assert!(out.starts_with("<td>&lt;script&gt;"), "{out}");
    }

    #[test]
    fn attribute_values_cannot_break_out_of_their_quotes() {
        let value = r#"x" onmouseover="alert(1)"#;
        let mut html = Html::new();
        html.void("input", &[("value", &value)]);
        assert_eq!(
            html.finish(),
            r#"<input value="x&quot; onmouseover=&quot;alert(1)">"#
        );
    }

    #[test]
    fn display_values_are_escaped_while_formatted() {
        struct Sneaky;
        impl Display for Sneaky {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a<b>")?;
                f.write_str("&c")
            }
        }
        let mut html = Html::new();
        html.text(Sneaky);
        assert_eq!(html.finish(), "a&lt;b&gt;&amp;c");
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "escaping does not protect it")]
    fn text_inside_a_script_element_is_refused() {
        Html::new().text_el("script", &[], "alert(1)");
    }

    #[test]
    fn elements_nest_and_close() {
        let mut html = Html::new();
        html.el("ul", &[("class", &"list")], |h| {
            for item in ["a", "<b>"] {
                h.text_el("li", &[], item);
            }
        });
        assert_eq!(
            html.finish(),
            r#"<ul class="list"><li>a</li><li>&lt;b&gt;</li></ul>"#
        );
    }
}
