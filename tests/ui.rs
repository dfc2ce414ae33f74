//! The operator's window in a real browser (issue 12): Debian's headless Chromium, driven over
//! WebDriver (chromedriver) by fantoccini. Sign in, see a rollout waiting for approval in the
//! queue, approve it, see the stage change and its receipt; a viewer's action and a CSRF-less
//! POST are refused; the pages read without JavaScript and fit a phone. Screenshots go to
//! `target/ui/` for a person to look at.
#![allow(
    clippy::panic,
    clippy::disallowed_methods,
    reason = "test: failures report with the page; deadlines use real time"
)]

mod support;

use std::process::{Command, Stdio};

use fantoccini::{Client, ClientBuilder, Locator};
use support::prom::{Proc, e2e_available};
use support::*;

fn ui_config() -> String {
    r#"
server: { listen: 127.0.0.1:0, data_dir: "{DATA_DIR}", tick: 50ms }
auth:
  tokens:
    - { name: platform, role: admin,    token_env: STAGEGATE_ADMIN_TOKEN }
    - { name: oncall,   role: operator, token_env: STAGEGATE_OPERATOR_TOKEN }
    - { name: apps,     role: ingest,   token_env: STAGEGATE_INGEST_TOKEN }
    - { name: viewer,   role: viewer,   token_env: STAGEGATE_READ_TOKEN }
segments:
  internal: { match: { team: [support-ops] } }
  everyone: {}
workflows:
  support-reply: { stable: v7, versions: [v7, v8] }
rollouts:
  - name: support-reply-v8
    workflow: support-reply
    baseline: v7
    candidate: v8
    segments: [internal, everyone]
    stages:
      - { name: internal, traffic: { internal: 50 }, min_samples: 200 }
      - { name: canary,   traffic: { internal: 50, everyone: 10 }, approval: manual }
      - { name: full,     traffic: { internal: 100, everyone: 100 }, approval: manual }
    gates:
      - { signal: quality,  stat: mean, min: 0.80, max_drop: 0.05, on_breach: rollback }
      - { signal: fallback, stat: rate, max: 0.05, on_breach: narrow }
    lane: { owner: revenue-ops-lead, repair: "restore the drafts", reenable: { ack: true, cooldown: 1m, healthy_read_only_samples: 20 } }
"#
    .to_string()
}

fn screenshots() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui");
    std::fs::create_dir_all(&dir).expect("target/ui");
    dir
}

async fn shot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("screenshot");
    std::fs::write(screenshots().join(name), png).expect("write screenshot");
}

async fn browser(dir: &std::path::Path) -> (Proc, Client) {
    let port = free_port();
    let driver = Proc(
        Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver"),
    );
    let http = reqwest::Client::new();
    for _ in 0..300 {
        let up = http
            .get(format!("http://127.0.0.1:{port}/status"))
            .send()
            .await;
        if up.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let profile = dir.join("chromium-profile");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-extensions", "--no-first-run",
                "--window-size=1280,1000", format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a WebDriver session");
    (driver, client)
}

async fn sign_in(client: &Client, base: &str, token: &str) {
    client.goto(&format!("{base}/ui")).await.expect("goto");
    assert!(
        client
            .current_url()
            .await
            .expect("url")
            .path()
            .ends_with("/ui/login")
    );
    client
        .find(Locator::Css("#token"))
        .await
        .expect("token field")
        .send_keys(token)
        .await
        .expect("type");
    client
        .find(Locator::Css("form[action='/ui/login'] button"))
        .await
        .expect("button")
        .click()
        .await
        .expect("submit");
    after_navigation(client, "nav[aria-label=main]", "signed in").await;
}

/// Waits for the element `css` on the page a click navigated to. A lookup in flight while the
/// page navigates fails with chromedriver's "aborted by navigation" instead of "no such
/// element", which fantoccini's wait does not retry; that one is retried too.
async fn after_navigation(client: &Client, css: &str, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match client.wait().for_element(Locator::Css(css)).await {
            Ok(_) => return,
            Err(e)
                if format!("{e:?}").contains("aborted by navigation")
                    && std::time::Instant::now() < deadline => {}
            Err(e) => panic!("{what}: {e:?}"),
        }
    }
}

