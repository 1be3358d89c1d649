//! A small W3C WebDriver client for headless Chromium, over `reqwest`.
//!
//! [`Browser::start`] runs `chromedriver` on a free port and opens a session
//! of headless Chromium (`--headless=new --no-sandbox
//! --disable-dev-shm-usage`); the methods are the few a test needs to look
//! at a page as a person does: navigate, find elements by CSS selector, read
//! their text, click, type, run a script, take a screenshot. Dropping the
//! browser closes the session (Chromium exits) and kills the driver.
//!
//! Debian's packages `chromium` and `chromium-driver` provide
//! `/usr/bin/chromium` and `/usr/bin/chromedriver` (`SAGA_TEST_CHROMIUM` and
//! `SAGA_TEST_CHROMEDRIVER` name others); when they are missing the harness
//! panics: a browser test fails rather than skips.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::cluster::free_port;

/// The key of an element reference in W3C WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless Chromium session driven through chromedriver.
#[derive(Debug)]
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    http: reqwest::Client,
    closed: bool,
}

/// An element of the current page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element(String);

fn binary(var: &str, default: &str) -> String {
    let path = std::env::var(var).unwrap_or_else(|_| default.to_owned());
    assert!(
        Path::new(&path).exists(),
        "{path} is missing: the browser tests need Debian's chromium and chromium-driver \
         (apt-get install chromium chromium-driver; scripts/test installs them when missing), \
         or {var} naming another binary"
    );
    path
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session with a
    /// 1280x900 window.
    ///
    /// # Panics
    /// When Chromium or chromedriver is missing or does not start.
    pub async fn start() -> Self {
        let chromium = binary("SAGA_TEST_CHROMIUM", "/usr/bin/chromium");
        let chromedriver = binary("SAGA_TEST_CHROMEDRIVER", "/usr/bin/chromedriver");
        let port = free_port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{chromedriver} does not start: {e}"));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("HTTP client");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http.get(format!("{base}/status")).send().await
                && let Ok(status) = r.json::<Value>().await
                && status["value"]["ready"] == true
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver on port {port} did not become ready within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--disable-gpu",
                    "--window-size=1280,900",
                    "--force-device-scale-factor=1",
                    "--lang=en-US",
                ],
            },
        }}});
        let answer = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .expect("chromedriver answers")
            .json::<Value>()
            .await
            .expect("JSON from chromedriver");
        let session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("Chromium did not start: {answer}"))
            .to_owned();
        Self {
            driver,
            port,
            session,
            http,
            closed: false,
        }
    }

    fn url(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}/session/{}{path}",
            self.port, self.session
        )
    }

    /// Sends one command; returns its `value` or the WebDriver error.
    async fn command(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Value> {
        let mut request = self.http.request(method, self.url(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("chromedriver answers");
        let ok = response.status().is_success();
        let mut answer = response
            .json::<Value>()
            .await
            .expect("JSON from chromedriver");
        let value = answer["value"].take();
        if ok { Ok(value) } else { Err(value) }
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.command(reqwest::Method::POST, path, Some(body))
            .await
            .unwrap_or_else(|e| panic!("WebDriver POST {path} failed: {e}"))
    }

    async fn get(&self, path: &str) -> Value {
        self.command(reqwest::Method::GET, path, None)
            .await
            .unwrap_or_else(|e| panic!("WebDriver GET {path} failed: {e}"))
    }

    /// Loads `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    /// The current URL.
    pub async fn current_url(&self) -> String {
        self.get("/url")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The page's title.
    pub async fn title(&self) -> String {
        self.get("/title")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Reloads the page.
    pub async fn refresh(&self) {
        self.post("/refresh", json!({})).await;
    }

    /// The first element matching `css`, if any.
    pub async fn try_find(&self, css: &str) -> Option<Element> {
        let body = json!({ "using": "css selector", "value": css });
        let found = self
            .command(reqwest::Method::POST, "/element", Some(body))
            .await
            .ok()?;
        found[ELEMENT].as_str().map(|id| Element(id.to_owned()))
    }

    /// The first element matching `css`.
    ///
    /// # Panics
    /// When there is none.
    pub async fn find(&self, css: &str) -> Element {
        match self.try_find(css).await {
            Some(element) => element,
            None => panic!("no element matches `{css}` on {}", self.current_url().await),
        }
    }

    /// Every element matching `css`.
    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        let body = json!({ "using": "css selector", "value": css });
        self.post("/elements", body)
            .await
            .as_array()
            .map(|all| {
                all.iter()
                    .filter_map(|e| e[ELEMENT].as_str())
                    .map(|id| Element(id.to_owned()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The text of `element` as rendered (what a person reads).
    pub async fn text(&self, element: &Element) -> String {
        let value = self.get(&format!("/element/{}/text", element.0)).await;
        value.as_str().unwrap_or_default().to_owned()
    }

    /// The text of the first element matching `css`, or `None` when there is
    /// none or the page changed under the read (a reload, say).
    pub async fn try_text_of(&self, css: &str) -> Option<String> {
        let element = self.try_find(css).await?;
        let value = self
            .command(
                reqwest::Method::GET,
                &format!("/element/{}/text", element.0),
                None,
            )
            .await
            .ok()?;
        value.as_str().map(str::to_owned)
    }

    /// The text of the first element matching `css`.
    pub async fn text_of(&self, css: &str) -> String {
        let element = self.find(css).await;
        self.text(&element).await
    }

    /// The texts of every element matching `css`.
    pub async fn texts_of(&self, css: &str) -> Vec<String> {
        let mut texts = Vec::new();
        for element in self.find_all(css).await {
            texts.push(self.text(&element).await);
        }
        texts
    }

    /// An attribute of `element`.
    pub async fn attribute(&self, element: &Element, name: &str) -> Option<String> {
        let value = self
            .get(&format!("/element/{}/attribute/{name}", element.0))
            .await;
        value.as_str().map(str::to_owned)
    }

    /// A DOM property of `element` (`value` of an input as typed, say).
    pub async fn property(&self, element: &Element, name: &str) -> Value {
        self.get(&format!("/element/{}/property/{name}", element.0))
            .await
    }

    /// Whether `element` is enabled (not `disabled`).
    pub async fn is_enabled(&self, element: &Element) -> bool {
        self.get(&format!("/element/{}/enabled", element.0)).await == true
    }

    /// Clicks `element`.
    pub async fn click(&self, element: &Element) {
        self.post(&format!("/element/{}/click", element.0), json!({}))
            .await;
    }

    /// Empties an input.
    pub async fn clear(&self, element: &Element) {
        self.post(&format!("/element/{}/clear", element.0), json!({}))
            .await;
    }

    /// Types `text` into `element`.
    pub async fn type_text(&self, element: &Element, text: &str) {
        self.post(
            &format!("/element/{}/value", element.0),
            json!({ "text": text }),
        )
        .await;
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its result.
    pub async fn execute(&self, script: &str, args: Value) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": args }))
            .await
    }

    /// Polls until the text of the first element matching `css` satisfies
    /// `accept`, for at most `limit`; returns the last text read.
    ///
    /// # Panics
    /// When the text does not come within `limit`.
    pub async fn wait_text(
        &self,
        css: &str,
        limit: Duration,
        accept: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let text = self.try_text_of(css).await.unwrap_or_default();
            if accept(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "`{css}` on {} still reads {text:?} after {limit:?}",
                self.current_url().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Writes a PNG of the whole page (the window is resized to the page's
    /// height, at most 4000 px) to `path`.
    ///
    /// # Panics
    /// When the screenshot fails or the file cannot be written.
    pub async fn screenshot(&self, path: &Path) {
        // The window's height is the page's plus the browser's own frame.
        let sizes = self
            .execute(
                "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight];",
                json!([]),
            )
            .await;
        let page = sizes[0].as_u64().unwrap_or(900);
        let frame = sizes[1].as_u64().unwrap_or(0);
        let height = (page + frame).clamp(300, 4_000);
        self.post("/window/rect", json!({ "width": 1280, "height": height }))
            .await;
        let data = self.get("/screenshot").await;
        let png =
            decode_base64(data.as_str().unwrap_or_default()).expect("the screenshot is base64");
        std::fs::write(path, png)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        self.post("/window/rect", json!({ "width": 1280, "height": 900 }))
            .await;
    }

    /// Closes the session (Chromium exits) and stops the driver.
    pub async fn quit(mut self) {
        let _ = self.command(reqwest::Method::DELETE, "", None).await;
        self.closed = true;
        let _ = self.driver.kill().await;
    }
}

impl Drop for Browser {
    /// A test that panics still closes Chromium: the session is deleted with
    /// a plain blocking HTTP request (no runtime needed), then the driver is
    /// killed (`kill_on_drop`).
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let request = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
                self.session, self.port
            );
            if stream.write_all(request.as_bytes()).is_ok() {
                let mut answer = Vec::new();
                let _ = stream.read_to_end(&mut answer);
            }
        }
    }
}

/// Decodes standard base64 (with or without padding); `None` if malformed.
#[must_use]
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    fn sextet(c: u8) -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    }
    let bytes: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let bytes = bytes
        .strip_suffix(b"==")
        .or_else(|| bytes.strip_suffix(b"="))
        .unwrap_or(&bytes);
    if bytes.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= sextet(*c)? << (18 - 6 * i);
        }
        let full = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&full[..chunk.len() - 1]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::decode_base64;

    #[test]
    fn base64_decodes() {
        assert_eq!(decode_base64("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(decode_base64("aGVsbG8h").as_deref(), Some(&b"hello!"[..]));
        assert_eq!(decode_base64("aGk=").as_deref(), Some(&b"hi"[..]));
        assert_eq!(decode_base64("").as_deref(), Some(&b""[..]));
        assert_eq!(decode_base64("a$=="), None);
    }
}
