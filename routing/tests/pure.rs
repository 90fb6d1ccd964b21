//! The pure parts of routing: configuration, rotations (DST), the router,
//! escalation timing, TTI, signatures and response links.

use chrono::TimeZone;
use mandate_routing::chain::{self, Ack, ChainStatus};
use mandate_routing::links::{self, LinkClaim, LinkError};
use mandate_routing::router::{Outcome, RoutingInput, route};
use mandate_routing::sign::{self, SignatureError};
use mandate_routing::tti::{ResponseRecord, tti};
use mandate_routing::{ConfigCell, ConfigError, RoutingConfig, limits};

const EXAMPLE: &str = include_str!("../examples/policy/owners.yaml");

fn example() -> RoutingConfig {
    RoutingConfig::from_yaml("owners.yaml", EXAMPLE).unwrap_or_else(|e| panic!("{e}"))
}

fn utc_ms(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> i64 {
    chrono::Utc
        .with_ymd_and_hms(y, mo, d, h, mi, 0)
        .unwrap()
        .timestamp_millis()
}

fn input(path: &str, tool: &str, resource: Option<&str>) -> RoutingInput {
    RoutingInput {
        task_id: "t1".into(),
        step_seq: Some(4),
        agent: "agent-deployer-7".into(),
        on_behalf_of: Some("user-alice".into()),
        tool: tool.into(),
        operation: "update".into(),
        resource: resource.map(str::to_string),
        path: path.into(),
        outcome: None,
        summary: "deploy checkout v2".into(),
        risk: None,
        recovery_path: None,
        approvers: vec![],
    }
}

fn invalid(text: &str) -> (String, String, String) {
    match RoutingConfig::from_yaml("policy/owners.yaml", text) {
        Err(ConfigError::Invalid {
            file, entry, field, ..
        }) => (file, entry, field),
        other => panic!("expected an invalid-field error, got {other:?}"),
    }
}

#[test]
fn the_example_file_loads_and_covers_every_catalog_tool() {
    let c = example();
    let catalog = include_str!("../../activities/catalog/catalog.yaml");
    for line in catalog.lines() {
        if let Some(tool) = line.trim().strip_prefix("- name: ") {
            assert!(
                !c.map.owners_of(None, tool).is_empty(),
                "no owner for catalog tool {tool}"
            );
        }
    }
}

#[test]
fn bad_files_are_refused_naming_file_entry_and_field() {
    let base =
        "version: 1\nsinks: [{id: log, kind: log}]\npeople: [{id: a, contacts: [{sink: log}]}]\n";
    let (file, entry, field) = invalid(&format!(
        "{base}ownership: [{{resource: 'db:*', owners: [nobody]}}]\n"
    ));
    assert_eq!(
        (file.as_str(), entry.as_str(), field.as_str()),
        ("policy/owners.yaml", "ownership[0]", "owners[0]")
    );
    let (_, entry, field) = invalid(&format!(
        "{base}rotations: [{{id: r, time_zone: Mars/Base, handoffs: [{{at: 'mon 09:00', person: a}}]}}]\n"
    ));
    assert_eq!(
        (entry.as_str(), field.as_str()),
        ("rotations[0] (r)", "time_zone")
    );
    let (_, entry, field) =
        invalid("version: 1\nsinks: [{id: hook, kind: webhook, url: 'http://127.0.0.1:1/x'}]\n");
    assert_eq!(
        (entry.as_str(), field.as_str()),
        ("sinks[0] (hook)", "secret")
    );
    let (_, entry, field) = invalid(
        "version: 1\nsinks: [{id: pd, kind: pagerduty, url: 'not a url', routing_key: k}]\n",
    );
    assert_eq!((entry.as_str(), field.as_str()), ("sinks[0] (pd)", "url"));
    let (_, entry, field) = invalid(
        "version: 1\nsinks: [{id: log, kind: log}]\npeople: [{id: a, contacts: [{sink: slack}]}]\n",
    );
    assert_eq!(
        (entry.as_str(), field.as_str()),
        ("people[0] (a)", "contacts[0].sink")
    );
    let (_, entry, field) = invalid(&format!(
        "{base}routes: {{rules: [{{id: x, match: {{path: [sometimes]}}}}]}}\n"
    ));
    assert_eq!(
        (entry.as_str(), field.as_str()),
        ("routes rule \"x\"", "match.path")
    );
    // A rule may start only a playbook the file defines; playbooks are checked.
    let (_, entry, field) = invalid(&format!(
        "{base}routes: {{rules: [{{id: x, match: {{tool: 'kv.*'}}, playbook: nope}}]}}\n"
    ));
    assert_eq!(
        (entry.as_str(), field.as_str()),
        ("routes rule \"x\"", "playbook")
    );
    let (_, entry, field) = invalid(&format!(
        "{base}playbooks: [{{id: hc, workflow: w}}, {{id: hc, workflow: v}}]\n"
    ));
    assert_eq!((entry.as_str(), field.as_str()), ("playbooks[1]", "id"));
    let (_, entry, field) = invalid(&format!(
        "{base}playbooks: [{{id: hc, workflow: 'not a name'}}]\n"
    ));
    assert_eq!(
        (entry.as_str(), field.as_str()),
        ("playbooks[0]", "workflow")
    );
    let ok = RoutingConfig::from_yaml(
        "policy/owners.yaml",
        &format!(
            "{base}playbooks: [{{id: hc, workflow: health_check, input: {{service: checkout}}}}]\nroutes: {{rules: [{{id: x, match: {{tool: 'kv.*'}}, playbook: hc}}]}}\n"
        ),
    )
    .unwrap();
    assert_eq!(ok.playbooks["hc"].workflow, "health_check");
    // Syntax errors name the file too.
    let e = RoutingConfig::from_yaml("policy/owners.yaml", "version: 1\npeople: {").unwrap_err();
    assert!(e.to_string().starts_with("policy/owners.yaml: "), "{e}");
}

#[test]
fn a_failed_reload_keeps_the_configuration_in_force() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("owners.yaml"), EXAMPLE).unwrap();
    let cell = ConfigCell::open(dir.path()).unwrap();
    assert!(cell.get().map.people.contains_key("user-alice"));
    std::fs::write(
        dir.path().join("owners.yaml"),
        "version: 1\nownership: [{tool: x, owners: [ghost]}]\n",
    )
    .unwrap();
    let e = cell.reload().unwrap_err();
    assert!(
        e.to_string().contains("owners.yaml") && e.to_string().contains("ownership[0]"),
        "{e}"
    );
    assert!(
        cell.get().map.people.contains_key("user-alice"),
        "the old map stays in force"
    );
    std::fs::write(
        dir.path().join("owners.yaml"),
        EXAMPLE.replace("user-carol", "user-erin"),
    )
    .unwrap();
    cell.reload().unwrap();
    assert!(cell.get().map.people.contains_key("user-erin"));
}

