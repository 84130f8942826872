//! Every error `enforcer check` reports, with its exact text and place.

use super::*;

/// A valid head; rules appended to it start on line 8.
const HEAD: &str = "version: 1
identities:
  worker: {exe: /usr/bin/worker}
services:
  api:
    endpoints: [\"10.0.0.1:80\"]
rules:
";

fn with_rules(rules: &str) -> String {
    format!("{HEAD}{rules}")
}

#[test]
fn syntax_and_type_errors_stop_at_the_first() {
    let cases = [
        (
            "unknown top-level field",
            "version: 1\nservices: {}\nrulez: []\n",
            "test.yaml:3:1: unknown field `rulez`, expected one of version, settings, \
             identities, credentials, services, rules",
        ),
        (
            "unknown rule field",
            &with_rules(
                "  - id: r\n    from: [worker]\n    to: api\n    methods: [GET]\n    \
                 paths: [/]\n    header: {a: b}\n",
            ),
            "test.yaml:13:5: unknown field `header`, expected one of id, from, to, methods, \
             paths, headers, query, hosts, overrides, websocket, mode, require, inject, limits",
        ),
        (
            "unknown identity attribute",
            "version: 1\nidentities:\n  w: {binary: /bin/w}\nservices: {}\n",
            "test.yaml:3:7: unknown field `binary`, expected one of exe, sha256, user, group, \
             systemdUnit, cgroup, container, traced",
        ),
        (
            "wrong type",
            "version: one\nservices: {}\n",
            "test.yaml:1:10: invalid u32",
        ),
        (
            "list expected",
            &with_rules("  - id: r\n    from: worker\n"),
            "test.yaml:9:11: expected sequence start",
        ),
        (
            "missing field",
            &with_rules("  - id: r\n    from: [worker]\n    to: api\n    methods: [GET]\n"),
            // serde reports a missing field at the mapping's last key.
            "test.yaml:11:5: missing field `paths`",
        ),
        (
            "bad mode",
            "version: 1\nsettings: {mode: strict}\nservices: {}\n",
            "test.yaml:2:18: unknown variant `strict`, expected one of enforce, audit",
        ),
        (
            "YAML 1.1 booleans are not booleans",
            &with_rules(
                "  - id: r\n    from: [worker]\n    to: api\n    methods: [GET]\n    \
                 paths: [/]\n    websocket: yes\n",
            ),
            "test.yaml:13:16: invalid boolean (true or false expected)",
        ),
        (
            "duplicate key",
            "version: 1\nservices:\n  a: {endpoints: [\"10.0.0.1:80\"]}\n  \
             a: {endpoints: [\"10.0.0.2:80\"]}\n",
            "test.yaml:4:3: duplicate mapping key `a` is not allowed here",
        ),
        ("empty file", "", "test.yaml:1:1: unexpected end of file"),
        (
            "syntax",
            "version: 1\nservices: {\n",
            "test.yaml:2:11: unclosed bracket '{'",
        ),
        (
            "mapping expected",
            "version: 1\nservices: [a]\n",
            "test.yaml:2:11: expected mapping start",
        ),
    ];
    for (what, text, want) in cases {
        assert_eq!(diagnostics(text), want, "{what}");
    }
}

#[test]
fn another_version_is_reported_alone() {
    assert_eq!(
        diagnostics("version: 2\nservices: {}\nroutes: []\n"),
        "test.yaml:1:10: unsupported version 2 (this agent reads version 1)"
    );
}

#[test]
fn services_errors() {
    let cases = [
        (
            "version: 1\nservices: {}\n",
            "test.yaml:2:11: no protected destination: `services` is empty",
        ),
        (
            "version: 1\nservices:\n",
            "test.yaml:2:9: no protected destination: `services` is empty",
        ),
        (
            "version: 1\nservices:\n  a:\n    endpoints: []\n",
            "test.yaml:4:16: service `a` has no endpoints",
        ),
        (
            "version: 1\nservices:\n  a:\n    endpoints: [\"10.0.0.1:0\", \"nowhere.invalid:80\", \
             \"empty.internal:80\", \"payments.internal:8080\"]\n  b c:\n    \
             endpoints: [\"10.0.0.1:80\"]\n",
            "test.yaml:4:17: invalid endpoint `10.0.0.1:0`: `0` is not a port (1-65535)\n\
             test.yaml:4:31: host `nowhere.invalid` does not resolve: no such host\n\
             test.yaml:4:53: host `empty.internal` resolves to no address\n\
             test.yaml:5:3: bad service name `b c`: use up to 64 letters, digits, `.`, `_` and \
             `-`, starting with a letter or digit",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(diagnostics(text), want, "{text}");
    }
}

#[test]
fn identity_errors_are_all_reported() {
    let text = "version: 1
identities:
  nothing: {}
  bad-exe: {exe: bin/worker}
  bad-glob: {exe: \"/usr/bin/[wx]orker\"}
  bad-star: {exe: \"/usr/**bin/worker\"}
  bad-empty: {exe: \"/usr//worker\"}
  bad-sha: {sha256: ABC}
  bad-user: {user: \"a b\"}
  bad-uid: {user: 99999999999}
  bad-group: {group: \"\"}
  bad-unit: {systemdUnit: \"**.service\"}
  bad-cgroup: {cgroup: system.slice}
  bad-container: {container: abc}
  \"bad name\": {user: root}
services:
  api: {endpoints: [\"10.0.0.1:80\"]}
";
    let want = [
        "test.yaml:3:3: identity `nothing` constrains nothing, so it would match every caller: \
         give at least one of exe, sha256, user, group, systemdUnit, cgroup, container (or use \
         `from: [\"*\"]` in a rule)",
        "test.yaml:4:18: bad exe glob `bin/worker`: not an absolute path",
        "test.yaml:5:19: bad exe glob `/usr/bin/[wx]orker`: `[`, `]`, `{` and `}` are reserved",
        "test.yaml:6:19: bad exe glob `/usr/**bin/worker`: `**` must be a whole path component",
        "test.yaml:7:20: bad exe glob `/usr//worker`: empty path component",
        "test.yaml:8:21: bad sha256 `ABC`: expected 64 lower-case hex digits (as sha256sum \
         prints)",
        "test.yaml:9:20: bad user `a b`: expected a name or a numeric id",
        "test.yaml:10:19: bad user `99999999999`: numeric ids are 0-4294967295",
        "test.yaml:11:22: bad group ``: expected a name or a numeric id",
        "test.yaml:12:27: bad systemdUnit glob `**.service`: `**` spans path components, which \
         a name does not have: use `*`",
        "test.yaml:13:24: bad cgroup glob `system.slice`: not an absolute path",
        "test.yaml:14:30: bad container `abc`: expected a container id, or its first 12 or more \
         lower-case hex digits",
        "test.yaml:15:3: bad identity name `bad name`: use up to 64 letters, digits, `.`, `_` \
         and `-`, starting with a letter or digit",
    ]
    .join("\n");
    assert_eq!(diagnostics(text), want);
}

#[test]
fn rule_errors_are_all_reported() {
    let text = with_rules(
        "  - id: unknown-names
    from: [worker, ghost]
    to: nowhere
    methods: [GET]
    paths: [/]
  - id: empty-lists
    from: []
    to: api
    methods: []
    paths: []
  - id: star-and-names
    from: [\"*\", worker]
    to: api
    methods: [get, \"G T\", POST]
    paths: [v1, \"/a//b\", \"/a/**/b\", \"/a/b*\", \"/{id\", \"/{1d}\", \"/a/../b\", \"/a?x=1\", \
             \"/a b\", \"/%7e\", \"/%2f\", \"/%zz\", \"/#x\"]
  - id: empty-lists
    from: [worker]
    to: api
    methods: [POST]
    paths: [/]
    headers: {\"x tenant\": a, X-Tenant: a, x-tenant: b, x-ok: \" padded\"}
    query: {\"\": x}
    websocket: true
  - id: \"bad id\"
    from: [worker]
    to: api
    methods: [GET]
    paths: [/]
",
    );
    let want = [
        "test.yaml:9:20: rule `unknown-names`: unknown identity `ghost`",
        "test.yaml:10:9: rule `unknown-names`: unknown service `nowhere`",
        "test.yaml:14:11: rule `empty-lists`: `from` is empty: name identities, or `\"*\"` for \
         any caller",
        "test.yaml:16:14: rule `empty-lists`: `methods` is empty: list methods, or `\"*\"` for \
         any",
        "test.yaml:17:12: rule `empty-lists`: `paths` is empty: list path patterns, or \
         `\"/**\"` for any",
        "test.yaml:19:12: rule `star-and-names`: `*` already means any caller: list nothing \
         else",
        "test.yaml:21:15: rule `star-and-names`: bad method `get`: methods are case-sensitive: \
         write `GET`",
        "test.yaml:21:20: rule `star-and-names`: bad method `G T` is not a method",
        "test.yaml:22:13: rule `star-and-names`: bad path pattern `v1`: must start with `/`",
        "test.yaml:22:17: rule `star-and-names`: bad path pattern `/a//b`: empty segment (`//`)",
        "test.yaml:22:26: rule `star-and-names`: bad path pattern `/a/**/b`: `**` must be the \
         last segment",
        "test.yaml:22:37: rule `star-and-names`: bad path pattern `/a/b*`: `b*`: `*` matches a \
         whole segment; partial wildcards are not supported",
        "test.yaml:22:46: rule `star-and-names`: bad path pattern `/{id`: `{id`: `{name}` must \
         be a whole segment",
        "test.yaml:22:54: rule `star-and-names`: bad path pattern `/{1d}`: `{1d}`: a parameter \
         name is a letter or `_`, then letters, digits or `_`",
        "test.yaml:22:63: rule `star-and-names`: bad path pattern `/a/../b`: `..` segments are \
         resolved before matching, so never match",
        "test.yaml:22:74: rule `star-and-names`: bad path pattern `/a?x=1`: `?` starts a \
         query: constrain it with `query`",
        "test.yaml:22:84: rule `star-and-names`: bad path pattern `/a b`: `a b`: ` ` must be \
         percent-encoded",
        "test.yaml:22:92: rule `star-and-names`: bad path pattern `/%7e`: `%7e`: write \
         percent-encodings in upper case (`%7E`)",
        "test.yaml:22:100: rule `star-and-names`: bad path pattern `/%2f`: `%2f`: write \
         percent-encodings in upper case (`%2F`)",
        "test.yaml:22:108: rule `star-and-names`: bad path pattern `/%zz`: `%zz`: `%` must \
         start a percent-encoding (`%2F`)",
        "test.yaml:22:116: rule `star-and-names`: bad path pattern `/#x`: `#` starts a \
         fragment, which is never sent",
        "test.yaml:23:9: duplicate rule id `empty-lists` (first at line 13, column 9)",
        "test.yaml:28:15: rule `empty-lists`: `x tenant` is not a header name",
        "test.yaml:28:43: rule `empty-lists`: header `x-tenant` given twice (header names are \
         case-insensitive)",
        "test.yaml:28:62: rule `empty-lists`: header `x-ok`: the value must be printable ASCII \
         without surrounding blanks",
        "test.yaml:29:13: rule `empty-lists`: empty query parameter name",
        "test.yaml:30:16: rule `empty-lists`: a WebSocket upgrade is a GET request: add GET to \
         `methods`",
        "test.yaml:31:9: bad rule id `bad id`: use up to 64 letters, digits, `.`, `_` and `-`, \
         starting with a letter or digit",
    ]
    .join("\n");
    assert_eq!(diagnostics(&text), want);
}

#[test]
fn hosts_and_overrides_errors() {
    let text = with_rules(
        "  - id: r
    from: [worker]
    to: api
    methods: [GET]
    paths: [/]
    hosts: [api.example.com, \"api.example.com:80\", \"*\", \"äpi.de\", \"[nope]\"]
    overrides: [X-HTTP-Method-Override, X-Forwarded-Host]
  - id: s
    from: [worker]
    to: api
    methods: [GET]
    paths: [/]
    hosts: []
",
    );
    let want = [
        "test.yaml:13:30: rule `r`: bad host `api.example.com:80`: expected an ASCII name, `*.` \
         and a name, or an IP address, without a port",
        "test.yaml:13:52: rule `r`: bad host `*`: expected an ASCII name, `*.` and a name, or an \
         IP address, without a port",
        "test.yaml:13:57: rule `r`: bad host `äpi.de`: expected an ASCII name, `*.` and a name, \
         or an IP address, without a port",
        "test.yaml:13:67: rule `r`: bad host `[nope]`: expected an ASCII name, `*.` and a name, \
         or an IP address, without a port",
        "test.yaml:14:41: rule `r`: `X-Forwarded-Host` is not a method- or URL-override header \
         (one of x-http-method-override, x-http-method, x-method-override, x-original-method, \
         x-original-url, x-rewrite-url, x-override-url)",
        "test.yaml:20:12: rule `s`: `hosts` is empty: leave it out for any host",
    ]
    .join("\n");
    assert_eq!(diagnostics(&text), want);
}

#[test]
fn settings_errors() {
    let text = "version: 1
settings:
  limits:
    maxRequestLine: 70000
    maxHeadBytes: 65536
    maxHeaders: 0
    headTimeout: 10
    idleTimeout: 0s
  audit:
    file: audit.jsonl
    maxBytes: 0
services:
  api: {endpoints: [\"10.0.0.1:80\"]}
";
    let want = [
        "test.yaml:4:21: `maxRequestLine` (70000) exceeds `maxHeadBytes` (65536): the request \
         line is part of the head",
        "test.yaml:6:17: `maxHeaders` must be at least 1",
        "test.yaml:7:18: bad `headTimeout` `10`: expected a positive whole number and a unit: \
         `500ms`, `10s`, `2m`, `1h`",
        "test.yaml:8:18: bad `idleTimeout` `0s`: expected a positive whole number and a unit: \
         `500ms`, `10s`, `2m`, `1h`",
        "test.yaml:10:11: audit `file` `audit.jsonl` must be an absolute path, or `-` for \
         stdout",
        "test.yaml:11:15: `maxBytes` must be at least 1",
    ]
    .join("\n");
    assert_eq!(diagnostics(text), want);
    assert_eq!(
        diagnostics(
            "version: 1\nsettings:\n  audit: {file: \"-\", keep: 3}\nservices:\n  \
             api: {endpoints: [\"10.0.0.1:80\"]}\n"
        ),
        "test.yaml:3:28: `keep` applies to an audit file, not to stdout (`-`)"
    );
}

#[test]
fn settings_defaults_and_values() {
    let p = policy("version: 1\nservices:\n  api: {endpoints: [\"10.0.0.1:80\"]}\n");
    assert_eq!(p.settings, Settings::default());
    assert_eq!(
        p.settings.limits,
        Limits {
            max_request_line: 8192,
            max_head_bytes: 65536,
            max_headers: 100,
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: None,
            max_connections_per_identity: None,
            rate_per_identity: None,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            hash_timeout: Duration::from_secs(5),
        }
    );
    let p = policy(
        "version: 1
settings:
  mode: audit
  limits: {maxHeaders: 50, headTimeout: 500ms, idleTimeout: 2m}
  audit: {file: /var/log/enforcer/audit.jsonl, keep: 2, format: ocsf}
services:
  api: {endpoints: [\"10.0.0.1:80\"]}
",
    );
    assert_eq!(
        p.settings,
        Settings {
            mode: Mode::Audit,
            limits: Limits {
                max_headers: 50,
                head_timeout: Duration::from_millis(500),
                idle_timeout: Duration::from_secs(120),
                ..Limits::default()
            },
            audit: AuditSink::File {
                path: "/var/log/enforcer/audit.jsonl".into(),
                max_bytes: 100 * 1024 * 1024,
                keep: 2,
            },
            anomalies: Anomalies::default(),
            audit_format: AuditFormat::Ocsf,
        }
    );
    // A format alone keeps stdout.
    let p = policy(
        "version: 1\nsettings:\n  audit: {format: ocsf}\nservices:\n  api: {endpoints: [\"10.0.0.1:80\"]}\n",
    );
    assert_eq!(p.settings.audit, AuditSink::Stdout);
    assert_eq!(p.settings.audit_format, AuditFormat::Ocsf);
}

#[test]
fn resource_limits() {
    let p = policy(
        "version: 1
settings:
  limits:
    maxConnections: 100
    maxConnectionsPerIdentity: 10
    ratePerIdentity: 50/s
    burstPerIdentity: 80
    connectTimeout: 2s
    responseTimeout: 15s
services:
  api: {endpoints: [\"10.0.0.1:80\"]}
rules:
  - id: small
    from: [\"*\"]
    to: api
    methods: [POST]
    paths: [\"/**\"]
    limits: {rate: 600/m, maxBodyBytes: 1024}
  - id: plain
    from: [\"*\"]
    to: api
    methods: [GET]
    paths: [\"/**\"]
",
    );
    let limits = p.settings.limits;
    assert_eq!(limits.max_connections, Some(100));
    assert_eq!(limits.max_connections_per_identity, Some(10));
    assert_eq!(
        limits.rate_per_identity,
        Some(
            "50/s"
                .parse::<crate::limits::Rate>()
                .unwrap()
                .with_burst(80)
        )
    );
    assert_eq!(limits.connect_timeout, Duration::from_secs(2));
    assert_eq!(limits.response_timeout, Duration::from_secs(15));
    let small = p.rules()[0].limits();
    assert_eq!(small.rate, Some("600/m".parse().unwrap()));
    assert_eq!(small.max_body_bytes, Some(1024));
    assert_eq!(*p.rules()[1].limits(), crate::limits::RuleLimits::default());

    let text = "version: 1
settings:
  limits:
    maxConnections: 10
    maxConnectionsPerIdentity: 20
    ratePerIdentity: 5/d
    connectTimeout: 0s
services:
  api: {endpoints: [\"10.0.0.1:80\"]}
rules:
  - id: r
    from: [\"*\"]
    to: api
    methods: [GET]
    paths: [\"/**\"]
    limits: {burst: 5, maxBodyBytes: 0}
";
    let want = [
        "test.yaml:5:32: `maxConnectionsPerIdentity` (20) exceeds `maxConnections` (10): one \
         identity could then take every connection",
        "test.yaml:6:22: bad `ratePerIdentity` `5/d`: expected requests per unit, such as \
         `100/s`, `600/m` or `1000/h`, at least 1",
        "test.yaml:7:21: bad `connectTimeout` `0s`: expected a positive whole number and a \
         unit: `500ms`, `10s`, `2m`, `1h`",
        "test.yaml:16:21: `burst` needs `rate`: a burst of what rate?",
        "test.yaml:16:38: rule `r`: `maxBodyBytes` must be at least 1",
    ]
    .join("\n");
    assert_eq!(diagnostics(text), want);
}

#[test]
fn empty_sections_are_allowed() {
    // Every entry commented out leaves a null: no identities, no rules (so all is denied).
    let p = policy(
        "version: 1\nidentities:\nservices:\n  api: {endpoints: [\"10.0.0.1:80\"]}\nrules:\n",
    );
    assert!(p.rules().is_empty());
}

#[test]
fn tcp_services_take_no_rules() {
    let text = "version: 1
identities:
  worker: {exe: /usr/bin/worker}
services:
  db: {endpoints: [\"10.0.0.9:5432\"], protocol: tcp}
  api: {endpoints: [\"10.0.0.1:80\"]}
rules:
  - {id: r, from: [worker], to: db, methods: [GET], paths: [/]}
";
    assert_eq!(
        diagnostics(text),
        "test.yaml:8:33: rule `r`: service `db` is `protocol: tcp`: its connections are relayed \
         unread, so no rule applies to them"
    );
    let p = policy(&text.replace(
        "rules:\n  - {id: r, from: [worker], to: db, methods: [GET], paths: [/]}\n",
        "",
    ));
    assert_eq!(p.services["db"].protocol, Protocol::Tcp);
    assert_eq!(p.services["api"].protocol, Protocol::Http);
}

#[test]
fn fail_mode_defaults_to_closed_and_reaches_the_kernel_view() {
    let text = "version: 1
services:
  db: {endpoints: [\"10.0.0.9:5432\"], protocol: tcp, failMode: open}
  api: {endpoints: [\"10.0.0.1:80\"]}
";
    let p = policy(text);
    assert_eq!(p.services["db"].fail_mode, FailMode::Open);
    assert_eq!(p.services["api"].fail_mode, FailMode::Closed);
    let modes: Vec<(u16, FailMode)> = p
        .protected()
        .iter()
        .map(|(d, m)| (d.ports.first, *m))
        .collect();
    assert_eq!(modes, vec![(80, FailMode::Closed), (5432, FailMode::Open)]);
    assert_eq!(
        diagnostics(&text.replace("failMode: open", "failMode: bypass")),
        "test.yaml:3:63: unknown variant `bypass`, expected one of closed, open"
    );
}
