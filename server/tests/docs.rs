//! `GET /docs` in a real browser: headless Chromium, driven over the DevTools protocol,
//! loads the page and shows every operation of `/openapi.json` with its parameters, body
//! and responses, fetches nothing but the page itself, and draws something (a screenshot
//! that is not blank).

mod common;

use base64::Engine as _;
use common::{Server, Services};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A headless Chromium with its DevTools endpoint, killed on drop.
struct Chromium {
    child: std::process::Child,
    profile: std::path::PathBuf,
    port: u16,
}

impl Chromium {
    fn start() -> Chromium {
        let binary = ["chromium", "chromium-browser"]
            .into_iter()
            .find(|c| percore_testkit::on_path(c).is_some())
            .expect("headless Chromium (Debian package chromium; `./dev test` installs it)");
        let profile = std::env::temp_dir().join(format!("percore-docs-chromium-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).unwrap();
        let child = std::process::Command::new(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
            ])
            .args(["--remote-debugging-port=0", "--window-size=1280,1600"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // With port 0 Chromium picks one and writes it to DevToolsActivePort.
        let started = Instant::now();
        let port = loop {
            let written = std::fs::read_to_string(profile.join("DevToolsActivePort")).unwrap_or_default();
            if let Some(port) = written.lines().next().and_then(|l| l.parse().ok()) {
                break port;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "Chromium did not open DevTools"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Chromium { child, profile, port }
    }

    /// The WebSocket address of its (only) page.
    fn page_socket(&self) -> String {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // Chromium builds the page's address from the Host it is asked with.
        let request = format!("GET /json/list HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n", self.port);
        let targets = common::request_on(&stream, &request).json();
        let page = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .unwrap();
        page["webSocketDebuggerUrl"].as_str().unwrap().to_string()
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

type Socket = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>;

/// A DevTools session: commands by id, and every event seen while waiting for answers.
struct DevTools {
    socket: Socket,
    next_id: u64,
    events: Vec<Value>,
}

impl DevTools {
    fn connect(url: &str) -> DevTools {
        let (socket, _) = tungstenite::connect(url).expect("DevTools WebSocket");
        if let tungstenite::stream::MaybeTlsStream::Plain(stream) = socket.get_ref() {
            stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        }
        DevTools {
            socket,
            next_id: 1,
            events: Vec::new(),
        }
    }

    fn next_message(&mut self) -> Value {
        loop {
            match self.socket.read().expect("DevTools message") {
                tungstenite::Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
                _ => continue,
            }
        }
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let command = json!({"id": id, "method": method, "params": params}).to_string();
        self.socket.send(tungstenite::Message::Text(command.into())).unwrap();
        loop {
            let message = self.next_message();
            if message["id"] == id {
                assert!(message.get("error").is_none(), "{method}: {message}");
                return message["result"].clone();
            }
            self.events.push(message);
        }
    }

    fn wait_for_event(&mut self, method: &str, limit: Duration) {
        let started = Instant::now();
        while !self.events.iter().any(|e| e["method"] == method) {
            assert!(started.elapsed() < limit, "no {method} within {limit:?}");
            let message = self.next_message();
            self.events.push(message);
        }
    }

    fn evaluate(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        assert!(result.get("exceptionDetails").is_none(), "{expression}: {result}");
        result["result"]["value"].clone()
    }
}

#[test]
fn the_docs_page_shows_every_operation_fetches_nothing_else_and_renders() {
    let services = Services::start();
    let server = Server::start(&services, "");
    let spec = server.get("/openapi.json").json();
    let docs = server.get("/docs");
    assert_eq!(docs.status, 200);
    assert_eq!(docs.header("content-type"), Some("text/html; charset=utf-8"));
    let policy = docs.header("content-security-policy").unwrap_or_default();
    assert!(policy.contains("default-src 'none'"), "{policy}");

    let chromium = Chromium::start();
    let mut devtools = DevTools::connect(&chromium.page_socket());
    for domain in ["Network.enable", "Page.enable", "Runtime.enable", "Log.enable"] {
        devtools.call(domain, json!({}));
    }
    let url = format!("http://127.0.0.1:{}/docs", server.port);
    devtools.call("Page.navigate", json!({"url": url}));
    devtools.wait_for_event("Page.loadEventFired", Duration::from_secs(30));

    // Every operation of the document, shown with its method, path, parameters, body and
    // every response status.
    let shown = devtools.evaluate(
        "Object.fromEntries(Array.from(document.querySelectorAll('section[data-operation]')).map(s => \
         [s.dataset.operation, {text: s.innerText, height: s.getBoundingClientRect().height}]))",
    );
    let mut documented = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let id = operation["operationId"].as_str().unwrap();
            documented.insert(id.to_string());
            let section = &shown[id];
            let text = section["text"]
                .as_str()
                .unwrap_or_else(|| panic!("{id} is not on the page"));
            assert!(section["height"].as_f64().unwrap() > 40.0, "{id} is not drawn");
            assert!(
                text.contains(&method.to_uppercase()) && text.contains(path.as_str()),
                "{id}: {text}"
            );
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                let name = parameter["name"].as_str().unwrap();
                assert!(text.contains(name), "{id}: parameter {name} missing");
            }
            if let Some(content) = operation["requestBody"]["content"].as_object() {
                for (media_type, media) in content {
                    assert!(text.contains(media_type.as_str()), "{id}: body {media_type} missing");
                    if let Some(reference) = media["schema"]["$ref"].as_str() {
                        let schema = reference.rsplit('/').next().unwrap();
                        assert!(text.contains(schema), "{id}: body schema {schema} missing");
                    }
                }
            }
            for status in operation["responses"].as_object().unwrap().keys() {
                assert!(text.contains(status.as_str()), "{id}: response {status} missing");
            }
        }
    }
    let on_page: BTreeSet<String> = shown.as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        on_page, documented,
        "operations on the page (left) vs in openapi.json (right)"
    );

    // The error codes, every schema, and the link to the document.
    let codes = devtools.evaluate("Array.from(document.querySelectorAll('[data-code]')).map(r => r.dataset.code)");
    for code in spec["x-error-codes"]["codes"].as_array().unwrap() {
        assert!(
            codes.as_array().unwrap().contains(&code["code"]),
            "error code {} missing",
            code["code"]
        );
    }
    for schema in spec["components"]["schemas"].as_object().unwrap().keys() {
        let found = devtools.evaluate(&format!("!!document.getElementById('schema-{schema}')"));
        assert_eq!(found, true, "schema {schema} missing");
    }
    let linked = devtools.evaluate("!!document.querySelector('a[href=\"/openapi.json\"]')");
    assert_eq!(linked, true);

    // Nothing but the page was fetched, nothing failed, and the console stayed clean.
    let screenshot = devtools.call("Page.captureScreenshot", json!({"format": "png"}));
    let requested: Vec<&str> = devtools
        .events
        .iter()
        .filter(|e| e["method"] == "Network.requestWillBeSent")
        .map(|e| e["params"]["request"]["url"].as_str().unwrap())
        .collect();
    assert_eq!(requested, [url.as_str()], "the page fetched more than itself");
    let failed: Vec<&Value> = devtools
        .events
        .iter()
        .filter(|e| e["method"] == "Network.loadingFailed")
        .collect();
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    let statuses: Vec<u64> = devtools
        .events
        .iter()
        .filter(|e| e["method"] == "Network.responseReceived")
        .map(|e| e["params"]["response"]["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [200]);
    let complaints: Vec<&Value> = devtools
        .events
        .iter()
        .filter(|e| {
            (e["method"] == "Log.entryAdded" && e["params"]["entry"]["level"] == "error")
                || (e["method"] == "Runtime.consoleAPICalled" && e["params"]["type"] == "error")
        })
        .collect();
    assert!(complaints.is_empty(), "console errors: {complaints:?}");

    // The screenshot is not blank: text and coloured method badges were drawn.
    let png_bytes = base64::engine::general_purpose::STANDARD
        .decode(screenshot["data"].as_str().unwrap())
        .unwrap();
    let shot = std::env::temp_dir().join(format!("percore-docs-{}.png", std::process::id()));
    std::fs::write(&shot, &png_bytes).unwrap();
    let mut reader = png::Decoder::new(std::io::Cursor::new(&png_bytes)).read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut pixels).unwrap();
    let channels = frame.color_type.samples();
    let pixels: Vec<&[u8]> = pixels[..frame.buffer_size()].chunks(channels).collect();
    let ink = pixels.iter().filter(|p| p[0] < 128 && p[1] < 128 && p[2] < 128).count();
    // The GET badge's green (#1f7a4d).
    let badge = pixels
        .iter()
        .filter(|p| p[0] == 0x1f && p[1] == 0x7a && p[2] == 0x4d)
        .count();
    assert!(
        ink > pixels.len() / 200 && badge > 200,
        "a blank page? {ink} dark pixels, {badge} badge pixels of {} (screenshot: {})",
        pixels.len(),
        shot.display()
    );
    std::fs::remove_file(&shot).unwrap();
}