const DST: &str = "version: 1
sinks: [{id: log, kind: log}]
people: [{id: alice, contacts: [{sink: log}]}, {id: bob, contacts: [{sink: log}]}]
rotations:
  - id: ny
    time_zone: America/New_York
    handoffs: [{at: 'sat 12:00', person: alice}, {at: 'sun 02:30', person: bob}, {at: 'sun 01:30', person: alice}, {at: 'mon 09:00', person: bob}]
";

#[test]
fn rotation_handoffs_follow_new_york_across_spring_forward() {
    let c = RoutingConfig::from_yaml("owners.yaml", DST).unwrap();
    let r = &c.map.rotations["ny"];
    // 2025-03-09: 02:00 EST jumps to 03:00 EDT. The 01:30 handoff is at 06:30 UTC;
    // 02:30 does not exist, so that handoff happens at 03:00 EDT = 07:00 UTC.
    assert_eq!(
        r.on_call(utc_ms(2025, 3, 9, 6, 29)).since_ms,
        utc_ms(2025, 3, 8, 17, 0),
        "Saturday 12:00 EST"
    );
    assert_eq!(
        r.on_call(utc_ms(2025, 3, 9, 6, 30)).since_ms,
        utc_ms(2025, 3, 9, 6, 30)
    );
    assert_eq!(r.on_call(utc_ms(2025, 3, 9, 6, 59)).person, "alice");
    let at = r.on_call(utc_ms(2025, 3, 9, 7, 0));
    assert_eq!(
        (at.person.as_str(), at.since_ms),
        ("bob", utc_ms(2025, 3, 9, 7, 0))
    );
    // Monday 09:00 EDT = 13:00 UTC.
    assert_eq!(
        r.on_call(utc_ms(2025, 3, 10, 12, 59)).until_ms,
        utc_ms(2025, 3, 10, 13, 0)
    );
}