async fn text(client: &Client) -> String {
    client
        .find(Locator::Css("main"))
        .await
        .expect("main")
        .text()
        .await
        .expect("text")
}

#[test]
fn an_operator_approves_in_a_real_browser_and_a_viewer_cannot() {
    if !e2e_available(&["chromium", "chromedriver"]) {
        return;
    }
    let s = Server::start(&ui_config());
    let base = s.base.clone();
    // Enough healthy evidence that the first stage's gates pass: the next stage waits for
    // an operator's approval.
    let events = |tag: &str, version: &str, attrs| {
        support::events(
            tag,
            300,
            version,
            attrs,
            Profile {
                fallback_every: 0,
                ..HEALTHY
            },
        )
    };
    let batch = [events("b", "v7", internal()), events("c", "v8", internal())].concat();
    s.send_events(&batch);
    s.wait_for("the approval wait", |s| {
        s["waiting"]
            .as_str()
            .is_some_and(|w| w.contains("awaiting an operator's promote"))
    });
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(drive(&base, s.dir.path()));
    let status = s.status();
    assert_eq!(status["state"], "progressing", "{status}");
    assert_eq!(status["stage"], "canary", "{status}");
    let receipts = s.receipts();
    let promote = receipts
        .iter()
        .find(|r| r["action"] == "promote")
        .expect("the promote receipt");
    assert_eq!(promote["actor"]["name"], "platform", "{promote}");
    assert!(
        receipts.iter().all(|r| r["action"] != "rollback"),
        "refused actions wrote nothing"
    );
    assert!(
        !s.log().contains(ADMIN) && !s.log().contains(READER),
        "no token in logs"
    );
}

