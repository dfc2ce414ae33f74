//! The operator's pages as server-rendered HTML (maud escapes every value): the layout, sign-in,
//! the rollouts list, one rollout (stage ladder, gate × segment evidence, charts as inline SVG,
//! receipts), the queue of what waits for a person, and receipts. Reading needs no JavaScript;
//! one small inline script refreshes `<main>` every few seconds.

use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::core::engine::RolloutStatus;
use crate::core::gate::{GateVerdict, Verdict};
use crate::core::receipt::Receipt;
use crate::core::rollout::Actor;
use crate::plan::Role;
use crate::serve::ui::history::Point;
use crate::serve::ui::session::Session;

const STYLE: &str = r#"
:root { font-family: system-ui, sans-serif; color: #1b1f24; background: #fff; }
body { margin: 0; }
header { display: flex; flex-wrap: wrap; gap: 1rem; align-items: center; padding: .6rem 1rem; background: #1b1f24; color: #fff; }
header a { color: #fff; }
header nav { display: flex; gap: 1rem; flex-wrap: wrap; }
header form { margin-left: auto; }
main { padding: 1rem; max-width: 1200px; margin: 0 auto; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; margin: .5rem 0 1.5rem; }
th, td { border-bottom: 1px solid #d0d7de; padding: .35rem .5rem; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
.pass { color: #116329; font-weight: 600; }
.fail { color: #b42318; font-weight: 700; }
.inconclusive { color: #7a4f01; }
ol.ladder { display: flex; flex-wrap: wrap; gap: .5rem; list-style: none; padding: 0; }
ol.ladder li { border: 1px solid #d0d7de; border-radius: 4px; padding: .3rem .6rem; }
ol.ladder li[aria-current] { background: #ddf4ff; border-color: #0969da; font-weight: 700; }
.charts { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: 0; }
form.action { display: flex; flex-wrap: wrap; gap: .5rem; align-items: end; margin: .5rem 0; }
label { display: flex; flex-direction: column; font-size: .9rem; }
input[type=text], input[type=password], select { padding: .4rem; font-size: 1rem; min-width: 12rem; }
button { padding: .45rem .9rem; font-size: 1rem; cursor: pointer; }
button:focus, a:focus, input:focus { outline: 3px solid #0969da; outline-offset: 2px; }
.notice { padding: .6rem; border-left: 4px solid #0969da; background: #f6f8fa; }
.error { padding: .6rem; border-left: 4px solid #b42318; background: #fff1f0; }
pre { white-space: pre-wrap; word-break: break-word; background: #f6f8fa; padding: .6rem; }
@media (max-width: 640px) { main { padding: .5rem; } th, td { padding: .25rem; font-size: .9rem; } }
"#;

/// Refreshes `<main>` from the same URL every 5 s while the page is visible and no form field
/// has focus (so typing a reason is never interrupted).
const REFRESH: &str = r#"
(function () {
  setInterval(function () {
    if (document.hidden) return;
    var a = document.activeElement;
    if (a && (a.tagName === 'INPUT' || a.tagName === 'SELECT' || a.tagName === 'TEXTAREA')) return;
    fetch(location.href, { credentials: 'same-origin' }).then(function (r) {
      if (!r.ok) return null;
      return r.text();
    }).then(function (text) {
      if (!text) return;
      var next = new DOMParser().parseFromString(text, 'text/html').querySelector('main');
      var main = document.querySelector('main');
      if (next && main) main.innerHTML = next.innerHTML;
    }).catch(function () {});
  }, 5000);
})();
"#;

/// Every page: the header with navigation and sign-out, then `body` in `<main>`.
pub fn layout(title: &str, session: Option<&Session>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · stagegate" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    strong { "stagegate" }
                    @if let Some(s) = session {
                        nav aria-label="main" {
                            a href="/ui" { "Rollouts" }
                            a href="/ui/queue" { "Queue" }
                            a href="/ui/receipts" { "Receipts" }
                        }
                        form method="post" action="/ui/logout" {
                            input type="hidden" name="csrf" value=(s.csrf);
                            span { (s.name) " (" (role_name(s.role)) ") " }
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main id="content" { (body) }
                @if session.is_some() {
                    script { (PreEscaped(REFRESH)) }
                }
            }
        }
    }
}

pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Read => "viewer",
        Role::Ingest => "ingest",
        Role::Operator => "operator",
        Role::Admin => "admin",
    }
}

/// The sign-in form: a token, posted (never in a URL), with the form's own CSRF token.
pub fn login(csrf: &str, error: Option<&str>) -> Markup {
    layout(
        "Sign in",
        None,
        html! {
            h1 { "Sign in" }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form.action method="post" action="/ui/login" {
                input type="hidden" name="csrf" value=(csrf);
                label for="token" { "Token" input id="token" type="password" name="token" autocomplete="current-password" required; }
                button type="submit" { "Sign in" }
            }
            p { "A viewer token shows; an operator or admin token can act." }
        },
    )
}

fn verdict_class(v: Verdict) -> &'static str {
    v.name()
}

fn number(v: Option<f64>) -> String {
    match v {
        Some(x) if x.abs() >= 100.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.4}"),
        None => "–".into(),
    }
}

/// What holds or failed a rollout, in a few words.
fn holder(s: &RolloutStatus) -> String {
    match s.holding.first() {
        Some(h) => format!("{} in {} ({})", h.gate, h.segment, h.verdict.name()),
        None => s.waiting.clone().unwrap_or_default(),
    }
}

pub fn rollouts(session: &Session, all: &[RolloutStatus]) -> Markup {
    layout(
        "Rollouts",
        Some(session),
        html! {
            h1 { "Rollouts" }
            div.scroll {
                table {
                    caption.sr { "Every rollout, its state, stage and weights" }
                    thead { tr { th scope="col" { "Rollout" } th scope="col" { "Workflow" } th scope="col" { "State" } th scope="col" { "Stage" } th scope="col" { "Weights" } th scope="col" { "Held by" } } }
                    tbody {
                        @for s in all {
                            tr {
                                td { a href={ "/ui/rollouts/" (s.name) } { (s.name) } }
                                td { (s.workflow) " " (s.baseline) " → " (s.candidate) }
                                td { (s.view.state.name()) }
                                td { (s.view.stage.as_deref().unwrap_or("none")) }
                                td { @for (seg, w) in &s.view.weights { (seg) " " (w) "% " } }
                                td { (holder(s)) }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// A chart of one gate in one segment: candidate (solid) and baseline (dashed) over the stage,
/// with the absolute limits as lines.
fn chart(gate: &str, segment: &str, points: &[Point], limits: &[f64]) -> Markup {
    let (w, h, pad) = (320.0, 120.0, 6.0);
    let values: Vec<f64> = points
        .iter()
        .flat_map(|p| [p.candidate, p.baseline])
        .flatten()
        .chain(limits.iter().copied())
        .filter(|v| v.is_finite())
        .collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let span = if hi > lo { hi - lo } else { 1.0 };
    let (t0, t1) = (
        points.first().map_or(0, |p| p.at),
        points.last().map_or(1, |p| p.at),
    );
    let tspan = (t1.saturating_sub(t0)).max(1) as f64;
    let x = |at: u64| pad + (at.saturating_sub(t0)) as f64 / tspan * (w - 2.0 * pad);
    let y = |v: f64| h - pad - (v - lo) / span * (h - 2.0 * pad);
    let line = |pick: fn(&Point) -> Option<f64>| -> String {
        points
            .iter()
            .filter_map(|p| pick(p).map(|v| format!("{:.1},{:.1}", x(p.at), y(v))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let label =
        format!("{gate} in {segment}: candidate (solid) and baseline (dashed) over this stage");
    html! {
        figure {
            svg width=(w) height=(h) viewBox={ "0 0 " (w) " " (h) } role="img" aria-label=(label) {
                title { (label) }
                rect x="0" y="0" width=(w) height=(h) fill="#f6f8fa" {}
                @for l in limits {
                    @if l.is_finite() && values.len() > 1 {
                        line x1=(pad) x2=(w - pad) y1=(format!("{:.1}", y(*l))) y2=(format!("{:.1}", y(*l))) stroke="#b42318" stroke-width="1" stroke-dasharray="2 3" {}
                    }
                }
                polyline points=(line(|p| p.baseline)) fill="none" stroke="#57606a" stroke-width="2" stroke-dasharray="6 4" {}
                polyline points=(line(|p| p.candidate)) fill="none" stroke="#0969da" stroke-width="2" {}
            }
            figcaption { (gate) " · " (segment) " · " (points.len()) " samples" }
        }
    }
}

fn checks_cell(v: &GateVerdict) -> Markup {
    html! {
        @for c in &v.checks {
            div {
                span class=(verdict_class(c.verdict)) { (c.verdict.name()) } " " (c.check)
                " · limit " (number(c.limit))
                " · margin [" (number(c.margin_lower)) ", " (number(c.margin_upper)) "]"
            }
        }
        @if let Some(e) = &v.source_error { div.error { (e) } }
    }
}

/// The actions a role may take on a rollout now, each a form with its CSRF token.
pub fn actions(session: &Session, s: &RolloutStatus) -> Markup {
    let can_act = session.role >= Role::Operator;
    let contained = matches!(
        s.view.state.name(),
        "rolled_back" | "read_only" | "fallback" | "probation" | "paused"
    );
    html! {
        @if can_act {
            section aria-labelledby="actions" {
                h2 id="actions" { "Actions" }
                @if session.role >= Role::Admin && s.view.state.name() != "rolled_back" {
                    (action_form(session, &s.name, "promote", "Approve: promote to the next stage", false))
                }
                @if contained {
                    (action_form(session, &s.name, "resume", "Resume", true))
                } @else {
                    (action_form(session, &s.name, "pause", "Pause", false))
                }
                @if s.view.state.name() != "rolled_back" {
                    (action_form(session, &s.name, "rollback", "Reject: roll back", false))
                }
            }
        } @else {
            p.notice { "Signed in as a viewer: actions need an operator or admin token." }
        }
    }
}

fn action_form(session: &Session, rollout: &str, action: &str, label: &str, ack: bool) -> Markup {
    let id = format!("reason-{action}");
    html! {
        form.action method="post" action={ "/ui/rollouts/" (rollout) "/" (action) } {
            input type="hidden" name="csrf" value=(session.csrf);
            label for=(id) { "Reason" input id=(id) type="text" name="reason" required maxlength="2000"; }
            @if ack {
                label { "Acknowledge the lane" input type="checkbox" name="ack" value="true"; }
            }
            button type="submit" name="do" value=(action) { (label) }
        }
    }
}

pub struct RolloutPage<'a> {
    pub status: &'a RolloutStatus,
    pub limits: Vec<(String, Vec<f64>)>,
    pub lines: Vec<(String, String, Vec<Point>)>,
    pub receipts: &'a [Receipt],
    pub flash: Option<String>,
}

pub fn rollout(session: &Session, page: &RolloutPage<'_>) -> Markup {
    let s = page.status;
    layout(
        &s.name,
        Some(session),
        html! {
            h1 { (s.name) }
            @if let Some(f) = &page.flash { p.notice role="status" { (f) } }
            p {
                "State " strong { (s.view.state.name()) } " · workflow " (s.workflow) " · "
                (s.baseline) " → " (s.candidate) " · candidate samples " (s.candidate_samples) " of " (s.min_samples)
                " · stage since " (s.stage_started)
            }
            @if let Some(w) = &s.waiting { p.notice { "Waiting: " (w) } }
            nav aria-label="stages" {
                ol.ladder {
                    @for name in &s.stages {
                        @if s.view.stage.as_deref() == Some(name.as_str()) {
                            li aria-current="step" { (name) }
                        } @else {
                            li { (name) }
                        }
                    }
                }
            }
            (actions(session, s))
            h2 { "Gates by segment" }
            div.scroll {
                table {
                    thead { tr { th scope="col" { "Gate" } th scope="col" { "Segment" } th scope="col" { "Verdict" } th scope="col" { "Candidate" } th scope="col" { "Baseline" } th scope="col" { "n (cand / base)" } th scope="col" { "Checks: limit, margin bounds" } th scope="col" { "ETA" } } }
                    tbody {
                        @for v in &s.gates {
                            tr {
                                td { (v.gate) }
                                td { (v.segment) }
                                td class=(verdict_class(v.verdict)) { (v.verdict.name()) }
                                td { (number(v.candidate.value)) }
                                td { (number(v.baseline.value)) }
                                td { (v.candidate.samples) " / " (v.baseline.samples) }
                                td { (checks_cell(v)) }
                                td { (s.holding.iter().find(|h| h.gate == v.gate && h.segment == v.segment).and_then(|h| h.eta.clone()).unwrap_or_default()) }
                            }
                        }
                    }
                }
            }
            h2 { "Over this stage" }
            div.charts {
                @for (gate, segment, points) in &page.lines {
                    (chart(gate, segment, points, page.limits.iter().find(|(g, _)| g == gate).map_or(&[][..], |(_, l)| l.as_slice())))
                }
            }
            h2 { "Receipts" }
            (receipt_table(page.receipts))
        },
    )
}

fn actor(a: &Actor) -> String {
    match a {
        Actor::Controller => "controller".into(),
        Actor::Operator(name) => name.clone(),
    }
}

pub fn receipt_table(receipts: &[Receipt]) -> Markup {
    html! {
        div.scroll {
            table {
                thead { tr { th scope="col" { "When" } th scope="col" { "Rollout" } th scope="col" { "Action" } th scope="col" { "Actor" } th scope="col" { "Reason" } th scope="col" { "After" } } }
                tbody {
                    @for r in receipts {
                        tr {
                            td { a href={ "/ui/receipts/" (r.id) } { (r.at) } }
                            td { (r.rollout) }
                            td { (r.action.name()) }
                            td { (actor(&r.actor)) }
                            td { (r.reason) }
                            td { (r.after.state.name()) " " (r.after.stage.as_deref().unwrap_or("none")) }
                        }
                    }
                }
            }
        }
    }
}

pub struct Filters<'a> {
    pub rollout: &'a str,
    pub action: &'a str,
    pub actor: &'a str,
    pub since: &'a str,
}

pub fn receipts(session: &Session, filters: &Filters<'_>, receipts: &[Receipt]) -> Markup {
    layout(
        "Receipts",
        Some(session),
        html! {
            h1 { "Receipts" }
            form.action method="get" action="/ui/receipts" role="search" {
                label for="f-rollout" { "Rollout" input id="f-rollout" type="text" name="rollout" value=(filters.rollout); }
                label for="f-action" { "Action" input id="f-action" type="text" name="action" value=(filters.action); }
                label for="f-actor" { "Actor" input id="f-actor" type="text" name="actor" value=(filters.actor); }
                label for="f-since" { "Since (RFC 3339)" input id="f-since" type="text" name="since" value=(filters.since); }
                button type="submit" { "Search" }
            }
            (receipt_table(receipts))
        },
    )
}

pub fn receipt(session: &Session, r: &Receipt) -> Markup {
    let json = serde_json::to_string_pretty(r).unwrap_or_default();
    layout(
        &r.id,
        Some(session),
        html! {
            h1 { "Receipt " (r.id) }
            p { (r.at) " · " (r.rollout) " · " strong { (r.action.name()) } " by " (actor(&r.actor)) }
            p { (r.reason) }
            h2 { "Evidence" }
            div.scroll {
                table {
                    thead { tr { th scope="col" { "Gate" } th scope="col" { "Segment" } th scope="col" { "Verdict" } th scope="col" { "Candidate" } th scope="col" { "Baseline" } th scope="col" { "Checks" } } }
                    tbody {
                        @for v in &r.evidence {
                            tr {
                                td { (v.gate) } td { (v.segment) }
                                td class=(verdict_class(v.verdict)) { (v.verdict.name()) }
                                td { (number(v.candidate.value)) " (n " (v.candidate.samples) ")" }
                                td { (number(v.baseline.value)) " (n " (v.baseline.samples) ")" }
                                td { (checks_cell(v)) }
                            }
                        }
                    }
                }
            }
            h2 { "Lane" }
            p { "Owner " (r.lane.owner) " · repair: " (r.lane.repair) }
            details { summary { "The full receipt (JSON)" } pre { (json) } }
        },
    )
}

/// One thing waiting for a person.
pub struct QueueItem<'a> {
    pub status: &'a RolloutStatus,
    pub why: String,
    /// The lane's proof checklist: (what, done).
    pub checklist: Vec<(String, bool)>,
}

pub fn queue(session: &Session, items: &[QueueItem<'_>]) -> Markup {
    layout(
        "Queue",
        Some(session),
        html! {
            h1 { "Waiting for a person" }
            @if items.is_empty() { p { "Nothing waits: every rollout is deciding on its own." } }
            @for item in items {
                section aria-labelledby={ "q-" (item.status.name) } {
                    h2 id={ "q-" (item.status.name) } { a href={ "/ui/rollouts/" (item.status.name) } { (item.status.name) } }
                    p { (item.why) }
                    @if !item.checklist.is_empty() {
                        ul {
                            @for (what, done) in &item.checklist {
                                li { (if *done { "✔ " } else { "✘ " }) (what) }
                            }
                        }
                    }
                    p { "Held by: " (holder(item.status)) }
                    (actions(session, item.status))
                }
            }
        },
    )
}

/// A refusal or error as a page.
pub fn message(session: Option<&Session>, title: &str, text: &str) -> Markup {
    layout(
        title,
        session,
        html! {
            h1 { (title) }
            p.error role="alert" { (text) }
            p { a href="/ui" { "Back to the rollouts" } }
        },
    )
}