#[test]
fn rotation_handoffs_follow_new_york_across_fall_back() {
    let c = RoutingConfig::from_yaml("owners.yaml", DST).unwrap();
    let r = &c.map.rotations["ny"];
    // 2025-11-02: 02:00 EDT falls back to 01:00 EST; 01:30 happens twice
    // (05:30 UTC and 06:30 UTC). The handoff happens once, at the first.
    assert_eq!(
        r.on_call(utc_ms(2025, 11, 2, 5, 29)).person,
        "alice",
        "Saturday 12:00 holder"
    );
    let first = r.on_call(utc_ms(2025, 11, 2, 5, 30));
    assert_eq!(
        (first.person.as_str(), first.since_ms),
        ("alice", utc_ms(2025, 11, 2, 5, 30))
    );
    // Second 01:30 (06:30 UTC): no second handoff; 02:30 EST = 07:30 UTC hands to bob.
    assert_eq!(
        r.on_call(utc_ms(2025, 11, 2, 6, 45)).since_ms,
        utc_ms(2025, 11, 2, 5, 30)
    );
    assert_eq!(r.on_call(utc_ms(2025, 11, 2, 7, 30)).person, "bob");
    // Monday 09:00 EST = 14:00 UTC.
    assert_eq!(
        r.on_call(utc_ms(2025, 11, 3, 13, 59)).until_ms,
        utc_ms(2025, 11, 3, 14, 0)
    );
}

#[test]
fn monitored_step_notifies_the_mapped_owners_with_reasons() {
    let c = example();
    // Thursday 2025-06-12 15:00 UTC: Bob holds platform-oncall (since Thursday 09:00 EDT).
    let now = utc_ms(2025, 6, 12, 15, 0);
    let d = route(
        &c.map,
        &c.router,
        &input(
            "monitored_execute",
            "deploy.set_version",
            Some("service:checkout"),
        ),
        now,
    );
    assert_eq!(d.matched_rules, vec!["root"]);
    let who: Vec<&str> = d.recipients.iter().map(|r| r.recipient.as_str()).collect();
    assert_eq!(who, vec!["team-platform", "user-bob"]);
    assert!(
        d.recipients[1]
            .why
            .contains("on call for rotation platform-oncall"),
        "{}",
        d.recipients[1].why
    );
    assert!(!d.unowned);
    assert_eq!(d.review_due_at_ms, None);
    assert_eq!((d.group_key.as_str(), d.group_wait_ms), ("task=t1", 30_000));
    // Deterministic: the same input at the same time gives the same decision.
    assert_eq!(
        d,
        route(
            &c.map,
            &c.router,
            &input(
                "monitored_execute",
                "deploy.set_version",
                Some("service:checkout")
            ),
            now
        )
    );
}