async fn drive(base: &str, dir: &std::path::Path) {
    let base = base.to_string();
    let (_driver, client) = browser(dir).await;
    sign_in(&client, &base, ADMIN).await;
    let list = text(&client).await;
    assert!(
        list.contains("support-reply-v8") && list.contains("internal"),
        "{list}"
    );

    // The queue shows the approval with its evidence and actions.
    client
        .goto(&format!("{base}/ui/queue"))
        .await
        .expect("queue");
    let queue = text(&client).await;
    assert!(
        queue.contains("Approval: awaiting an operator's promote to enter stage canary"),
        "{queue}"
    );
    shot(&client, "queue.png").await;

    // Approve from the rollout's page: the stage changes and the receipt is listed.
    client
        .goto(&format!("{base}/ui/rollouts/support-reply-v8"))
        .await
        .expect("rollout");
    let before = text(&client).await;
    assert!(
        before.contains("quality_mean") && before.contains("pass"),
        "{before}"
    );
    shot(&client, "rollout-waiting.png").await;
    let form = client
        .find(Locator::Css(
            "form[action='/ui/rollouts/support-reply-v8/promote']",
        ))
        .await
        .expect("the promote form");
    form.find(Locator::Css("input[name=reason]"))
        .await
        .expect("reason")
        .send_keys("evidence reviewed in the queue")
        .await
        .expect("type");
    form.find(Locator::Css("button"))
        .await
        .expect("button")
        .click()
        .await
        .expect("approve");
    after_navigation(&client, "p.notice[role=status]", "the receipt notice").await;
    let page = text(&client).await;
    assert!(page.contains("Done: recorded as receipt r-"), "{page}");
    let current = client
        .find(Locator::Css("ol.ladder li[aria-current=step]"))
        .await
        .expect("current stage")
        .text()
        .await
        .expect("text");
    assert_eq!(current, "canary");
    assert!(
        page.contains("evidence reviewed in the queue") && page.contains("promote"),
        "{page}"
    );
    shot(&client, "rollout.png").await;

    // Readable on a phone: nothing wider than the screen but the scrolling tables.
    client.set_window_size(390, 844).await.expect("resize");
    let overflow = client
        .execute(
            "return document.body.scrollWidth - window.innerWidth;",
            vec![],
        )
        .await
        .expect("measure");
    assert!(
        overflow.as_f64().unwrap_or(1.0) <= 0.0,
        "the page overflows a phone by {overflow}"
    );
    shot(&client, "rollout-phone.png").await;
    client.set_window_size(1280, 1000).await.expect("resize");

    // Every action is a real button in a form: reachable by keyboard.
    let buttons = client
        .execute("return Array.from(document.querySelectorAll('form.action button')).filter(b => b.tabIndex >= 0).length;", vec![])
        .await
        .expect("buttons");
    assert!(buttons.as_u64().unwrap_or(0) >= 2, "{buttons}");

    // Sign out, then in as a viewer: no actions shown, and a posted one is refused.
    client
        .find(Locator::Css("form[action='/ui/logout'] button"))
        .await
        .expect("sign out")
        .click()
        .await
        .expect("click");
    after_navigation(&client, "#token", "signed out").await;
    sign_in(&client, &base, READER).await;
    client
        .goto(&format!("{base}/ui/rollouts/support-reply-v8"))
        .await
        .expect("rollout");
    let page = text(&client).await;
    assert!(page.contains("Signed in as a viewer"), "{page}");
    assert!(
        client
            .find(Locator::Css("form[action$='/rollback']"))
            .await
            .is_err()
    );
    let cookie = client
        .get_named_cookie("stagegate_session")
        .await
        .expect("session cookie");
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(format!("{:?}", cookie.same_site()), "Some(Strict)");
    let csrf = client
        .find(Locator::Css("form[action='/ui/logout'] input[name=csrf]"))
        .await
        .expect("csrf")
        .attr("value")
        .await
        .expect("attr")
        .unwrap_or_default();
    let http = reqwest::Client::new();
    let viewer = format!("stagegate_session={}", cookie.value());
    let refused = http
        .post(format!("{base}/ui/rollouts/support-reply-v8/rollback"))
        .header("cookie", &viewer)
        .form(&[("csrf", csrf.as_str()), ("reason", "viewer tries")])
        .send()
        .await
        .expect("post");
    assert_eq!(refused.status(), 403);
    assert!(
        refused
            .text()
            .await
            .unwrap_or_default()
            .contains("needs the operator role")
    );
    shot(&client, "viewer.png").await;

    // An operator's session without the form's CSRF token is refused too, and changes nothing.
    let login = http
        .get(format!("{base}/ui/login"))
        .send()
        .await
        .expect("login page");
    let set = login
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect::<Vec<_>>();
    let login_cookie = set
        .iter()
        .find(|c| c.starts_with("stagegate_login="))
        .expect("login cookie")
        .clone();
    assert!(
        login_cookie.contains("HttpOnly") && login_cookie.contains("SameSite=Strict"),
        "{login_cookie}"
    );
    let html = login.text().await.expect("html");
    let form_csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .expect("form csrf");
    let pair = login_cookie.split(';').next().expect("pair").to_string();
    let signed = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .post(format!("{base}/ui/login"))
        .header("cookie", &pair)
        .form(&[("csrf", form_csrf), ("token", OPERATOR)])
        .send()
        .await
        .expect("sign in");
    assert_eq!(signed.status(), 303);
    let session = signed
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("stagegate_session="))
        .expect("session cookie")
        .to_string();
    assert!(
        session.contains("HttpOnly") && session.contains("SameSite=Strict"),
        "{session}"
    );
    let operator = session.split(';').next().expect("pair").to_string();
    let no_csrf = http
        .post(format!("{base}/ui/rollouts/support-reply-v8/rollback"))
        .header("cookie", &operator)
        .form(&[("reason", "forged")])
        .send()
        .await
        .expect("post");
    assert_eq!(no_csrf.status(), 403);
    // Reading works without JavaScript: the page is rendered on the server.
    let html = http
        .get(format!("{base}/ui/rollouts/support-reply-v8"))
        .header("cookie", &operator)
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("html");
    assert!(html.contains("aria-current=\"step\">canary<"), "{html}");
    assert!(html.contains("<svg"), "charts are inline SVG");
    assert!(
        !html.contains(OPERATOR) && !html.contains(ADMIN),
        "no token in pages"
    );
    client.close().await.expect("close");
}