#[test]
fn rules_first_match_continue_review_due_approvers_and_outcomes() {
    let c = example();
    let now = 1_000_000;
    // auto_execute: the quiet rule matches and notifies nobody.
    let d = route(
        &c.map,
        &c.router,
        &input("auto_execute", "deploy.snapshot", Some("service:checkout")),
        now,
    );
    assert_eq!(
        (d.matched_rules.clone(), d.recipients.len()),
        (vec!["quiet-reads".to_string()], 0)
    );
    // flagged IAM change: iam-changes continues, so the money rule is not reached but root isn't either;
    // the review is due within the rule's 4 hours; the chain's first step is notified.
    let d = route(
        &c.map,
        &c.router,
        &input(
            "flagged_execute",
            "iam.put_policy",
            Some("iam:policy/admin"),
        ),
        now,
    );
    assert_eq!(d.matched_rules, vec!["iam-changes"]);
    assert_eq!(d.review_due_at_ms, Some(now + 4 * 3_600_000));
    let sec = d
        .recipients
        .iter()
        .find(|r| r.recipient == "team-security")
        .expect("security notified");
    assert_eq!(sec.escalation_chain.as_deref(), Some("security-escalation"));
    // continue: a flagged ledger charge on an iam resource matches both rules.
    let d = route(
        &c.map,
        &c.router,
        &input("flagged_execute", "ledger.charge", Some("iam:x")),
        now,
    );
    assert_eq!(d.matched_rules, vec!["iam-changes", "money"]);
    assert_eq!(
        d.review_due_at_ms,
        Some(now + 4 * 3_600_000),
        "the shortest review window wins"
    );
    // gated: approvers, with their contact routes.
    let mut i = input("gated_execute", "deploy.set_version", Some("service:web"));
    i.approvers = vec!["user-carol".into(), "someone-unmapped".into()];
    let d = route(&c.map, &c.router, &i, now);
    assert_eq!(d.matched_rules, vec!["gated-approvers"]);
    assert_eq!(d.recipients[0].recipient, "user-carol");
    assert_eq!(d.recipients[0].owner, "approver");
    assert_eq!(d.recipients[0].contacts[0].sink, "mail");
    assert!(d.recipients.iter().any(|r| r.recipient == "team-platform"));
    // A failed compensation reaches the owners and the on-call.
    let mut i = input("monitored_execute", "kv.put", None);
    i.outcome = Some(Outcome::CompensationFailed);
    let d = route(&c.map, &c.router, &i, utc_ms(2025, 6, 10, 15, 0));
    assert_eq!(d.matched_rules, vec!["broken-recovery"]);
    let who: Vec<&str> = d.recipients.iter().map(|r| r.recipient.as_str()).collect();
    assert_eq!(who, vec!["team-platform", "user-alice"]);
    // Nothing owns an unknown tool: the catch-all matches, nobody found, coverage says so.
    let d = route(
        &c.map,
        &c.router,
        &input("monitored_execute", "mystery.tool", None),
        now,
    );
    assert!(d.unowned && d.recipients.is_empty());
}

#[test]
fn recipients_rules_chains_and_files_are_bounded() {
    // Recipients: more approvers than the limit are cut at MAX_APPROVERS; the
    // decision never exceeds MAX_RECIPIENTS.
    let c = example();
    let mut i = input("gated_execute", "deploy.set_version", None);
    i.approvers = (0..500).map(|n| format!("approver-{n}")).collect();
    let d = route(&c.map, &c.router, &i, 0);
    assert!(d.recipients.len() <= limits::MAX_RECIPIENTS);
    assert_eq!(
        d.recipients
            .iter()
            .filter(|r| r.owner == "approver")
            .count(),
        limits::MAX_APPROVERS
    );
    // Rules.
    let many: String = (0..=limits::MAX_RULES)
        .map(|n| format!("{{id: r{n}}},"))
        .collect();
    let (_, _, field) = invalid(&format!("version: 1\nroutes: {{rules: [{many}]}}\n"));
    assert_eq!(field, "rules");
    // Chain length and repeats.
    let steps: String = (0..=limits::MAX_CHAIN_STEPS)
        .map(|_| "{notify: a, wait_minutes: 1},")
        .collect();
    let base =
        "version: 1\nsinks: [{id: log, kind: log}]\npeople: [{id: a, contacts: [{sink: log}]}]\n";
    let (_, _, field) = invalid(&format!("{base}chains: [{{id: c, steps: [{steps}]}}]\n"));
    assert_eq!(field, "steps");
    let (_, _, field) = invalid(&format!(
        "{base}chains: [{{id: c, repeat: 11, steps: [{{notify: a, wait_minutes: 1}}]}}]\n"
    ));
    assert_eq!(field, "repeat");
    // File size.
    let big = format!("version: 1\n#{}\n", "x".repeat(limits::MAX_CONFIG_BYTES));
    assert!(matches!(
        RoutingConfig::from_yaml("f", &big),
        Err(ConfigError::Syntax { .. })
    ));
}

#[test]
fn escalation_chain_timing_with_injected_time() {
    let c = example();
    let chain = &c.map.chains["security-escalation"]; // team-security 5 min, user-dan 10 min, twice
    let t0 = 1_000_000;
    let min = 60_000;
    let s = chain::status(chain, t0, &[], t0);
    assert_eq!(
        s,
        ChainStatus::Active {
            pass: 0,
            step: 0,
            notify: "team-security".into(),
            fired_at_ms: t0,
            next_due_at_ms: Some(t0 + 5 * min)
        }
    );
    let s = chain::status(chain, t0, &[], t0 + 5 * min);
    assert_eq!(
        s,
        ChainStatus::Active {
            pass: 0,
            step: 1,
            notify: "user-dan".into(),
            fired_at_ms: t0 + 5 * min,
            next_due_at_ms: Some(t0 + 15 * min)
        }
    );
    let s = chain::status(chain, t0, &[], t0 + 16 * min);
    assert!(
        matches!(
            s,
            ChainStatus::Active {
                pass: 1,
                step: 0,
                ..
            }
        ),
        "{s:?}"
    );
    let s = chain::status(chain, t0, &[], t0 + 25 * min);
    assert_eq!(
        s,
        ChainStatus::Active {
            pass: 1,
            step: 1,
            notify: "user-dan".into(),
            fired_at_ms: t0 + 20 * min,
            next_due_at_ms: None
        }
    );
    assert_eq!(
        chain::next_wake(chain, t0, &[], t0 + 25 * min),
        Some(t0 + 30 * min)
    );
    assert_eq!(
        chain::status(chain, t0, &[], t0 + 30 * min),
        ChainStatus::Exhausted {
            since_ms: t0 + 30 * min
        }
    );
    // An acknowledgement stops it; one recorded later is not seen yet.
    let acks = [Ack {
        at_ms: t0 + 3 * min,
        by: "user-dan".into(),
    }];
    assert_eq!(
        chain::status(chain, t0, &acks, t0 + 2 * min),
        chain::status(chain, t0, &[], t0 + 2 * min)
    );
    assert_eq!(
        chain::status(chain, t0, &acks, t0 + 6 * min),
        ChainStatus::Acknowledged {
            at_ms: t0 + 3 * min,
            by: "user-dan".into()
        }
    );
    assert_eq!(chain::next_wake(chain, t0, &acks, t0 + 6 * min), None);
}

#[test]
fn tti_percentiles_per_action() {
    let rec = |action: &str, n: i64, r: Option<i64>| ResponseRecord {
        action: action.into(),
        notified_at_ms: n,
        first_response_at_ms: r,
    };
    let mut records: Vec<ResponseRecord> = (1..=20)
        .map(|s| rec("pause_task", 0, Some(s * 1_000)))
        .collect();
    records.push(rec("assign", 100, Some(40_100)));
    records.push(rec("assign", 0, None)); // unanswered
    records.push(rec("assign", 5_000, Some(1_000))); // skewed clock
    let s = tti(&records);
    assert_eq!(s.len(), 2);
    assert_eq!(
        (
            s[0].action.as_str(),
            s[0].count,
            s[0].p50_ms,
            s[0].p95_ms,
            s[0].invalid
        ),
        ("assign", 1, 40_000, 40_000, 1)
    );
    assert_eq!(s[0].meets_target, Some(true));
    assert_eq!(
        (s[1].action.as_str(), s[1].count, s[1].p50_ms, s[1].p95_ms),
        ("pause_task", 20, 10_000, 19_000)
    );
    assert_eq!(s[1].meets_target, Some(false), "pause P95 target is 10 s");
}

#[test]
fn webhook_and_slack_signatures() {
    let secret = b"0123456789abcdef0123";
    let body = br#"{"a":1}"#;
    let header = sign::webhook_signature(secret, 1_700_000_000, body);
    assert_eq!(
        sign::verify_webhook(secret, &header, body, 1_700_000_010, 300),
        Ok(())
    );
    assert_eq!(
        sign::verify_webhook(secret, &header, b"{\"a\":2}", 1_700_000_010, 300),
        Err(SignatureError::Mismatch)
    );
    assert!(matches!(
        sign::verify_webhook(secret, &header, body, 1_700_001_000, 300),
        Err(SignatureError::Stale { .. })
    ));
    assert!(matches!(
        sign::verify_webhook(secret, "v1=abc", body, 1_700_000_000, 300),
        Err(SignatureError::Malformed(_))
    ));
    // Slack's documented example (api.slack.com/authentication/verifying-requests-from-slack).
    let slack_secret = b"8f742231b10e8888abcd99yyyzzz85a5";
    let slack_body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    let sig = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
    assert_eq!(
        sign::slack_signature(slack_secret, 1531420618, slack_body),
        sig
    );
    assert_eq!(
        sign::verify_slack(slack_secret, "1531420618", sig, slack_body, 1531420618 + 60),
        Ok(())
    );
    assert!(matches!(
        sign::verify_slack(
            slack_secret,
            "1531420618",
            sig,
            slack_body,
            1531420618 + 301
        ),
        Err(SignatureError::Stale { .. })
    ));
    assert_eq!(
        sign::verify_slack(b"another-secret", "1531420618", sig, slack_body, 1531420618),
        Err(SignatureError::Mismatch)
    );
}

#[test]
fn response_links_are_signed_expiring_and_bound_to_their_recipient() {
    let key = b"link-key-link-key";
    let claim = LinkClaim {
        notification_id: "n-1".into(),
        recipient: "user-alice".into(),
        action: "acknowledge".into(),
        expires_at_ms: 10_000,
    };
    let token = links::mint(key, &claim).unwrap();
    assert_eq!(
        links::verify(key, &token, "user-alice", 9_999),
        Ok(claim.clone())
    );
    assert!(matches!(
        links::verify(key, &token, "user-bob", 9_999),
        Err(LinkError::WrongRecipient { .. })
    ));
    assert!(matches!(
        links::verify(key, &token, "user-alice", 10_000),
        Err(LinkError::Expired { .. })
    ));
    let tampered = token.replace(".acknowledge.", ".approve.");
    assert_eq!(
        links::verify(key, &tampered, "user-alice", 0),
        Err(LinkError::BadSignature)
    );
    let other_key = links::verify(b"some-other-key!!", &token, "user-alice", 0);
    assert_eq!(other_key, Err(LinkError::BadSignature));
    assert!(matches!(
        links::verify(key, "v1.zz", "user-alice", 0),
        Err(LinkError::Malformed(_))
    ));
    assert!(matches!(
        links::mint(
            key,
            &LinkClaim {
                action: "delete_everything".into(),
                ..claim
            }
        ),
        Err(LinkError::UnknownAction(_))
    ));
}
